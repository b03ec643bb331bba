"""The merge: `vda merge RUN_DIR -o OUT --format png16|png8|npy|npz|exr|npy-stack [--create-video [side-by-side]]`.

Pass 1 (`first_pass`, sequential, cheap): replay the alignment chain over the stored windows, reading only the
three outputs per window it needs, and bound the value range for quantised formats. `vda depth` runs it
ahead, in a thread that follows the workers (`EarlyMerge`), and keeps it in RUN_DIR/first_pass.json.
Pass 2 (`render`, parallel over CPU processes): each task renders the frames one window makes final, from that
window and the previous one, and writes them. Memory stays at a few windows per process.
The rendering is the same code the single pass uses, so the result equals a single pass.
The outputs (`sinks`): one file per frame (or one npy-stack), at the frame's size, the network's or any
(`--output-size`), the colourised video if asked, then depth_meta.json, and last the marker
file MERGED_MARKER, which says the folder holds a complete merge of the run.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path

from vda.core.plan import Plan, PlanError
from vda.errors import UsageError
from vda.files import write_atomic
from vda.io.decode import read_frames
from vda.io.rundir import RunDir
from vda.io.writers import (
    FORMATS,
    LEVELS,
    STACK,
    VIDEO_KINDS,
    DepthMeta,
    check_png_scale,
    fixed_range,
    output_shape,
    parse_output_size,
)
from vda.merge.first_pass import FirstPass
from vda.merge.output import MERGED_MARKER, PREVIEW_NAME, Output, prepare_output
from vda.merge.render import Job, job_for, map_ordered, render_processes
from vda.merge.sinks import SideBySideSink, Sink, StackFile, VideoSink
from vda.system import host_threads

logger = logging.getLogger(__name__)
SIDE_BY_SIDE = VIDEO_KINDS[1]  # --create-video side-by-side: RGB left, colourised depth right


def merge(
    run_dir: str | Path,
    out_dir: str | Path,
    fmt: str = "png16",
    *,
    create_video: bool = False,
    workers: int | None = None,
    overwrite: bool = False,
    log: Callable[[str], object] = print,
    output_size: str = "source",
    png_scale: float | None = None,
    input_path: str | Path | None = None,
) -> DepthMeta:
    """Merge a run's stored pieces into `out_dir`, in `fmt`; `workers` render processes (default: see
    `render.render_processes`). Refuses a run with pieces missing, and a folder holding another run's output.

    `output_size`: "source" (the frame's size after --max-res), "net" (the network's, no upsampling) or "WxH".
    `png_scale`: metric png at a fixed scale (value = stored * scale) instead of the video's own range.
    `create_video`: True or "depth" (colourised depth), "side-by-side" (the RGB frames beside it, read from
    `input_path`, default the plan's input)."""
    started = time.perf_counter()
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    plan = _mergeable_plan(run_dir, fmt)
    check_png_scale(png_scale, fmt, plan.settings.metric)
    output = Output(out_dir, fmt, output_size, png_scale, create_video, overwrite, workers)
    rendered = prepare_output(run_dir, plan, output)  # units whose frames were written ahead (RenderAhead)
    job = job_for(plan, run_dir, out_dir, fmt, bool(create_video))
    s = plan.settings
    out_size = output_shape(output_size, job.size, (s.net_height, s.net_width))
    first = FirstPass(job, plan)
    ahead = len(first.entries)  # done by `EarlyMerge` while the workers ran, or by an interrupted merge
    with host_threads():
        job = _finish_first_pass(first, job)
    job = dataclasses.replace(job, out_size=out_size, quant=_quantization(job, png_scale))
    sinks = _open_sinks(plan, job, create_video, input_path)
    workers = render_processes(workers, plan.frame_count * out_size[0] * out_size[1], len(first.units))
    _render(job, first.units[rendered:], workers, sinks)
    meta = _depth_meta(plan, fmt, job, output_size, png_scale)
    meta.save(out_dir)
    write_atomic(out_dir / MERGED_MARKER, plan.run_id.encode())
    RunDir(run_dir).rendered_ahead.unlink(missing_ok=True)  # complete: a later merge writes every frame again
    seconds = time.perf_counter() - started
    log(
        f"merged {plan.frame_count} frames into {out_dir} ({fmt}) in {seconds:.1f} s; "
        f"pass 1 had {ahead}/{len(first.units)} units done ahead, and {rendered} were rendered ahead"
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


def _finish_first_pass(first: FirstPass, job: Job) -> Job:
    """Do the units pass 1 has left, keep them in first_pass.json, and give `job` its alignment and range."""
    while not first.finished:
        first.step()
    first.save()
    params, lo, hi = first.result()
    return dataclasses.replace(job, params=params, lo=lo, hi=hi)


def _quantization(job: Job, png_scale: float | None) -> tuple[float, float] | None:
    """The files' [lo, hi] for a fixed scale (None: the video's own range), warning when depth goes past it."""
    if png_scale is None:
        return None
    lo, hi = fixed_range(png_scale, LEVELS[job.fmt])
    if job.hi > hi:
        logger.warning(
            "depth reaches %.3f m, past the %.3f m that --png-scale %s stores: clipped", job.hi, hi, png_scale
        )
    return lo, hi


def _open_sinks(plan: Plan, job: Job, create_video: bool | str, input_path) -> list[Sink]:
    """The sinks fed here, in unit order; the frame files are written by the render processes (`render_unit`), and
    an npy-stack is made here (preallocated) and filled by them."""
    h, w = job.render_size
    sinks: list[Sink] = [StackFile(Path(job.out_dir), (plan.frame_count, h, w))] if job.fmt == STACK else []
    fps, path = plan.input.fps_fraction, Path(job.out_dir) / PREVIEW_NAME
    try:
        if create_video == SIDE_BY_SIDE:
            info = dataclasses.replace(plan.input, path=str(input_path or plan.input.path))
            rgb = (frame for _, frame in read_frames(info, range(plan.frame_count), (w, h)))
            sinks.append(SideBySideSink(path, fps, rgb, w, h))
        elif create_video:
            sinks.append(VideoSink(path, fps, w, h))
    except BaseException:
        for sink in sinks:
            sink.abort()
        raise
    return sinks


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


def _depth_meta(plan: Plan, fmt: str, job: Job, output_size: str, png_scale: float | None) -> DepthMeta:
    """depth_meta.json: what a reader needs to decode the frames (the range of quantised formats, or their fixed
    scale), and the settings and run that made them. Settings at their defaults are left out, so that a folder
    written with the defaults reads as it always did."""
    s = plan.settings
    lo, hi = job.quant or (job.lo, job.hi)
    quantization = {"lo": lo, "hi": hi, "levels": LEVELS[fmt]} if fmt in LEVELS else {}
    if png_scale is not None:
        quantization["scale"] = png_scale
    extra = {"output_size": parse_output_size(output_size)} if output_size != "source" else {}
    return DepthMeta(
        fmt,
        plan.frame_count,
        plan.input.fps,
        job.render_size[1],
        job.render_size[0],
        s.encoder,
        s.metric,
        quantization,
        {
            "input_size": s.input_size,
            "max_res": s.max_res,
            "precision": s.precision,
            "mode": s.mode,
            "checkpoint": s.checkpoint,
            "input": Path(plan.input.path).name,
            "run_id": plan.run_id,
            **extra,
        },
    )


__all__ = ["MERGED_MARKER", "SIDE_BY_SIDE", "merge"]
