"""Pass 2 of the merge: render the frames each unit makes final, and write them, on a pool of CPU processes.

A task renders one unit's frames from that window and the previous one (or from one stream segment), so memory stays
at a few windows per process. The rendering is the same code the single pass uses, so the result equals a single pass.
Results come back in unit order, whatever the number of processes, so the caller's sinks see the frames in order.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vda.core.plan import Plan
from vda.io.rundir import RunDir
from vda.io.writers import colorize
from vda.pipeline.inference import WindowAligner, upsample
from vda.pipeline.merge.sinks import FrameFiles
from vda.system import usable_cpus

# A pool of spawned render processes takes seconds to start (each imports torch): 5.7 s against 0.07 s for rendering a
# 100-frame 128x72 video in the calling process (bench_queue.py, on a loaded 2-core machine). At about 40 png16 1080p
# frames/s per core (README, Benchmarks), 120 frames at 1080p are 3 s of work: below that the default is one process.
POOL_MIN_PIXELS = 120 * 1920 * 1080


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
    pieces: tuple[int, ...]  # the stored pieces, in order: windows, or the first frames of stream segments
    params: dict[int, tuple[float, float]]  # window -> (scale, shift)
    video: bool


def job_for(plan: Plan, run_dir: Path, out_dir: Path, fmt: str, create_video: bool) -> Job:
    """The job of merging `plan`, before pass 1: no alignment yet, and the [0, 1] range as a placeholder."""
    s = plan.settings
    size = (s.frame_height, s.frame_width)
    pieces = tuple(plan.all_pieces())
    return Job(str(run_dir), str(out_dir), fmt, s.mode, plan.frame_count, size, 0.0, 1.0, pieces, {}, create_video)


def load_piece(job: Job, unit: int, rows: list[int] | None = None) -> torch.Tensor:
    """A stored piece as float32, or only its outputs `rows`: read through a memory map, so only those are read."""
    path = RunDir(job.run_dir).piece(job.mode, unit)
    data = np.load(path, mmap_mode="r")
    return torch.from_numpy(np.array(data if rows is None else data[rows], dtype=np.float32))


def _rendered(job: Job, unit: int) -> Iterable[tuple[int, np.ndarray]]:
    """(frame index, full-resolution depth) for each frame `unit` makes final, aligned by pass 1's (scale, shift)."""
    if job.mode == "window":
        aligner = WindowAligner(job.size)
        for w in (unit - 1, unit):
            if w >= 0:
                aligner.add(w, load_piece(job, w), np.float32(job.params[w][0]), np.float32(job.params[w][1]))
        return aligner.frames(unit, job.n_frames)
    seg = upsample(load_piece(job, unit), job.size).numpy()
    return zip(range(unit, unit + len(seg)), seg)


def render_unit(job: Job, unit: int) -> list[np.ndarray] | None:
    """Write the frames `unit` makes final; return them colourised when a video is wanted.

    The frame files are written here, in the render process, so encoding runs on every core; the video has one
    encoder, fed in order by the caller, which gets the colourised frames (also made here, in parallel).
    """
    files = FrameFiles(Path(job.out_dir), job.fmt, job.lo, job.hi, job.n_frames)
    colourised = []
    for f, depth in _rendered(job, unit):
        files.write([(f, depth)])
        if job.video:
            colourised.append(colorize(depth, job.lo, job.hi))
    return colourised if job.video else None


def render_processes(workers: int | None, pixels: int, units: int) -> int:
    """How many processes render: `workers`, else one per usable core, or one for a small video (`POOL_MIN_PIXELS`);
    never more than there are units."""
    if workers is None and pixels < POOL_MIN_PIXELS:
        workers = 1  # a small video: rendering it here is faster than starting a pool
    return max(1, min(workers or usable_cpus(), units))


def _one_thread() -> None:
    torch.set_num_threads(1)  # one process per core: threads inside would only oversubscribe


def map_ordered(job: Job, units: list[int], workers: int) -> Iterator[list[np.ndarray] | None]:
    """render_unit over units, results in order, at most 2 * workers in flight (bounded memory).

    One worker renders in the calling process: no pool to start (see POOL_MIN_PIXELS).
    """
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
