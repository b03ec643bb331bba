"""Stage timing of the worker path (decode wait, batch, compute, finite sync, store hand-off), off unless asked."""

from __future__ import annotations

import time

import torch

STAGES = ("decode wait", "batch", "compute", "finite sync", "store hand-off")


class StageClock:
    """Seconds per window of the worker path's stages, for `make gpu-check`; off unless asked for
    (VDA_STAGE_TIMES), and then only perf_counter calls and two CUDA events per window.

    Host stages are laps of perf_counter: waiting for the decoder, building the batch (the copy into a pinned buffer,
    the upload queued, preprocessing), compute (the encoder and head as the host sees them: launches on CUDA, the work
    itself on CPU), the finiteness sync (on CUDA, the host waiting for the flag of the window before, launched one
    window earlier: WindowRunner.settle) and the hand-off to the store; a row is one launch. On CUDA, "gpu" is the
    device time between two events around the window's work, read when the rows are (no sync per window).
    `cuda` is torch.cuda; tests pass a fake.
    """

    def __init__(self, enabled: bool = False, cuda=torch.cuda):
        self.enabled, self.cuda = enabled, cuda
        self._rows: list[dict] = []
        self._unread: list[tuple] = []  # (row, first event, last event): device time not read yet
        self._row: dict = {}
        self._mark = self._start = 0.0
        self._events: list = []

    @property
    def rows(self) -> list[dict]:
        """The rows so far, "gpu" read here: at a row's end its window's work may still be queued (its finiteness is
        read one window later), and reading the events then would make the host wait for it."""
        for row, first, last in self._unread:
            last.synchronize()
            row["gpu"] = first.elapsed_time(last) / 1000
        self._unread = []
        return self._rows

    def start(self, window: int) -> None:
        """A new row; one still open ends first (the worker ends the last: a row is one launch, with the settling of
        the window before it and its hand-off to the store, WindowRunner.settle)."""
        if self.enabled and self._row:
            self.end()
        if self.enabled:
            self._row, self._events = {"window": window, **dict.fromkeys(STAGES, 0.0)}, []
            self._mark = self._start = time.perf_counter()

    def lap(self, stage: str) -> None:
        if self.enabled and self._row:
            now = time.perf_counter()
            self._row[stage] += now - self._mark
            self._mark = now

    def device_mark(self, device: torch.device) -> None:
        if self.enabled and device.type == "cuda":
            event = self.cuda.Event(enable_timing=True)
            event.record(self.cuda.current_stream(device))
            self._events.append(event)

    def end(self) -> None:
        if self.enabled and self._row:
            self._row["total"] = time.perf_counter() - self._start
            self._row["gpu"] = None
            if len(self._events) > 1:
                self._unread.append((self._row, self._events[0], self._events[-1]))
            self._rows.append(self._row)
            self._row = {}
