"""Pass 1 of the merge: the alignment chain's (scale, shift) per window, and a range that bounds every output.

Sequential and cheap: it replays the alignment chain over the stored windows, reading only the three outputs per window
it needs, and bounds the value range for quantised formats. `vda depth` runs it ahead, in a thread that follows the
workers (`EarlyMerge`), and keeps it in RUN_DIR/first_pass.json; the merge resumes from there and does the units left.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

import numpy as np

from vda.core import stitch
from vda.core.align import CHAIN_OUTPUTS, chain_maps
from vda.core.plan import Plan
from vda.files import write_json
from vda.io.rundir import RunDir
from vda.merge.render import Job, load_piece
from vda.system import one_blas_thread

if TYPE_CHECKING:
    pass

FIRST_PASS_SCHEMA = 1
log = logging.getLogger(__name__)


class FirstPass:
    """Pass 1, unit by unit in order: each window's (scale, shift), and a range that bounds every output.

    Bilinear upsampling and blending are convex combinations, so the extremes of the aligned
    network-resolution maps bound the full-resolution frames. The chain is sequential, so this pass cannot
    be split; instead it can run while the workers still compute (`EarlyMerge`), and what it has done is kept
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
