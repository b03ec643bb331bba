"""The merge begun early: pass 1 and rendering ahead of every run, in a thread, while the workers still compute."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path

from vda.core.plan import Plan
from vda.merge.ahead import RenderAhead
from vda.merge.first_pass import FirstPass
from vda.merge.output import Output
from vda.merge.render import job_for

log = logging.getLogger(__name__)


class EarlyMerge:
    """Runs pass 1 of every run while the workers compute, as far as stored pieces allow, in a thread; and renders
    ahead (`ahead.RenderAhead`) the units it passes, for the runs `outputs` gives an output that allows it.

    Only a head start: a run whose pass fails here is left for its merge, which redoes what is missing and reports
    it. `release(run_dir)` hands a run over to its merge: it returns once the thread no longer touches that run (the
    render tasks in flight have finished and are recorded).
    """

    def __init__(self, run_dirs: list[Path], poll_s: float = 0.5, outputs: Mapping[Path, Output] | None = None):
        self.poll_s, self._lock, self._stop = poll_s, threading.RLock(), threading.Event()
        self._runs = [Path(r) for r in run_dirs]
        self._passes: dict[Path, FirstPass] = {}
        self._ahead: dict[Path, RenderAhead] = {}
        self._outputs = {Path(r): o for r, o in (outputs or {}).items()}  # run -> the output its merge writes
        self._thread = threading.Thread(target=self._loop, name="vda-first-pass", daemon=True)

    def __enter__(self) -> EarlyMerge:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        with self._lock:
            for ahead in self._ahead.values():
                ahead.stop()
            self._ahead.clear()

    def follow(self, run_dir: Path, output: Output | None = None) -> None:
        """One more run to follow: a video planned after the batch began (and the output its merge writes)."""
        with self._lock:
            self._runs.append(Path(run_dir))
            if output is not None:
                self._outputs[Path(run_dir)] = output

    def release(self, run_dir: Path) -> None:
        with self._lock:
            self._runs = [r for r in self._runs if r != Path(run_dir)]
            self._passes.pop(Path(run_dir), None)
            ahead = self._ahead.pop(Path(run_dir), None)
            if ahead is not None:
                ahead.stop()

    def _first_pass(self, run_dir: Path) -> FirstPass | None:
        if run_dir not in self._passes:
            try:
                plan = Plan.load(run_dir)
                self._passes[run_dir] = FirstPass(job_for(plan, run_dir, run_dir, "npy", False), plan)
            except Exception:  # noqa: BLE001 - see the class docstring
                self._runs.remove(run_dir)
                return None
            self._start_ahead(run_dir, plan)
        return self._passes[run_dir]

    def _start_ahead(self, run_dir: Path, plan: Plan) -> None:
        from vda.merge.ahead import RenderAhead

        output = self._outputs.get(run_dir)
        if output is None or not RenderAhead.worth_it(plan, output):
            return
        try:
            self._ahead[run_dir] = RenderAhead(run_dir, plan, output)
        except Exception as err:  # noqa: BLE001 - another run's output there, say: the merge refuses it in one line
            log.info("%s: not rendering ahead: %s", run_dir, err)

    def _step(self, run_dir: Path) -> bool:
        """Step one run as far as its stored pieces allow, and its rendering ahead; whether it moved."""
        first = self._first_pass(run_dir)
        if first is None:
            return False
        steps = 0
        try:
            while not first.finished and first.ready() and not self._stop.is_set():
                first.step()
                steps += 1
            if steps:
                first.save()
        except Exception:  # noqa: BLE001 - see the class docstring
            self.release(run_dir)
            return False
        ahead = self._ahead.get(run_dir)
        rendered = ahead is not None and ahead.step(first)
        if first.finished and ahead is None:
            self._runs.remove(run_dir)
            del self._passes[run_dir]
        return steps > 0 or rendered

    def _loop(self) -> None:
        while not self._stop.is_set():
            moved = False
            for run_dir in list(self._runs):
                with self._lock:
                    moved |= run_dir in self._runs and self._step(run_dir)
            if not self._runs:
                return
            if not moved:
                self._stop.wait(self.poll_s)
