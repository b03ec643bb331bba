"""Disk space, checked before any GPU time is spent: a long video needs tens of GB for windows and frames.

The estimate is a pure function of the plan; only `check_space` looks at the disks.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from vda.inference import resolve_precision, store_dtype
from vda.plan import Plan, PlanError
from vda.worker import SEGMENT, unfinished_units
from vda.writers import frame_name

NPY_HEADER = 128
MARKER = 512  # a unit's .done marker, generously
# Bytes per pixel of a written frame, as an estimate. PNG: depth maps are smooth, and bench_stages.py measured
# 2.53 MB for a 1080p png16 frame (0.61 of the 4.15 MB raw); 0.75 leaves room for less smooth scenes.
OUTPUT_BYTES_PER_PIXEL = {"png16": 2 * 0.75, "png8": 1 * 0.75, "npy": 4, "npz": 4, "exr": 4 * 1.01}


@dataclass(frozen=True)
class SpaceNeed:
    run_bytes: int  # windows (or segments) still to be stored in RUN_DIR
    out_bytes: int  # frames still to be written in OUT


def unit_bytes(plan: Plan, unit: int) -> int:
    """Bytes of one stored unit: network-resolution maps, in the store dtype of the precision its device computes in
    (float16 for fp16, float32 otherwise); the largest over the plan's devices, as any of them may compute it."""
    s = plan.settings
    frames = 32 if s.mode == "window" else min(SEGMENT, plan.frame_count - unit)
    kinds = {"cuda" if c.device.startswith("cuda") else "cpu" for c in plan.chunks}
    itemsize = max(store_dtype(resolve_precision(s.precision, kind)).itemsize for kind in kinds)
    return frames * s.net_height * s.net_width * itemsize + NPY_HEADER + MARKER


def estimate(plan: Plan, fmt: str, pending_units: list[int], pending_frames: int) -> SpaceNeed:
    """Space still needed for `pending_units` and `pending_frames` output frames in format `fmt`."""
    s = plan.settings
    per_frame = int(s.frame_width * s.frame_height * OUTPUT_BYTES_PER_PIXEL[fmt]) + NPY_HEADER
    return SpaceNeed(sum(unit_bytes(plan, u) for u in pending_units), pending_frames * per_frame)


def human_size(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def check_space(plan: Plan, run_dir: Path, out_dir: Path, fmt: str) -> SpaceNeed:
    """Refuse to start when the disks cannot hold what is left to write (one line: sizes, where, and the fix)."""
    pending = [u for c in plan.chunks for u in unfinished_units(plan, run_dir, c.index)]
    existing = sum(p.stat().st_size for i in range(plan.frame_count) if (p := out_dir / frame_name(i, fmt)).is_file())
    need = estimate(plan, fmt, pending, plan.frame_count)
    need = SpaceNeed(need.run_bytes, max(0, need.out_bytes - existing))  # a rerun replaces frames in place
    by_disk: dict[int, tuple[Path, int, list[str]]] = {}  # one entry per filesystem: run and out may share one
    for folder, size, what in ((run_dir, need.run_bytes, "windows"), (out_dir, need.out_bytes, f"{fmt} frames")):
        folder = _existing_parent(folder)
        first, total, parts = by_disk.get(os.stat(folder).st_dev, (folder, 0, []))
        by_disk[os.stat(folder).st_dev] = (first, total + size, [*parts, f"{human_size(size)} of {what}"])
    for folder, size, parts in by_disk.values():
        free = shutil.disk_usage(folder).free
        if free < size:
            raise PlanError(
                f"not enough disk space: {folder} has {human_size(free)} free, this run needs about {human_size(size)} "
                f"({' + '.join(parts)}); free space, choose another -o / --run-dir, or pass --no-space-check"
            )
    return need


def _existing_parent(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return path
