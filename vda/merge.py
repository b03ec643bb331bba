"""The merge: `vda merge RUN_DIR -o OUT --format png16|png8|npy|npz|exr [--create-video]`.

Pass 1 (sequential, cheap): replay the alignment chain over the stored windows, reading only the
three outputs per window it needs, and bound the value range for quantised formats.
Pass 2 (parallel over CPU processes): each task renders the frames one window makes final, from that
window and the previous one, and writes them. Memory stays at a few windows per process.
The rendering is the same code the single pass uses, so the result equals a single pass.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vda import stitch
from vda.inference import CHAIN_OUTPUTS, WindowAligner, chain_step, upsample
from vda.plan import Plan, PlanError
from vda.worker import SEGMENT, unfinished_units, unit_path, units_of
from vda.writers import FORMATS, LEVELS, META_NAME, DepthMeta, colorize, encode, frame_name, write_atomic

MERGED_MARKER = ".merged"


@dataclass(frozen=True)
class Job:
    """Everything a render task needs, picklable for worker processes."""

    run_dir: str
    out_dir: str
    fmt: str
    mode: str
    n_frames: int
    size: tuple[int, int]  # (H, W)
    lo: float
    hi: float
    owners: dict  # unit -> chunk index
    params: dict  # window -> (scale, shift)
    video: bool


def _load(job: Job, unit: int, rows=None) -> torch.Tensor:
    path = unit_path(Path(job.run_dir), job.owners[unit], job.mode, unit)
    data = np.load(path, mmap_mode="r")
    return torch.from_numpy(np.array(data if rows is None else data[rows], dtype=np.float32))


def missing_units(plan: Plan, run_dir: Path) -> dict[int, list[int]]:
    todo = {chunk.index: unfinished_units(plan, run_dir, chunk.index) for chunk in plan.chunks}
    return {k: units for k, units in todo.items() if units}


def _contributing(n_frames: int) -> dict[int, set[int]]:
    """Window -> its outputs that reach some final frame (the rest only feed the alignment or are padding)."""
    used: dict[int, set[int]] = {}
    for f in range(n_frames):
        src = stitch.frame_source(f, n_frames)
        used.setdefault(src.w, set()).add(src.i)
        if src.weight < 1.0:
            used.setdefault(src.w - 1, set()).add(src.i + stitch.STRIDE)
    return used


def replay_chain(job: Job, metric: bool) -> tuple[dict, float, float]:
    """(scale, shift) per window and a [lo, hi] range that bounds every output value.

    Bilinear upsampling and blending are convex combinations, so the extremes of the aligned
    network-resolution maps bound the full-resolution frames.
    """
    chain = stitch.AlignmentChain(metric=metric)
    used = _contributing(job.n_frames)
    params, lo, hi = {}, np.inf, -np.inf
    for w in range(stitch.num_windows(job.n_frames)):
        scale, shift = chain_step(chain, _load(job, w, CHAIN_OUTPUTS), job.size)
        params[w] = (float(scale), float(shift))
        if w in used:  # the last window of a short tail can feed no output frame
            aligned = stitch.apply_scale_shift(_load(job, w, sorted(used[w])).numpy(), scale, shift)
            lo, hi = min(lo, float(aligned.min())), max(hi, float(aligned.max()))
    return params, lo, hi


def _segment_range(job: Job) -> tuple[float, float]:
    lo, hi = np.inf, -np.inf
    for unit in job.owners:
        d = _load(job, unit).numpy()
        lo, hi = min(lo, float(d.min())), max(hi, float(d.max()))
    return lo, hi


def _write(job: Job, f: int, depth: np.ndarray) -> None:
    write_atomic(Path(job.out_dir) / frame_name(f, job.fmt), encode(depth, job.fmt, job.lo, job.hi))


def render_unit(job: Job, unit: int) -> list[np.ndarray] | None:
    """Write the frames `unit` makes final; return them colourised when a video is wanted."""
    frames = []
    if job.mode == "window":
        aligner = WindowAligner(job.size)
        for w in (unit - 1, unit):
            if w >= 0:
                aligner.add(w, _load(job, w), np.float32(job.params[w][0]), np.float32(job.params[w][1]))
        pairs = aligner.frames(unit, job.n_frames)
    else:
        seg = upsample(_load(job, unit), job.size).numpy()
        pairs = zip(range(unit, unit + len(seg)), seg)
    for f, depth in pairs:
        _write(job, f, depth)
        if job.video:
            frames.append(colorize(depth, job.lo, job.hi))
    return frames if job.video else None


def merge(
    run_dir: str | Path,
    out_dir: str | Path,
    fmt: str = "png16",
    *,
    create_video: bool = False,
    workers: int | None = None,
    overwrite: bool = False,
    log=print,
) -> DepthMeta:
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    plan = Plan.load(run_dir)
    s = plan.settings
    missing = missing_units(plan, run_dir)
    if missing:
        listing = "; ".join(f"chunk {k}: {len(v)} unit(s) from {v[0]}" for k, v in missing.items())
        raise PlanError(
            f"cannot merge, unfinished chunks ({listing}); run them again with `vda run-chunk` or `vda depth`"
        )
    _refuse_foreign_output(out_dir, plan, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MERGED_MARKER).unlink(missing_ok=True)
    owners = {u: c.index for c in plan.chunks for u in units_of(plan, c.index)}
    job = Job(
        str(run_dir),
        str(out_dir),
        fmt,
        s.mode,
        plan.frame_count,
        (s.frame_height, s.frame_width),
        0.0,
        1.0,
        owners,
        {},
        create_video,
    )
    if s.mode == "window":
        params, lo, hi = replay_chain(job, s.metric)
    else:
        params, (lo, hi) = {}, _segment_range(job)
    job = Job(**{**job.__dict__, "params": params, "lo": lo, "hi": hi})
    units = sorted(owners)
    sink = (
        _VideoSink(out_dir / "depth_vis.mp4", plan.input.fps_fraction, s.frame_width, s.frame_height)
        if create_video
        else None
    )
    workers = max(1, min(workers or os.cpu_count() or 1, len(units)))
    try:
        for frames in _map_ordered(job, units, workers):
            if sink:
                sink.write(frames)
    except BaseException:
        if sink:
            sink.abort()
        raise
    if sink:
        sink.close()
    meta = DepthMeta(
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
    meta.save(out_dir)
    write_atomic(out_dir / MERGED_MARKER, plan.run_id.encode())
    log(f"merged {plan.frame_count} frames into {out_dir} ({fmt})")
    return meta


def _refuse_foreign_output(out_dir: Path, plan: Plan, overwrite: bool) -> None:
    """Never mix frames of two runs in one folder: another run's output is replaced only with --overwrite."""
    if overwrite or not (out_dir / META_NAME).is_file():
        return
    try:
        other = DepthMeta.load(out_dir).settings.get("run_id")
    except (ValueError, TypeError, KeyError):
        other = "unknown"
    if other != plan.run_id:
        raise PlanError(
            f"{out_dir} already holds the output of another run ({other}); "
            "choose another output folder or pass --overwrite"
        )


