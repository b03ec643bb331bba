"""The chunk worker: `vda run-chunk RUN_DIR --chunk K --device cuda:0|cpu`.

It computes the raw depth of its units (windows, or frame segments in stream mode) at network
resolution and stores each as `RUN_DIR/chunks/K/<unit>.npy` (temporary name, then rename) followed by
a `.done` marker. A rerun skips finished units. Progress goes to stdout as JSON lines starting with
`@progress`, which the orchestrator aggregates.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import queue
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch

from vda import stitch
from vda.inference import FrameFeed, Runtime, WindowRunner, store_dtype, stream_depths
from vda.model import load_model
from vda.plan import CHUNKS_DIR, WINDOWS_DIR, Plan, PlanError, stream_chunk_frames
from vda.video import VideoError, head_hash, read_frames, threaded
from vda.writers import write_atomic, write_json

PROGRESS_PREFIX = "@progress "
SEGMENT = 32  # frames per stored unit in stream mode
# Decoded frames held ahead of the model: a window takes its 22 new frames at once, so a shorter queue would make
# the device wait for the decoder at every window (bench_stages.py, "decode overlap"). 44 frames at 720p: 120 MB.
DECODE_AHEAD = 2 * stitch.STRIDE
# Fault injection, to rehearse failures: VDA_FAIL_AT_UNIT="K:U" fails chunk K before unit U ("U" alone: any
# chunk); VDA_FAIL_TIMES=N fails only the first N times (counted in RUN_DIR/faults/); VDA_FAIL_MODE=raise
# (an exception, exit 2), exit (exit 3), kill (SIGKILL, as the OOM killer does) or oom (torch's out-of-memory
# error, as a GPU raises it).
FAIL_ENV, FAIL_TIMES_ENV, FAIL_MODE_ENV = "VDA_FAIL_AT_UNIT", "VDA_FAIL_TIMES", "VDA_FAIL_MODE"


class InjectedFault(RuntimeError):
    pass


class DeviceOutOfMemory(RuntimeError):
    """The device ran out of memory: expected, one line naming what to lower, and not retried with the same settings.

    Retrying the same chunk on the same device with the same settings would fail the same way; the scheduler moves it
    to a device it has not tried (see EXIT_OUT_OF_MEMORY), or stops with this message.
    """


EXIT_OUT_OF_MEMORY = 4  # a worker's exit code when its device ran out of memory


def unit_name(mode: str, unit: int) -> str:
    return f"{'win' if mode == 'window' else 'seg'}_{unit:06d}"


def unit_path(run_dir: Path, chunk_index: int, mode: str, unit: int) -> Path:
    """Where a unit is stored. Windows are keyed by window alone (any split reuses them); stream segments by chunk,
    because a segment's depth depends on where its chunk starts (the warm-up)."""
    if mode == "window":
        return Path(run_dir) / WINDOWS_DIR / f"{unit_name(mode, unit)}.npy"
    return Path(run_dir) / CHUNKS_DIR / str(int(chunk_index)) / f"{unit_name(mode, unit)}.npy"


def is_done(path: Path) -> bool:
    return path.with_suffix(".done").is_file() and path.is_file()


def units_of(plan: Plan, chunk_index: int) -> list[int]:
    a, b = plan.chunks[chunk_index].units
    return list(range(a, b)) if plan.settings.mode == "window" else list(range(a, b, SEGMENT))


def unfinished_units(plan: Plan, run_dir: Path, chunk_index: int) -> list[int]:
    """Units of a chunk without a finished file and marker, in order."""
    mode = plan.settings.mode
    return [u for u in units_of(plan, chunk_index) if not is_done(unit_path(run_dir, chunk_index, mode, u))]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def verify_input(plan: Plan, input_path: str | None) -> None:
    """Refuse to mix results: the input must be the one that was planned."""
    path = Path(input_path or plan.input.path)
    if not path.exists():
        raise VideoError(f"input {path} not found; it was planned as {plan.input.path}")
    size = path.stat().st_size if path.is_file() else None
    if (size is not None and size != plan.input.size_bytes) or head_hash(path) != plan.input.head_sha256:
        raise PlanError(f"input {path} changed since it was planned; plan again into a new run folder")
    plan.input.path = str(path)


def verify_checkpoint(plan: Plan, checkpoint: Path) -> None:
    if file_sha256(checkpoint) != plan.settings.checkpoint_sha256:
        raise PlanError(f"checkpoint {checkpoint} differs from the one planned; plan again into a new run folder")


