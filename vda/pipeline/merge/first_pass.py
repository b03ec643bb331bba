"""Pass 1 of the merge: the alignment chain's (scale, shift) per window, and a range that bounds every output.

Sequential and cheap: it replays the alignment chain over the stored windows, reading only the three outputs per window
it needs, and bounds the value range for quantised formats. `vda depth` runs it ahead, in a thread that follows the
workers (`Follower`), and keeps it in RUN_DIR/first_pass.json; the merge resumes from there and does the units left.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vda.core import stitch
from vda.core.plan import Plan
from vda.io.rundir import RunDir
from vda.io.writers import write_json
from vda.pipeline.inference import CHAIN_OUTPUTS, chain_maps
from vda.pipeline.merge.render import Job, job_for, load_piece
from vda.system import one_blas_thread

if TYPE_CHECKING:
    from vda.pipeline.merge.ahead import RenderAhead
    from vda.pipeline.merge.output import Output

FIRST_PASS_SCHEMA = 1
log = logging.getLogger(__name__)


class FirstPass:
    """Pass 1, unit by unit in order: each window's (scale, shift), and a range that bounds every output.

    Bilinear upsampling and blending are convex combinations, so the extremes of the aligned
    network-resolution maps bound the full-resolution frames. The chain is sequential, so this pass cannot
    be split; instead it can run while the workers still compute (`Follower`), and what it has done is kept
    in RUN_DIR/first_pass.json, so the merge after the last worker only does the units left.
    """

    def __init__(self, job: Job, plan: Plan):
        self.job, self.run_id, self.mode = job, plan.run_id, job.mode
        self.path = RunDir(job.run_dir).first_pass
        self.units = list(job.pieces)
        self.chain = stitch.AlignmentChain(metric=plan.settings.metric)
        self.used = stitch.rows_of(range(job.n_frames), job.n_frames) if job.mode == "window" else {}
        self.entries: list[dict] = self._cached()
        if self.mode == "window" and self.entries:
            last = len(self.entries) - 1
            maps0 = self._chain_maps(0)
            key = (maps0 if last == 0 else self._chain_maps(last))[2]
            self.chain.restore(maps0[0], key, self.entries[-1]["scale"], self.entries[-1]["shift"], last + 1)

    def _cached(self) -> list[dict]:
        """The entries a previous pass over this run stored; anything else is ignored and recomputed."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return []
        key = (data.get("schema_version"), data.get("run_id"), data.get("mode")) if isinstance(data, dict) else None
        if key != (FIRST_PASS_SCHEMA, self.run_id, self.mode):
            return []
        entries = data.get("units")
        fields = {"unit", "scale", "shift", "lo", "hi"}
        if not isinstance(entries, list) or not all(isinstance(e, dict) and fields <= e.keys() for e in entries):
            return []
        if [e["unit"] for e in entries] != self.units[: len(entries)]:
            return []
        return entries

    def _chain_maps(self, w: int) -> np.ndarray:
        return chain_maps(load_piece(self.job, w, CHAIN_OUTPUTS), self.job.size)

    @property
    def finished(self) -> bool:
        return len(self.entries) == len(self.units)

    def ready(self) -> bool:
        """Whether the next piece is stored by its worker."""
        return RunDir(self.job.run_dir).is_stored(self.mode, self.units[len(self.entries)])

    def step(self) -> None:
        unit = self.units[len(self.entries)]
        entry = {"unit": unit, "scale": 1.0, "shift": 0.0, "lo": None, "hi": None}
        if self.mode == "window":
            maps = self._chain_maps(unit)
            with one_blas_thread():  # the single pass's sums, whatever the host's cores (infer_video's chain_step)
                scale, shift = self.chain.step(*maps)
            entry["scale"], entry["shift"] = float(scale), float(shift)
            if unit in self.used:  # the last window of a short tail can feed no output frame
                values = stitch.apply_scale_shift(self._raw_range(unit, sorted(self.used[unit])), scale, shift)
                entry["lo"], entry["hi"] = float(values.min()), float(values.max())
        else:
            values = self._raw_range(unit, None)
            entry["lo"], entry["hi"] = float(values.min()), float(values.max())
        self.entries.append(entry)

    def _raw_range(self, unit: int, rows: list[int] | None) -> np.ndarray:
        """Values whose aligned extremes are those of the piece's `rows` (all when None): the per-row raw [min, max]
        its marker records, else (a marker from before they were recorded) the rows themselves.

        Exact: scale/shift and the clip at 0 are monotone in float32 too (each rounding is), so the extremes of the
        aligned rows are the aligned extremes of the raw rows, whichever the sign of the scale.
        """
        extremes = (RunDir(self.job.run_dir).marker(self.mode, unit) or {}).get("rows")
        if extremes is None:
            return load_piece(self.job, unit, rows).numpy()
        picked = extremes if rows is None else [extremes[r] for r in rows]
        return np.array(picked, dtype=np.float32)

    def save(self) -> None:
        doc = {"schema_version": FIRST_PASS_SCHEMA, "run_id": self.run_id, "mode": self.mode, "units": self.entries}
        write_json(self.path, doc)

    def result(self) -> tuple[dict, float, float]:
        """(scale, shift) per window, and the [lo, hi] range of all outputs."""
        params = {e["unit"]: (e["scale"], e["shift"]) for e in self.entries} if self.mode == "window" else {}
        lows = [e["lo"] for e in self.entries if e["lo"] is not None]
        highs = [e["hi"] for e in self.entries if e["hi"] is not None]
        return params, min(lows), max(highs)


class Follower:
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

    def __enter__(self) -> Follower:
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
        from vda.pipeline.merge.ahead import RenderAhead

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
