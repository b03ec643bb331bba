"""The merge: `vda merge RUN_DIR -o OUT --format png16|png8|npy|npz|exr [--create-video]`.

Pass 1 (`first_pass`, sequential, cheap): replay the alignment chain over the stored windows, reading only the
three outputs per window it needs, and bound the value range for quantised formats. `vda depth` runs it
ahead, in a thread that follows the workers (`Follower`), and keeps it in RUN_DIR/first_pass.json.
Pass 2 (`render`, parallel over CPU processes): each task renders the frames one window makes final, from that
window and the previous one, and writes them. Memory stays at a few windows per process.
The rendering is the same code the single pass uses, so the result equals a single pass.
The outputs (`sinks`): one file per frame, the colourised video if asked, then depth_meta.json, and last the marker
file MERGED_MARKER, which says the folder holds a complete merge of the run.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from vda.core.plan import Plan, PlanError
from vda.errors import UsageError, VdaError
from vda.io.rundir import RunDir
from vda.io.writers import FORMATS, LEVELS, META_NAME, DepthMeta, write_atomic
from vda.pipeline.merge.first_pass import FirstPass
from vda.pipeline.merge.render import Job, job_for, map_ordered, render_processes
from vda.pipeline.merge.sinks import Sink, VideoSink

MERGED_MARKER = ".merged"


def merge(
    run_dir: str | Path,
    out_dir: str | Path,
    fmt: str = "png16",
    *,
    create_video: bool = False,
    workers: int | None = None,
    overwrite: bool = False,
    log: Callable[[str], object] = print,
) -> DepthMeta:
    """Merge a run's stored pieces into `out_dir`, in `fmt`; `workers` render processes (default: see
    `render.render_processes`). Refuses a run with pieces missing, and a folder holding another run's output."""
    started = time.perf_counter()
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    plan = _mergeable_plan(run_dir, fmt)
    _refuse_foreign_output(out_dir, plan, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MERGED_MARKER).unlink(missing_ok=True)
    job = job_for(plan, run_dir, out_dir, fmt, create_video)
    first = FirstPass(job, plan)
    ahead = len(first.entries)  # done by `Follower` while the workers ran, or by an interrupted merge
    job = _finish_first_pass(first, job)
    sinks = _open_sinks(plan, out_dir, create_video)
    s = plan.settings
    workers = render_processes(workers, plan.frame_count * s.frame_width * s.frame_height, len(first.units))
    _render(job, first.units, workers, sinks)
    meta = _depth_meta(plan, fmt, job.lo, job.hi)
    meta.save(out_dir)
    write_atomic(out_dir / MERGED_MARKER, plan.run_id.encode())
    seconds = time.perf_counter() - started
    log(
        f"merged {plan.frame_count} frames into {out_dir} ({fmt}) in {seconds:.1f} s; "
        f"pass 1 had {ahead}/{len(first.units)} units done ahead"
    )
    return meta


def _mergeable_plan(run_dir: Path, fmt: str) -> Plan:
    """The run's plan, once `fmt` is known and every piece is stored: a merge never starts on a partial run."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    plan = Plan.load(run_dir)
    missing = RunDir(run_dir).missing_pieces(plan)
    if missing:
        what = "window" if plan.settings.mode == "window" else "segment"
        raise PlanError(
            f"cannot merge {run_dir}: {len(missing)} {what}(s) not computed yet, from {what} {missing[0]}; "
            f"compute them with `vda depth` (or `vda work {run_dir} --device ...`) and merge again"
        )
    return plan


def _refuse_foreign_output(out_dir: Path, plan: Plan, overwrite: bool) -> None:
    """Never mix frames of two runs in one folder: another run's output is replaced only with --overwrite, and then
    deleted first, so that a shorter video leaves no frames of a longer one behind."""
    if overwrite:
        _clear_output(out_dir)
        return
    if not (out_dir / META_NAME).is_file():
        return
    try:
        other = DepthMeta.load(out_dir).settings.get("run_id")
    except (VdaError, AttributeError):  # unreadable, from another version, or settings of another shape
        other = "unknown"
    if other != plan.run_id:
        raise PlanError(
            f"{out_dir} already holds the output of another run ({other}); "
            "choose another output folder or pass --overwrite"
        )


OUTPUT_FILE = re.compile(r"depth_\d{6,}(" + "|".join(re.escape(ext) for ext in FORMATS.values()) + ")")
PREVIEW_NAME = "depth_vis.mp4"


def _clear_output(out_dir: Path) -> None:
    """Delete what a merge writes (its marker and depth_meta.json first, so that a folder half cleared never reads as
    complete), and nothing else a user keeps there."""
    if not out_dir.is_dir():
        return
    for name in (MERGED_MARKER, META_NAME, PREVIEW_NAME):
        (out_dir / name).unlink(missing_ok=True)
    with os.scandir(out_dir) as entries:
        for entry in entries:
            if OUTPUT_FILE.fullmatch(entry.name) and entry.is_file():
                os.unlink(entry.path)


def _finish_first_pass(first: FirstPass, job: Job) -> Job:
    """Do the units pass 1 has left, keep them in first_pass.json, and give `job` its alignment and range."""
    while not first.finished:
        first.step()
    first.save()
    params, lo, hi = first.result()
    return dataclasses.replace(job, params=params, lo=lo, hi=hi)


def _open_sinks(plan: Plan, out_dir: Path, create_video: bool) -> list[Sink]:
    """The sinks fed here, in unit order; the frame files are written by the render processes (`render_unit`)."""
    if not create_video:
        return []
    s = plan.settings
    return [VideoSink(out_dir / PREVIEW_NAME, plan.input.fps_fraction, s.frame_width, s.frame_height)]


def _render(job: Job, units: list[int], workers: int, sinks: list[Sink]) -> None:
    """Pass 2: render every unit and feed each sink, in unit order; on any failure abort the sinks (no partial
    output under a final name) and re-raise."""
    try:
        for frames in map_ordered(job, units, workers):
            for sink in sinks:
                sink.write(frames)
    except BaseException:
        for sink in sinks:
            sink.abort()
        raise
    for sink in sinks:
        sink.close()


def _depth_meta(plan: Plan, fmt: str, lo: float, hi: float) -> DepthMeta:
    """depth_meta.json: what a reader needs to decode the frames (the range of quantised formats), and the settings
    and run that made them."""
    s = plan.settings
    return DepthMeta(
        fmt,
        plan.frame_count,
        plan.input.fps,
        s.frame_width,
        s.frame_height,
        s.encoder,
        s.metric,
        {"lo": lo, "hi": hi, "levels": LEVELS[fmt]} if fmt in LEVELS else {},
        {
            "input_size": s.input_size,
            "max_res": s.max_res,
            "precision": s.precision,
            "mode": s.mode,
            "checkpoint": s.checkpoint,
            "input": Path(plan.input.path).name,
            "run_id": plan.run_id,
        },
    )


__all__ = ["MERGED_MARKER", "merge"]
