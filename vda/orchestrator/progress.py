"""One progress view for a whole batch: inputs planned, videos done, units done, frames/s and the time left.

Rates count only what this run computed, not units an earlier run had stored. The queue reports units and failed
videos; the batch reports each finished video, which gets a line of its own. Where the workers span hosts (the Ray
backend), the line also counts units per node. Drawn by tqdm: a bar on a terminal, a widget in a notebook
(tqdm.auto), and in a log one plain line per LOG_INTERVAL_S, only when its counts changed, so no line repeats.
"""

from __future__ import annotations

import sys
import threading
import time

from tqdm import autonotebook
from tqdm.std import tqdm as std_tqdm

from vda.core.plan import Plan

NODE_ID_CHARS = 8  # a Ray node id is 56 hex digits; 8 tell a cluster's nodes apart, as `ray status` users read them
BAR_INTERVAL_S = 0.5  # a bar redraws at most this often
LOG_INTERVAL_S = 5.0  # a log gets a line at most this often
BAR_FORMAT = "{percentage:3.0f}%|{bar:30}| {desc}"


class BatchProgress:
    def __init__(self, plans: list[Plan], stream=sys.stderr, clock=time.time, inputs: int | None = None):
        self.total_units = sum(len(p.units) for p in plans)
        self.total_videos = len(plans)
        self.inputs = len(plans) if inputs is None else inputs  # the batch's inputs, planned or still being planned
        self.inputs_planned = len(plans)  # planned or refused
        self.units_done = 0  # stored by this run or an earlier one
        self.fresh_units = 0  # computed by this run
        self.frames = 0  # output frames of the units this run computed
        self.videos_done = 0
        self.videos_failed = 0
        self.recomputes = 0
        self.by_device: dict[str, int] = {}
        self.by_node: dict[str, int] = {}  # units per host, for backends that span hosts (Ray node ids, shortened)
        self.stream, self.clock, self.lock = stream, clock, threading.Lock()
        self.started, self._last = clock(), float("-inf")
        self._widget = _notebook() if stream is sys.stderr else None
        self._tty = self._widget is None and hasattr(stream, "isatty") and stream.isatty()
        self._bar: std_tqdm | None = None
        self._shown: tuple | None = None  # the counts of the last line drawn in a log

    def planned(self, inputs: int) -> None:
        """`inputs` of the batch's inputs are planned (or refused) so far."""
        with self.lock:
            self.inputs_planned = inputs

    def add(self, plan: Plan) -> None:
        """A video planned after the bar began: its units join the total."""
        with self.lock:
            self.total_units += len(plan.units)
            self.total_videos += 1

    def stored(self, units: int) -> None:
        """Units an earlier run had stored."""
        with self.lock:
            self.units_done += units

    def unit_done(self, video: int, frames: int, fp32_recomputes: int, device: str, node: str | None = None) -> None:
        """A unit this run computed, on `device` (and, where a backend spans hosts, on Ray node `node`)."""
        with self.lock:
            self.units_done += 1
            self.fresh_units += 1
            self.frames += frames
            self.by_device[device] = self.by_device.get(device, 0) + 1
            if node:
                short = node[:NODE_ID_CHARS]
                self.by_node[short] = self.by_node.get(short, 0) + 1
            if fp32_recomputes and not self.recomputes:  # said once per run; processing_results.json counts them
                self._say(
                    "depth was not finite in half precision (fp16/bf16) and was recomputed in fp32; "
                    "processing_results.json counts these per unit"
                )
            self.recomputes += fp32_recomputes
        self.render()

    def video_failed(self, video: int) -> None:
        with self.lock:
            self.videos_failed += 1

    def video_finished(self, line: str) -> None:
        """A video is merged: its own line, then the bar again."""
        with self.lock:
            self.videos_done += 1
            self._say(line)
        self.render(force=True)

    def text(self) -> str:
        """The counts, the rate and the time left, in words."""
        elapsed, left = self.clock() - self.started, self.total_units - self.units_done
        parts = []
        if self.inputs_planned < self.inputs:  # while inputs are still being planned (the totals still grow)
            parts.append(f"{self.inputs_planned}/{self.inputs} inputs planned")
        if self.total_videos > 1:
            failed = f" ({self.videos_failed} failed)" if self.videos_failed else ""
            parts.append(f"{self.videos_done}/{self.total_videos} videos{failed}")
        parts.append(f"{self.units_done}/{self.total_units} units")
        if self.fresh_units > 0 and elapsed > 0:
            parts.append(f"{self.frames / elapsed:.1f} frames/s")
            if left > 0:
                parts.append(f"about {_duration(left * elapsed / self.fresh_units)} left")
        text = ", ".join([*parts, f"{elapsed:.0f}s"])
        if self.by_node:
            text += " | per node: " + ", ".join(f"{node} {n}" for node, n in sorted(self.by_node.items()))
        return text

    def render(self, final: bool = False, force: bool = False) -> None:
        """Draw the line: at most every interval, unless `force` or `final` (the queue is over: drawn now)."""
        with self.lock:
            now = self.clock()
            interval = LOG_INTERVAL_S if self._logging else BAR_INTERVAL_S
            if not (final or force) and now - self._last < interval:
                return
            self._last = now
            if self._logging:
                self._log_line()
            else:
                self._draw_bar()

    def close(self) -> None:
        """The run is over: the line is drawn a last time (in a log, only if its counts changed) and the bar ends."""
        self.render(final=True)
        with self.lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None

    @property
    def _logging(self) -> bool:
        return self._widget is None and not self._tty

    def _counts(self) -> tuple:
        """What a log line shows, less the clock: a line whose counts did not change says nothing new."""
        shown_planned = self.inputs_planned if self.inputs_planned < self.inputs else None
        videos = (self.videos_done, self.videos_failed) if self.total_videos > 1 else None
        return shown_planned, videos, self.units_done, self.total_units, tuple(sorted(self.by_node.items()))

    def _log_line(self) -> None:
        counts = self._counts()
        if counts != self._shown:
            self._shown = counts
            print(f"vda: {self.text()}", file=self.stream, flush=True)

    def _draw_bar(self) -> None:
        if self._bar is None:
            cls = self._widget or std_tqdm
            self._bar = cls(total=self.total_units, file=self.stream, bar_format=BAR_FORMAT, mininterval=0, leave=True)
        self._bar.total, self._bar.n = max(self.total_units, 1), self.units_done
        self._bar.set_description_str(self.text(), refresh=False)
        self._bar.refresh()

    def _say(self, line: str) -> None:
        """A line of its own, above the bar (tqdm clears the bar, prints it and draws the bar again)."""
        if self._bar is not None:
            type(self._bar).write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)


def _notebook() -> type[std_tqdm] | None:
    """tqdm's notebook widget where this runs in a Jupyter kernel (what tqdm.auto picks), else None."""
    if autonotebook.tqdm is std_tqdm:
        return None
    from tqdm.auto import tqdm

    return tqdm


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