def progress(**fields) -> None:
    print(PROGRESS_PREFIX + json.dumps(fields), flush=True)


def _maybe_fail(run_dir: Path, chunk_index: int, unit: int) -> None:
    spec = os.environ.get(FAIL_ENV, "")
    if not spec:
        return
    k, _, u = spec.rpartition(":")
    if int(u) != unit or (k and int(k) != chunk_index):
        return
    counter = run_dir / "faults" / f"chunk{chunk_index}_unit{unit}"
    counter.parent.mkdir(exist_ok=True)
    fired = int(counter.read_text() or 0) if counter.exists() else 0
    if FAIL_TIMES_ENV in os.environ and fired >= int(os.environ[FAIL_TIMES_ENV]):
        return
    counter.write_text(str(fired + 1))
    mode = os.environ.get(FAIL_MODE_ENV, "raise")
    print(f"injecting fault ({FAIL_ENV}={spec}, {mode}) at chunk {chunk_index}, unit {unit}", flush=True)
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "exit":
        os._exit(3)
    if mode == "oom":
        raise torch.OutOfMemoryError(f"CUDA out of memory (injected by {FAIL_ENV}={spec})")
    raise InjectedFault(f"injected fault ({FAIL_ENV}={spec}) at chunk {chunk_index}, unit {unit}")


def copy_done_event(device: torch.device, cuda=torch.cuda):
    """A blocking CUDA event after the work queued so far on `device`'s current stream.

    A copy from a tensor on cuda:K is queued on cuda:K's current stream, whatever the current device is; an event
    recorded on the current device's stream (cuda:0 unless someone called set_device) could complete before the copy
    lands, and the store thread would read a half-filled buffer: silent garbage on every GPU but the first. Blocking,
    so that waiting for it sleeps instead of spinning a core. `cuda` is torch.cuda; tests pass a fake (no GPU on CI).
    """
    event = cuda.Event(blocking=True)
    event.record(cuda.current_stream(device))
    return event


def _to_host(depth: torch.Tensor, precision: str) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """Start the copy of a unit to host memory without waiting for it; the event marks its end on CUDA.

    Units are stored in `store_dtype(precision)`: float16 for fp16 runs, float32 otherwise.
    """
    depth = depth.to(store_dtype(precision))
    if depth.device.type != "cuda":
        return depth, None
    host = torch.empty(depth.shape, dtype=depth.dtype, pin_memory=True)
    host.copy_(depth, non_blocking=True)
    return host, copy_done_event(depth.device)


def _store(path: Path, host: torch.Tensor, event, started: float, unit: int) -> None:
    if event is not None:
        event.synchronize()
    array = host.numpy()
    buf = io.BytesIO()
    np.save(buf, array)
    write_atomic(path, buf.getvalue())
    write_json(
        path.with_suffix(".done"),
        {
            "unit": unit,
            "seconds": round(time.time() - started, 3),
            "shape": list(array.shape),
            "dtype": str(array.dtype),
        },
    )


