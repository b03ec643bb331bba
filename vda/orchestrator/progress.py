"""One progress view for a whole batch: videos done, units done, frames/s and the time left.

Rates count only what this run computed, not units an earlier run had stored. The queue reports units and failed
videos; the batch reports each finished video, which gets a line of its own. Where the workers span hosts (the Ray
backend), the bar also counts units per node.
"""

from __future__ import annotations

import sys
import threading
import time

from vda.core.plan import Plan

NODE_ID_CHARS = 8  # a Ray node id is 56 hex digits; 8 tell a cluster's nodes apart, as `ray status` users read them


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
        self.started, self._last = clock(), 0.0

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
        self.render(final=False, force=True)

    def _say(self, line: str) -> None:
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        print(("\r\033[K" if tty else "") + line, file=self.stream, flush=True)

    def text(self) -> str:
        now = self.clock()
        elapsed, left = now - self.started, self.total_units - self.units_done
        width = 30
        fill = width * self.units_done // max(self.total_units, 1)
        text = f"[{'#' * fill}{'.' * (width - fill)}] "
        if self.inputs_planned < self.inputs:  # while inputs are still being planned (the totals still grow)
            text += f"{self.inputs_planned}/{self.inputs} inputs planned, "
        if self.total_videos > 1:
            failed = f" ({self.videos_failed} failed)" if self.videos_failed else ""
            text += f"{self.videos_done}/{self.total_videos} videos{failed}, "
        text += f"{self.units_done}/{self.total_units} units"
        if self.fresh_units > 0 and elapsed > 0:
            text += f", {self.frames / elapsed:.1f} frames/s"
            if left > 0:
                text += f", about {_duration(left * elapsed / self.fresh_units)} left"
        text += f", {elapsed:.0f}s"
        if self.by_node:
            text += " | per node: " + ", ".join(f"{node} {n}" for node, n in sorted(self.by_node.items()))
        return text

    def render(self, final: bool = False, force: bool = False) -> None:
        now = self.clock()
        if not (final or force) and now - self._last < 0.5:
            return
        self._last = now
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        end = "" if tty and not final else "\n"
        print(("\r" if tty else "") + self.text(), end=end, file=self.stream, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
