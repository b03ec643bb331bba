"""The merge: `vda merge RUN_DIR -o OUT --format png16|png8|npy|npz|exr [--create-video]`.

Pass 1 (sequential, cheap): replay the alignment chain over the stored windows, reading only the
three outputs per window it needs, and bound the value range for quantised formats. `vda depth` runs it
ahead, in a thread that follows the workers (`follow`), and keeps it in RUN_DIR/first_pass.json.
Pass 2 (parallel over CPU processes): each task renders the frames one window makes final, from that
window and the previous one, and writes them. Memory stays at a few windows per process.
The rendering is the same code the single pass uses, so the result equals a single pass.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vda.core import stitch
from vda.core.plan import Plan, PlanError
from vda.io.rundir import RunDir
from vda.io.writers import FORMATS, LEVELS, META_NAME, DepthMeta, colorize, encode, frame_name, write_atomic, write_json
from vda.pipeline.inference import CHAIN_OUTPUTS, WindowAligner, chain_maps, upsample
from vda.system import usable_cpus

MERGED_MARKER = ".merged"
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
    pieces: tuple  # the stored pieces, in order: windows, or the first frames of stream segments
    params: dict  # window -> (scale, shift)
    video: bool


def _load(job: Job, unit: int, rows=None) -> torch.Tensor:
    path = RunDir(job.run_dir).piece(job.mode, unit)
    data = np.load(path, mmap_mode="r")
    return torch.from_numpy(np.array(data if rows is None else data[rows], dtype=np.float32))


def _contributing(n_frames: int) -> dict[int, set[int]]:
    """Window -> its outputs that reach some final frame (the rest only feed the alignment or are padding)."""
    used: dict[int, set[int]] = {}
    for f in range(n_frames):
        src = stitch.frame_source(f, n_frames)
        used.setdefault(src.w, set()).add(src.i)
        if src.weight < 1.0:
            used.setdefault(src.w - 1, set()).add(src.i + stitch.STRIDE)
    return used


FIRST_PASS_SCHEMA = 1


class FirstPass:
    """Pass 1, unit by unit in order: each window's (scale, shift), and a range that bounds every output.

    Bilinear upsampling and blending are convex combinations, so the extremes of the aligned
    network-resolution maps bound the full-resolution frames. The chain is sequential, so this pass cannot
    be split; instead it can run while the workers still compute (`follow`), and what it has done is kept
    in RUN_DIR/first_pass.json, so the merge after the last worker only does the units left.
    """

    def __init__(self, job: Job, plan: Plan):
        self.job, self.run_id, self.mode = job, plan.run_id, job.mode
        self.path = RunDir(job.run_dir).first_pass
        self.units = list(job.pieces)
        self.chain = stitch.AlignmentChain(metric=plan.settings.metric)
        self.used = _contributing(job.n_frames) if job.mode == "window" else {}
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
        return chain_maps(_load(self.job, w, CHAIN_OUTPUTS), self.job.size)

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
            scale, shift = self.chain.step(*self._chain_maps(unit))
            entry["scale"], entry["shift"] = float(scale), float(shift)
            if unit in self.used:  # the last window of a short tail can feed no output frame
                values = stitch.apply_scale_shift(_load(self.job, unit, sorted(self.used[unit])).numpy(), scale, shift)
                entry["lo"], entry["hi"] = float(values.min()), float(values.max())
        else:
            values = _load(self.job, unit).numpy()
            entry["lo"], entry["hi"] = float(values.min()), float(values.max())
        self.entries.append(entry)

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
    """Runs pass 1 of every run while the workers compute, as far as stored pieces allow, in a thread.

    Only a head start: a run whose pass fails here is left for its merge, which redoes what is missing and reports
    it. `release(run_dir)` hands a run over to its merge: it returns once the thread no longer touches that run.
    """

    def __init__(self, run_dirs: list[Path], poll_s: float = 0.5):
        self.poll_s, self._lock, self._stop = poll_s, threading.RLock(), threading.Event()
        self._runs = [Path(r) for r in run_dirs]
        self._passes: dict[Path, FirstPass] = {}
        self._thread = threading.Thread(target=self._loop, name="vda-first-pass", daemon=True)

    def __enter__(self) -> Follower:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def release(self, run_dir: Path) -> None:
        with self._lock:
            self._runs = [r for r in self._runs if r != Path(run_dir)]
            self._passes.pop(Path(run_dir), None)

    def _first_pass(self, run_dir: Path) -> FirstPass | None:
        if run_dir not in self._passes:
            try:
                plan = Plan.load(run_dir)
                self._passes[run_dir] = FirstPass(_job(plan, run_dir, run_dir, "npy", False), plan)
            except Exception:  # noqa: BLE001 - see the class docstring
                self._runs.remove(run_dir)
                return None
        return self._passes[run_dir]

    def _step(self, run_dir: Path) -> bool:
        """Step one run as far as its stored pieces allow; whether it moved."""
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
        if first.finished:
            self._runs.remove(run_dir)
            del self._passes[run_dir]
        return steps > 0

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
    started = time.perf_counter()
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    plan = Plan.load(run_dir)
    s = plan.settings
    missing = RunDir(run_dir).missing_pieces(plan)
    if missing:
        what = "window" if s.mode == "window" else "segment"
        raise PlanError(
            f"cannot merge {run_dir}: {len(missing)} {what}(s) not computed yet, from {what} {missing[0]}; "
            f"compute them with `vda depth` (or `vda work {run_dir} --device ...`) and merge again"
        )
    _refuse_foreign_output(out_dir, plan, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MERGED_MARKER).unlink(missing_ok=True)
    job = _job(plan, run_dir, out_dir, fmt, create_video)
    first = FirstPass(job, plan)
    ahead = len(first.entries)  # done by `follow` while the workers ran, or by an interrupted merge
    while not first.finished:
        first.step()
    first.save()
    params, lo, hi = first.result()
    job = Job(**{**job.__dict__, "params": params, "lo": lo, "hi": hi})
    units = first.units
    sink = (
        _VideoSink(out_dir / "depth_vis.mp4", plan.input.fps_fraction, s.frame_width, s.frame_height)
        if create_video
        else None
    )
    if workers is None and plan.frame_count * s.frame_width * s.frame_height < POOL_MIN_PIXELS:
        workers = 1  # a small video: rendering it here is faster than starting a pool
    workers = max(1, min(workers or usable_cpus(), len(units)))
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
    seconds = time.perf_counter() - started
    log(
        f"merged {plan.frame_count} frames into {out_dir} ({fmt}) in {seconds:.1f} s; "
        f"pass 1 had {ahead}/{len(units)} units done ahead"
    )
    return meta


def _job(plan: Plan, run_dir: Path, out_dir: Path, fmt: str, create_video: bool) -> Job:
    s = plan.settings
    size = (s.frame_height, s.frame_width)
    pieces = tuple(plan.all_pieces())
    return Job(str(run_dir), str(out_dir), fmt, s.mode, plan.frame_count, size, 0.0, 1.0, pieces, {}, create_video)


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
        if "libx264" in av.codecs_available:
            # A preview: veryfast encodes about twice as fast as x264's default (bench_stages.py, "colourised video").
            self.stream = self.container.add_stream("libx264", rate=fps, options={"preset": "veryfast"})
        else:
            self.stream = self.container.add_stream("mpeg4", rate=fps)
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


__all__ = ["merge", "Follower", "FirstPass", "render_unit"]