class UnitStore:
    """Stores units in a background thread, in submission order, so the device never waits on the disk.

    At most `depth` units wait in host memory. An error in the thread (a full disk) re-raises in the caller
    at its next submit or at exit. Units submitted before an error or interrupt are still written on exit:
    they are finished work a rerun would otherwise redo.
    """

    def __init__(self, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None  # stays set: no unit after a failed one is written
        self._reported = False
        self._thread = threading.Thread(target=self._drain, name="vda-store", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while (job := self._queue.get()) is not None:
            if self._error is None:
                try:
                    job()
                except BaseException as err:  # handed to the caller, which re-raises it
                    self._error = err

    def _raise_pending(self) -> None:
        if self._error is not None and not self._reported:
            self._reported = True
            raise self._error

    def submit(self, job) -> None:
        self._raise_pending()
        self._queue.put(job)

    def __enter__(self) -> UnitStore:
        return self

    def __exit__(self, *exc) -> None:
        self._queue.put(None)
        self._thread.join()
        if exc[0] is None:
            self._raise_pending()


def _out_of_memory(s, runtime: Runtime, doing: str) -> DeviceOutOfMemory:
    """The one line for an OOM. It does not name the device: an isolated worker sees its GPU as cuda:0, and the
    scheduler, which knows which GPU that is, names it."""
    return DeviceOutOfMemory(
        f"the GPU ran out of memory {doing} {s.encoder} at input size {s.input_size} ({s.net_width}x{s.net_height}) "
        f"with micro-batch {runtime.micro_batch} in {runtime.precision}; lower --micro-batch "
        f"(e.g. {max(1, runtime.micro_batch // 2)}), --input-size or --max-res, or use a GPU with more memory"
    )


def run_chunk(
    run_dir: str | Path,
    chunk_index: int,
    *,
    device: str | None = None,
    checkpoint: str | None = None,
    input_path: str | None = None,
    micro_batch: int | None = None,
    compile: bool = False,
) -> int:
    """Compute chunk `chunk_index` of the plan in run_dir; returns the number of units computed now."""
    from models import resolve

    run_dir = Path(run_dir)
    plan = Plan.load(run_dir)
    if not 0 <= chunk_index < len(plan.chunks):
        raise PlanError(f"chunk {chunk_index} does not exist; the plan has chunks 0..{len(plan.chunks) - 1}")
    chunk, s = plan.chunks[chunk_index], plan.settings
    verify_input(plan, input_path)
    units = units_of(plan, chunk_index)
    todo = unfinished_units(plan, run_dir, chunk_index)
    progress(chunk=chunk_index, done=len(units) - len(todo), total=len(units), event="start")
    if not todo:
        return 0
    ckpt = resolve(s.encoder, s.metric, checkpoint or os.environ.get("VDA_CHECKPOINT") or None)
    verify_checkpoint(plan, ckpt)
    runtime = Runtime.create(device or chunk.device, s.precision, micro_batch, compile)  # "auto": fp16 on GPUs
    try:
        model = load_model(ckpt, encoder=s.encoder, metric=s.metric, device=runtime.device)
    except torch.OutOfMemoryError:
        raise _out_of_memory(s, runtime, "loading the weights") from None
    unit_path(run_dir, chunk_index, s.mode, todo[0]).parent.mkdir(parents=True, exist_ok=True)
    shape, size = (s.net_height, s.net_width), (s.frame_width, s.frame_height)
    n = plan.frame_count
    first = todo[0]
    if s.mode == "window":
        # Any windows may be finished (a rerun on another split keeps them all): decode what the others read.
        wanted = sorted({i for w in todo for i in stitch.window_inputs(w, n)})
    else:  # a chunk's segments run in order, so its finished ones are a prefix: restart at the first unfinished
        decode = stream_chunk_frames((first, chunk.units[1]), plan.extra.get("stream_warmup", 0))
        wanted = (i for a, b in decode for i in range(a, b))
    frames = threaded(read_frames(plan.input, wanted, size), DECODE_AHEAD)
    done = len(units) - len(todo)
    recomputed: list[int] = []  # windows (or frames) recomputed in fp32 because fp16/bf16 gave NaN or inf

    def save(unit: int, depth: torch.Tensor, started: float, final_frames: int, fresh: int) -> None:
        host, event = _to_host(depth, "fp32" if fresh else runtime.precision)  # a recomputed unit stays fp32
        if fresh:
            print(f"unit {unit}: depth not finite in {runtime.precision}; recomputed in fp32", flush=True)

        def job():
            nonlocal done
            _store(unit_path(run_dir, chunk_index, s.mode, unit), host, event, started, unit)
            done += 1
            fields = {"frames": final_frames, "event": "unit", "fp32_recomputes": fresh}
            progress(chunk=chunk_index, done=done, total=len(units), **fields)

        store.submit(job)

    try:
        with UnitStore() as store:
            if s.mode == "window":
                feed, runner = FrameFeed(frames, total=n), WindowRunner(model, runtime, shape)
                recomputed = runner.recomputed
                for w in todo:
                    started, before = time.time(), len(recomputed)
                    _maybe_fail(run_dir, chunk_index, w)
                    depth = runner.run(w, feed, n)
                    save(w, depth, started, len(stitch.window_outputs(w, n)), len(recomputed) - before)
            else:
                segment, seg_start, started, before = [], first, time.time(), 0
                for i, depth in stream_depths(model, runtime, frames, shape, recomputed):
                    if i < first:
                        before = len(recomputed)  # recomputes in the warm-up belong to no unit of this chunk
                        continue
                    segment.append(depth)
                    if len(segment) == SEGMENT or i == chunk.units[1] - 1:
                        _maybe_fail(run_dir, chunk_index, seg_start)
                        save(seg_start, torch.stack(segment), started, len(segment), len(recomputed) - before)
                        segment, seg_start, started, before = [], i + 1, time.time(), len(recomputed)
    except torch.OutOfMemoryError:
        raise _out_of_memory(s, runtime, "running") from None
    return len(todo)