def _one_thread() -> None:
    torch.set_num_threads(1)  # one process per core: threads inside would only oversubscribe


def _map_ordered(job: Job, units: list[int], workers: int):
    """render_unit over units, results in order, at most 2 * workers in flight (bounded memory)."""
    if workers == 1:
        for u in units:
            yield render_unit(job, u)
        return
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_one_thread) as pool:
        pending: dict[int, cf.Future] = {}
        nxt = 0
        for u in units:
            while len(pending) >= 2 * workers:
                yield pending.pop(units[nxt]).result()
                nxt += 1
            pending[u] = pool.submit(render_unit, job, u)
        while nxt < len(units):
            yield pending.pop(units[nxt]).result()
            nxt += 1


class _VideoSink:
    """Colourised depth video at the source's exact fps, written to a temporary name then renamed."""

    def __init__(self, path: Path, fps, width: int, height: int):
        import av

        self.path, self.tmp = path, path.with_name(f".{path.name}.tmp.mp4")
        self.container = av.open(str(self.tmp), "w")
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self.stream = self.container.add_stream(codec, rate=fps)
        self.stream.width, self.stream.height = width - width % 2, height - height % 2
        self.stream.pix_fmt = "yuv420p"

    def write(self, frames) -> None:
        import av

        for rgb in frames or []:
            rgb = np.ascontiguousarray(rgb[: self.stream.height, : self.stream.width])
            for packet in self.stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Drop the partial video: only a complete one ever gets the final name."""
        self.container.close()
        self.tmp.unlink(missing_ok=True)


__all__ = ["merge", "replay_chain", "render_unit", "missing_units", "SEGMENT"]
