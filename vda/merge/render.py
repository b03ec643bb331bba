"""Pass 2 of the merge: render the frames each unit makes final, and write them, on a pool of CPU processes.

A task renders one unit's frames from that window and the previous one (or from one stream segment), so memory stays
at a few windows per process. The rendering is the same code the single pass uses, so the result equals a single pass.
Results come back in unit order, whatever the number of processes, so the caller's sinks see the frames in order.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import dataclasses
import multiprocessing as mp
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from vda.core import stitch
from vda.core.align import WindowAligner, upsample
from vda.core.plan import Plan
from vda.io.rundir import RunDir
from vda.io.writers import colorize
from vda.merge.sinks import frame_writer
from vda.system import keep_freed_memory, limit_threads, usable_cpus

# A pool of spawned render processes takes seconds to start (each imports torch): 5.7 s against 0.07 s for rendering a
# 100-frame 128x72 video in the calling process (bench_queue.py, on a loaded 2-core machine). At about 40 png16 1080p
# frames/s per core (bench/bench_stages.py), 120 frames at 1080p are 3 s of work: below that the default is one process.
POOL_MIN_PIXELS = 120 * 1920 * 1080


@dataclasses.dataclass(frozen=True)
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
    out_size: tuple[int, int] | None = None  # (H, W) written (--output-size); None: `size`, the frame's
    quant: tuple[float, float] | None = None  # the png range of the files (a fixed --png-scale); None: (lo, hi)

    def for_unit(self, unit: int) -> Job:
        """This job as one render task needs it: the (scale, shift) of the two windows it reads, not every window's,
        and no list of pieces; a task is pickled for its process, and an hour's 4,500 windows would make each task
        carry them all."""
        params = {w: self.params[w] for w in (unit - 1, unit) if w in self.params}
        return dataclasses.replace(self, pieces=(), params=params)

    @property
    def render_size(self) -> tuple[int, int]:
        """(H, W) of the maps written; the alignment is fitted at `size` whatever this is, so every output size
        holds the same depth, resampled."""
        return self.out_size or self.size


def job_for(plan: Plan, run_dir: Path, out_dir: Path, fmt: str, create_video: bool) -> Job:
    """The job of merging `plan`, before pass 1: no alignment yet, and the [0, 1] range as a placeholder."""
    s = plan.settings
    size = (s.frame_height, s.frame_width)
    pieces = tuple(plan.all_pieces())
    return Job(str(run_dir), str(out_dir), fmt, s.mode, plan.frame_count, size, 0.0, 1.0, pieces, {}, create_video)


def load_piece(job: Job, unit: int, rows: list[int] | None = None, widen: bool = True) -> torch.Tensor:
    """A stored piece, or only its outputs `rows`: read through a memory map, so only those are read. As float32, or
    with `widen=False` as stored (fp16 from a GPU run), for a caller that widens one row at a time (the renderer:
    a row is 1.9 MB at 518x924, which the allocator reuses, where a whole window's 46 MB is mapped and faulted in
    afresh each time)."""
    path = RunDir(job.run_dir).piece(job.mode, unit)
    data = np.load(path, mmap_mode="r")
    picked = torch.from_numpy(np.array(data) if rows is None else np.asarray(data[rows]))  # a fancy index copies
    return picked.float() if widen else picked


def _rendered(job: Job, unit: int) -> Iterable[tuple[int, np.ndarray]]:
    """(frame index, full-resolution depth) for each frame `unit` makes final, aligned by pass 1's (scale, shift)."""
    if job.mode == "window":
        aligner = WindowAligner(job.render_size)
        # only the rows of w-1 that w's frames blend with (the 8 overlap rows), not the whole previous window
        for w, rows in sorted(stitch.rows_of(stitch.window_outputs(unit, job.n_frames), job.n_frames).items()):
            rows = sorted(rows)
            scale, shift = job.params[w]
            aligner.add(w, load_piece(job, w, rows, widen=False), np.float32(scale), np.float32(shift), rows)
        return aligner.frames(unit, job.n_frames)
    raw = load_piece(job, unit, widen=False)  # a frame at a time: never the segment at full resolution at once
    return ((unit + k, upsample(raw[k : k + 1], job.render_size)[0].numpy()) for k in range(len(raw)))


def render_unit(job: Job, unit: int) -> list[np.ndarray] | None:
    """Write the frames `unit` makes final; return them colourised when a video is wanted.

    The frame files are written here, in the render process, so encoding runs on every core; the video has one
    encoder, fed in order by the caller, which gets the colourised frames (also made here, in parallel).
    """
    files = frame_writer(Path(job.out_dir), job.fmt, *(job.quant or (job.lo, job.hi)), job.n_frames)
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


# Render processes run at this lower priority (nice): they take the cores the workers' decoders leave idle, and never
# slow those decoders down while the devices compute; after the last unit they have every core to themselves.
RENDER_NICE = 10


def _render_process() -> None:
    """A render process: one thread (one process per core: threads inside would only oversubscribe), low priority."""
    limit_threads(1)
    keep_freed_memory()
    os.nice(RENDER_NICE)


class RenderPool:
    """The render processes, started once and shared by every merge this process runs (a batch's videos): spawning
    a pool per video costs seconds each (each process imports torch) and 260 MB per process while it lives."""

    def __init__(self):
        self._pool: cf.ProcessPoolExecutor | None = None
        self._size = 0
        self._lock = threading.Lock()

    def get(self, workers: int) -> cf.ProcessPoolExecutor:
        """The pool, with at least `workers` processes (a larger request replaces a smaller pool)."""
        with self._lock:
            if self._pool is None or self._size < workers:
                if self._pool is not None:
                    self._pool.shutdown()
                context = mp.get_context("spawn")
                self._pool = cf.ProcessPoolExecutor(workers, mp_context=context, initializer=_render_process)
                self._size = workers
            return self._pool

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(cancel_futures=True)
            self._pool, self._size = None, 0


POOL = RenderPool()  # this process's; `vda depth` closes it when the batch is done
atexit.register(POOL.close)


def map_ordered(job: Job, units: list[int], workers: int) -> Iterator[list[np.ndarray] | None]:
    """render_unit over units, results in order, at most 2 * workers in flight (bounded memory), on `workers`
    processes of the shared pool (POOL).

    One worker renders in the calling process: no pool to start (see POOL_MIN_PIXELS).
    """
    if workers == 1:
        for u in units:
            yield render_unit(job, u)
        return
    pool = POOL.get(workers)
    pending: dict[int, cf.Future] = {}
    nxt = 0
    try:
        for u in units:
            while len(pending) >= 2 * workers:
                yield pending.pop(units[nxt]).result()
                nxt += 1
            pending[u] = pool.submit(render_unit, job.for_unit(u), u)
        while nxt < len(units):
            yield pending.pop(units[nxt]).result()
            nxt += 1
    finally:
        for future in pending.values():  # a failed or abandoned merge leaves no task behind in the shared pool
            future.cancel()
