"""Disk space, checked before any GPU time is spent: a long video needs tens of GB for windows and frames.

The estimate is a pure function of the plan; only `check_space` looks at the disks.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from vda.core.plan import SEGMENT, Plan, PlanError
from vda.device.runtime import resolve_precision, store_dtype
from vda.io.rundir import RunDir
from vda.io.writers import FORMATS, STACK, frame_digits, output_shape

NPY_HEADER = 128
# A piece's .done marker: shape, dtype and each row's raw [min, max] as JSON. Measured on stream segments of 8, 10 and
# 32 rows: 499, 597 and 1682 bytes, so 256 + 64 per row covers them with room (tests/test_space.py holds it to 1%).
MARKER_BASE, MARKER_PER_ROW = 256, 64


def marker_bytes(rows: int) -> int:
    """Bytes of the .done marker of a piece of `rows` maps (an upper bound)."""
    return MARKER_BASE + MARKER_PER_ROW * rows


# Bytes per pixel of a written frame, as an estimate. PNG: depth maps are smooth, and bench_stages.py measured
# 2.53 MB for a 1080p png16 frame (0.61 of the 4.15 MB raw); 0.75 leaves room for less smooth scenes.
OUTPUT_BYTES_PER_PIXEL = {"png16": 2 * 0.75, "png8": 1 * 0.75, "npy": 4, "npz": 4, "exr": 4 * 1.01, "npy-stack": 4}


@dataclass(frozen=True)
class SpaceNeed:
    run_bytes: int  # windows (or segments) still to be stored in RUN_DIR
    out_bytes: int  # frames still to be written in OUT


def unit_bytes(plan: Plan, piece: int, devices: list[str], frames: int | None = None) -> int:
    """Bytes of one stored piece (a window, or the stream segment starting at frame `piece`, of `frames` maps, found
    from the plan when not given): network-resolution maps, in the store dtype of the precision its device computes
    in (float16 for fp16, float32 otherwise); the largest over the devices, as any of them may compute it."""
    s = plan.settings
    if frames is None:
        frames = piece_frames(plan)[piece]
    kinds = {"cuda" if d.startswith("cuda") else "cpu" for d in devices}
    itemsize = max(store_dtype(resolve_precision(s.precision, kind)).itemsize for kind in kinds)
    return frames * s.net_height * s.net_width * itemsize + NPY_HEADER + marker_bytes(frames)


def piece_frames(plan: Plan) -> dict[int, int]:
    """Maps per stored piece, in one pass over the units: 32 per window; a stream segment ends at SEGMENT frames or
    at its unit's end, whichever comes first (found per unit, not by searching the units for each piece: a plan of
    10,000 units has as many pieces)."""
    if plan.settings.mode == "window":
        return dict.fromkeys(plan.all_pieces(), 32)
    return {p: min(SEGMENT, u.span[1] - p) for u in plan.units for p in plan.pieces(u)}


def estimate(
    plan: Plan,
    fmt: str,
    pending_pieces: list[int],
    pending_frames: int,
    devices: list[str],
    output_size: str = "source",
) -> SpaceNeed:
    """Space still needed for `pending_pieces` and `pending_frames` output frames in format `fmt`, written at
    `output_size` (--output-size: the frame's size, the network's, or WxH)."""
    s = plan.settings
    h, w = output_shape(output_size, (s.frame_height, s.frame_width), (s.net_height, s.net_width))
    per_frame = int(w * h * OUTPUT_BYTES_PER_PIXEL[fmt]) + NPY_HEADER
    frames = piece_frames(plan)
    run_bytes = sum(unit_bytes(plan, p, devices, frames[p]) for p in pending_pieces)
    return SpaceNeed(run_bytes, pending_frames * per_frame)


def written_bytes(out_dir: Path, fmt: str, frame_count: int) -> int:
    """Bytes of the frame files of `fmt` already in `out_dir` (a rerun replaces them in place): one listing of the
    folder, not a stat per frame of the video. An npy-stack is written whole beside the old one: 0."""
    if fmt == STACK or not Path(out_dir).is_dir():
        return 0
    ext, digits = FORMATS[fmt], frame_digits(frame_count)
    total = 0
    with os.scandir(out_dir) as entries:
        for entry in entries:
            index = entry.name[len("depth_") : -len(ext)]
            named = entry.name.startswith("depth_") and entry.name.endswith(ext) and len(index) == digits
            if named and index.isdigit() and int(index) < frame_count and entry.is_file():
                total += entry.stat().st_size
    return total


def human_size(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def check_space(
    runs: list[tuple[Plan, RunDir, Path]], fmt: str, devices: list[str], output_size: str = "source"
) -> SpaceNeed:
    """Refuse to start when the disks cannot hold what is left to write for every (plan, run folder, output folder)
    of a batch (one line: sizes, where, and the fix): a SpaceLedger that every input is added to."""
    ledger = SpaceLedger(fmt, devices, output_size)
    for plan, run, out_dir in runs:
        ledger.add(plan, run, out_dir)
    return ledger.need


class SpaceLedger:
    """check_space for a batch whose inputs arrive one by one (planned in the background): each input's need is
    added to what the ones before it need, per filesystem, against the free space each had when first seen."""

    def __init__(self, fmt: str, devices: list[str], output_size: str = "source"):
        self.fmt, self.devices, self.output_size = fmt, devices, output_size
        self.need = SpaceNeed(0, 0)  # what the inputs added so far still need, in all
        self._disks: dict[int, tuple[Path, int, dict[str, int]]] = {}  # st_dev -> (folder, free then, needs by kind)

    def add(self, plan: Plan, run: RunDir, out_dir: Path) -> None:
        """Count this input in, or refuse it (PlanError, check_space's line) when the disks cannot hold it too."""
        need = estimate(plan, self.fmt, run.missing_pieces(plan), plan.frame_count, self.devices, self.output_size)
        out_bytes = max(0, need.out_bytes - written_bytes(out_dir, self.fmt, plan.frame_count))
        disks = {dev: (folder, free, dict(parts)) for dev, (folder, free, parts) in self._disks.items()}
        for folder, size, what in ((run.path, need.run_bytes, "windows"), (out_dir, out_bytes, f"{self.fmt} frames")):
            folder = _existing_parent(folder)
            dev = os.stat(folder).st_dev
            first, free, parts = disks.setdefault(dev, (folder, shutil.disk_usage(folder).free, {}))
            parts[what] = parts.get(what, 0) + size
        for folder, free, parts in disks.values():
            if free < sum(parts.values()):
                listing = " + ".join(f"{human_size(n)} of {what}" for what, n in parts.items())
                raise PlanError(
                    f"not enough disk space: {folder} has {human_size(free)} free, this run needs about "
                    f"{human_size(sum(parts.values()))} ({listing}); free space, choose another -o / --run-dir, or "
                    "pass --no-space-check"
                )
        self._disks = disks
        self.need = SpaceNeed(self.need.run_bytes + need.run_bytes, self.need.out_bytes + out_bytes)

    @property
    def total(self) -> int:
        return self.need.run_bytes + self.need.out_bytes


def _existing_parent(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return path
