"""Runs a plan's chunks on a pool of devices through a backend, with retries and one progress bar.

Backend-agnostic: a backend starts a chunk on a device and returns a handle (poll / stop). The same
loop drives local processes and Docker containers. Results go to RUN_DIR/processing_results.json.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from vda.plan import Plan
from vda.worker import EXIT_OUT_OF_MEMORY, PROGRESS_PREFIX, units_of
from vda.writers import write_json

RESULTS_NAME = "processing_results.json"
START_FAILED = 125  # a worker that could not start on its device (`docker run`'s own code for it)
# Exit codes that say the device, not the moment, was the problem: a worker that could not start there, and an
# out-of-memory (vda.worker). Such a chunk waits for a device it has not tried; any other failure is retried on the
# first free device.
DEVICE_BOUND_EXITS = (START_FAILED, EXIT_OUT_OF_MEMORY)


class RunFailed(Exception):
    """A chunk failed after all its retries; the message names it and its log."""


class Handle(Protocol):
    def poll(self) -> int | None: ...

    def stop(self) -> None: ...


class Backend(Protocol):
    def start(self, plan: Plan, run_dir: Path, chunk: int, device: str, log_path: Path, on_line) -> Handle: ...


@dataclass
class ChunkResult:
    chunk: int
    status: str = "pending"  # pending, running, done, failed
    device: str | None = None
    devices_tried: list[str] = field(default_factory=list)
    attempts: int = 0
    seconds: float = 0.0
    frames: int = 0
    exit_codes: list[int] = field(default_factory=list)
    log: str = ""
    fp32_recomputes: int = 0  # windows (stream mode: frames) not finite in fp16/bf16, recomputed in fp32


class Progress:
    """Aggregates the workers' @progress lines into one bar: units done, frames/s and the time left.

    Rates count only what this run computed, not units a previous run had finished.
    """

    def __init__(self, plan: Plan, stream=sys.stderr, clock=time.time):
        self.total = {c.index: len(units_of(plan, c.index)) for c in plan.chunks}
        self.done = dict.fromkeys(self.total, 0)
        self.resumed: dict[int, int] = {}  # chunk -> units already done when it first started in this run
        self.frames = 0  # final frames made by the units computed in this run
        self.stream, self.lock, self.clock = stream, threading.Lock(), clock
        self.started, self._last = clock(), 0.0
        self.recomputes = dict.fromkeys(self.total, 0)  # chunk -> fp32 recomputes reported (fp16 NaN guard)

    def line(self, chunk: int, text: str) -> None:
        if not text.startswith(PROGRESS_PREFIX):
            return
        try:
            event = json.loads(text[len(PROGRESS_PREFIX) :])
        except json.JSONDecodeError:
            return
        with self.lock:
            self.done[chunk] = int(event.get("done", self.done[chunk]))
            if event.get("event") == "start":
                self.resumed.setdefault(chunk, self.done[chunk])
            elif event.get("event") == "unit":
                self.frames += int(event.get("frames", 0))
                fresh = int(event.get("fp32_recomputes", 0))
                if fresh and not any(self.recomputes.values()):  # said once per run; counted per chunk
                    print(
                        f"\nvda: chunk {chunk}: depth was not finite in half precision (fp16/bf16) and was recomputed "
                        f"in fp32; processing_results.json counts these per chunk",
                        file=self.stream,
                        flush=True,
                    )
                self.recomputes[chunk] += fresh
            self.render()

    def text(self) -> str:
        now = self.clock()
        done, total = sum(self.done.values()), sum(self.total.values())
        fresh, elapsed = done - sum(self.resumed.values()), now - self.started
        width = 30
        fill = width * done // max(total, 1)
        text = f"[{'#' * fill}{'.' * (width - fill)}] {done}/{total} units"
        if fresh > 0 and elapsed > 0:
            text += f", {self.frames / elapsed:.1f} frames/s"
            if done < total:
                text += f", about {_duration((total - done) * elapsed / fresh)} left"
        return text + f", {elapsed:.0f}s"

    def render(self, final: bool = False) -> None:
        now = self.clock()
        if not final and now - self._last < 0.5:
            return
        self._last = now
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        print(("\r" if tty else "") + self.text(), end="" if tty and not final else "\n", file=self.stream, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def run_chunks(
    plan: Plan,
    run_dir: Path,
    backend: Backend,
    devices: list[str],
    *,
    retries: int = 2,
    progress: Progress | None = None,
    poll_interval: float = 0.2,
) -> dict[int, ChunkResult]:
    """Run every chunk once successfully, at most one chunk per device at a time.

    A failed chunk is retried up to `retries` times, on a free device it has not tried yet, else on any free one. After
    a device-bound failure (DEVICE_BOUND_EXITS) it waits for a device it has not tried, so that a GPU where containers
    cannot start does not use up every retry at once. An out-of-memory on every device stops the run at once.
    On any exception (also Ctrl-C) every running chunk is stopped before it propagates.
    """
    run_dir = Path(run_dir)
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    progress = progress or Progress(plan)
    results = {c.index: ChunkResult(c.index, log=f"logs/chunk_{c.index}.log") for c in plan.chunks}
    queue = [c.index for c in plan.chunks]
    free = list(devices)  # one slot per entry: "cpu,cpu" runs two CPU workers side by side
    running: dict[int, tuple[Handle, str, float]] = {}
    try:
        while queue or running:
            for k in list(queue):
                if not free:
                    break
                res = results[k]
                device = next((d for d in free if d not in res.devices_tried), None)
                device_bound = bool(res.exit_codes) and res.exit_codes[-1] in DEVICE_BOUND_EXITS
                if device is None and device_bound and any(d not in res.devices_tried for d in devices):
                    continue  # this device cannot run it: wait for one it has not tried rather than repeat the failure
                device = device or free[0]
                free.remove(device)
                queue.remove(k)
                res.status, res.device, res.attempts = "running", device, res.attempts + 1
                res.devices_tried.append(device)
                handle = backend.start(plan, run_dir, k, device, run_dir / res.log, lambda t, k=k: progress.line(k, t))
                running[k] = (handle, device, time.time())
            _save(run_dir, results, progress)
            time.sleep(poll_interval)
            for k, (handle, device, started) in list(running.items()):
                code = handle.poll()
                if code is None:
                    continue
                del running[k]
                free.append(device)
                res = results[k]
                res.seconds += round(time.time() - started, 3)
                res.exit_codes.append(code)
                reason = getattr(handle, "reason", None)  # e.g. why a container could not start
                why = f"exit {code}: {reason}" if reason else f"exit {code}"
                if code == 0:
                    res.status = "done"
                    res.frames = plan.chunks[k].produces[1] - plan.chunks[k].produces[0]
                elif code == EXIT_OUT_OF_MEMORY and all(d in res.devices_tried for d in devices):
                    res.status = "failed"  # the same device and settings would run out of memory again
                    raise RunFailed(
                        f"chunk {k} ran out of device memory on {', '.join(dict.fromkeys(res.devices_tried))} "
                        f"({reason or 'see its log'}); see {run_dir / res.log}"
                    )
                elif res.attempts <= retries:
                    res.status = "pending"
                    queue.insert(0, k)
                    print(
                        f"\nvda: chunk {k} failed on {device} ({why}); retrying "
                        f"({res.attempts}/{retries}), log: {run_dir / res.log}",
                        file=sys.stderr,
                    )
                else:
                    res.status = "failed"
                    raise RunFailed(
                        f"chunk {k} failed {res.attempts} time(s) (last {why}); see "
                        f"{run_dir / res.log}; fix the cause and run the same command again to resume"
                    )
        progress.render(final=True)
        return results
    finally:
        for handle, _, _ in running.values():
            handle.stop()
        for k in running:
            results[k].status = "stopped"
        _save(run_dir, results, progress)


def _save(run_dir: Path, results: dict[int, ChunkResult], progress: Progress) -> None:
    for k, n in progress.recomputes.items():
        results[k].fp32_recomputes = n
    write_json(run_dir / RESULTS_NAME, {"chunks": [asdict(r) for r in results.values()]})
