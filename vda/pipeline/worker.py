"""The device worker: `vda work --device cuda:0|cpu`, one long-lived process (or container) per device.

It loads the model once, then computes the units the host hands it, one at a time, until told to stop: the host
sends `Assign` lines on stdin, the worker answers with `Ready`, `Done` and `Failed` lines on stdout (vda.events).
A unit's raw depth, at network resolution, is stored piece by piece in its video's run folder (vda.io.rundir): under a
temporary name, renamed, then a `.done` marker. Stores run in a background thread while the next unit computes.

A unit always starts from its own first window (or its warm-up, in stream mode), whichever worker computed the units
before it, so its depth depends on the video and the settings only: any split, any device count, any retry gives the
same bits at one thread. A unit's failure (an unreadable frame, out of memory) is reported and the worker goes on
with the next one; anything else ends the worker, and the host hands its unit to another.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vda import config, events
from vda.core import stitch
from vda.core.plan import SEGMENT, Plan, PlanError, Unit
from vda.errors import OutOfMemory, RunError
from vda.io.rundir import RunDir
from vda.io.video import (
    NOT_FOUND,
    FrameSource,
    Prefetch,
    VideoError,
    check_frame_count,
    identity_mismatch,
    read_frames,
    threaded,
)
from vda.io.writers import atomic_file, write_json
from vda.model.network import load_model
from vda.pipeline.compat import free_device_memory, out_of_memory_error
from vda.pipeline.inference import (
    STAGES,
    FrameError,
    FrameFeed,
    NonFiniteDepth,
    PrecisionGuard,
    Runtime,
    StageClock,
    WindowRunner,
    copy_done_event,
    launch_settled,
    pinned_empty,
    resolve_precision,
    store_dtype,
    stream_depths,
)
from vda.pipeline.simulate import SimulatedDevice, SimulatedWindows, simulated_stream

# Decoded frames held ahead of the model: a window takes its 22 new frames at once, so a shorter queue would make
# the device wait for the decoder at every window (bench_stages.py, "decode overlap"). 44 frames at 720p: 120 MB.
DECODE_AHEAD = 2 * stitch.STRIDE
# Frames a unit reads again from the previous unit's decode: the keyframe of its first window's predecessor, at most
# 20 frames back from that unit's last (the keyframe at (w-1)*22+12, the last decoded (w-1)*22+31), and the overlap.
REREAD = stitch.WINDOW - 1 - stitch.KEYFRAME + 1
PREFETCH_WAIT_S = 0.05  # how long a worker waits for its next unit before it computes without decoding it ahead
OOM_ERROR = out_of_memory_error()  # torch.OutOfMemoryError, or torch.cuda's on an older torch (vda.pipeline.compat)


class InjectedFault(RunError):
    """A failure injected on purpose (VDA_FAIL_*), to rehearse what the host does with a real one."""


class DeviceOutOfMemory(OutOfMemory):
    """The device ran out of memory: expected, one line naming what to lower, and not retried with the same settings.

    The worker first retries the unit once itself with half the micro-batch (DeviceWorker._compute); when that fails
    too, retrying on the same device would fail the same way: the worker reports it as device-bound (events.Failed),
    and the queue hands the unit to a device that has not tried it, or gives it up.
    """


class ModelOutOfMemory(DeviceOutOfMemory):
    """The model itself did not fit (vitl on two workers of one GPU): the worker reports it (events.Failed, retire)
    and exits, and the queue retires its device, since every unit it is handed would fail alike."""


# What fails a unit and not the worker: the worker reports it (events.Failed) and goes on with the next unit.
UNIT_ERRORS = (VideoError, FrameError, PlanError, NonFiniteDepth, InjectedFault, DeviceOutOfMemory)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def verify_input(plan: Plan, input_path: str | None) -> None:
    """Refuse to mix results: the input must be the one that was planned."""
    path = Path(input_path or plan.input.path)
    why = identity_mismatch(path, plan.input)
    if why == NOT_FOUND:
        raise VideoError(f"input {path} not found; it was planned as {plan.input.path}")
    if why:
        raise PlanError(f"input {path} changed since it was planned ({why}); plan again into a new run folder")
    plan.input.path = str(path)


def verify_simulation(plan: Plan) -> None:
    """A simulated device's pieces are no depth: a run planned under simulation is computed only under it, and the
    other way round, so that one never resumes the other's pieces."""
    simulating = config.current().faults.simulate_ms is not None
    if plan.settings.simulated != simulating:
        planned = "with" if plan.settings.simulated else "without"
        raise PlanError(
            f"this run was planned {planned} {config.SIMULATE_ENV} and this worker runs "
            f"{'with' if simulating else 'without'} it; use the same setting, or plan again into a new run folder"
        )


def verify_checkpoint(plan: Plan, checkpoint: Path) -> None:
    if file_sha256(checkpoint) != plan.settings.checkpoint_sha256:
        raise PlanError(f"checkpoint {checkpoint} differs from the one planned; plan again into a new run folder")


def _to_host(depth: torch.Tensor, precision: str) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """Start the copy of a unit to host memory without waiting for it; the event marks its end on CUDA (and that of
    every copy queued before it on that stream: `_extremes_to_host`).

    Units are stored in `store_dtype(precision)`: float16 for fp16 runs, float32 otherwise.
    """
    depth = depth.to(store_dtype(precision))
    if depth.device.type != "cuda":
        return depth, None
    host = pinned_empty(depth.shape, depth.dtype)
    host.copy_(depth, non_blocking=True)
    return host, copy_done_event(depth.device)


def _extremes_to_host(depth: torch.Tensor, precision: str) -> torch.Tensor:
    """A piece's per-row raw [min, max] ([k, 2], in its stored dtype), taken on the device and copied without waiting:
    queue it before the piece's own copy (`_to_host`), whose event then covers it.

    Taken before the cast to the stored dtype: rounding is monotone, so the cast of a row's extreme is exactly the
    extreme of the cast row. The merge's pass 1 then reads a window's range from its marker, not from the piece.
    """
    flat = depth.detach().flatten(1)
    rows = torch.stack((flat.amin(dim=1), flat.amax(dim=1)), dim=1).to(store_dtype(precision))
    if rows.device.type != "cuda":
        return rows
    host = pinned_empty(rows.shape, rows.dtype)
    return host.copy_(rows, non_blocking=True)


def _stage(depth: torch.Tensor, precision: str) -> tuple[torch.Tensor, torch.Tensor, object]:
    """Queue a piece's copies to the host without waiting: its per-row extremes, then the piece, whose event covers
    both. The runner calls it as it launches a window (WindowRunner.launch), before the next window is queued."""
    rows = _extremes_to_host(depth, precision)
    host, event = _to_host(depth, precision)
    return rows, host, event


def row_range(array: np.ndarray) -> np.ndarray:
    """Per-row [min, max] of a piece ([k, h, w]) as [k, 2]: what a store without the device's extremes records."""
    flat = array.reshape(len(array), -1)
    return np.stack((flat.min(axis=1), flat.max(axis=1)), axis=1)


def write_piece(path: Path, array: np.ndarray, piece: int, seconds: float, rows: np.ndarray | None = None) -> None:
    """Store one piece in its run folder: the array under a temporary name, fsynced and renamed, then its `.done`
    marker, which records the shape, the dtype and each row's raw [min, max] (`rows`, computed here when not given).

    The array goes from its buffer to the file (numpy writes a contiguous array with one write, no copy). The fsync
    before the marker means a marker never vouches for data a crash lost; a piece that is damaged all the same
    (its size or header not the marker's) counts as not stored and is recomputed (RunDir.is_stored).
    The one writer of pieces: a worker's default store, and the Ray driver's for pieces that came back through the
    object store (vda.orchestrator.backends.ray), so both leave the same files.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, durable=True) as fh:
        np.lib.format.write_array(fh, np.ascontiguousarray(array), allow_pickle=False)
    rows = row_range(array) if rows is None else rows
    write_json(
        path.with_suffix(".done"),
        {
            "piece": piece,
            "seconds": seconds,
            "shape": list(array.shape),
            "dtype": str(array.dtype),
            "rows": [[float(lo), float(hi)] for lo, hi in np.asarray(rows)],
        },
    )


# Where a worker's pieces go: (path in the run folder, array, piece index, seconds since the unit began, per-row raw
# [min, max]).
PieceStore = Callable[[Path, np.ndarray, int, float, np.ndarray | None], None]


def _store(
    path: Path,
    host: torch.Tensor,
    event,
    started: float,
    piece: int,
    store: PieceStore = write_piece,
    rows: torch.Tensor | None = None,
) -> None:
    """Store a piece once its copy to the host (and that of its `rows`, `_extremes_to_host`) has landed."""
    if event is not None:
        event.synchronize()
    store(path, host.numpy(), piece, round(time.time() - started, 3), None if rows is None else rows.numpy())


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

    def raise_pending(self) -> None:
        if self._error is not None and not self._reported:
            self._reported = True
            raise self._error

    def submit(self, job) -> None:
        self.raise_pending()
        self._queue.put(job)

    def __enter__(self) -> UnitStore:
        return self

    def __exit__(self, *exc) -> None:
        self._queue.put(None)
        self._thread.join()
        if exc[0] is None:
            self.raise_pending()


def _out_of_memory(s, runtime: Runtime, doing: str) -> DeviceOutOfMemory:
    """The one line for an OOM. It does not name the device: an isolated worker sees its GPU as cuda:0, and the
    queue, which knows which GPU that is, names it."""
    mb = runtime.micro_batch
    lower = f"--micro-batch (e.g. {max(1, mb // 2)}), --input-size" if mb > 1 else "--input-size"
    return DeviceOutOfMemory(
        f"the GPU ran out of memory {doing} {s.encoder} at input size {s.input_size} ({s.net_width}x{s.net_height}) "
        f"with micro-batch {mb} in {runtime.precision}; lower {lower} or --max-res, or use a GPU with more memory"
    )


def _maybe_fail(run: RunDir, video: str, unit: int) -> None:
    """Fault injection (vda.config.Faults): rehearses what the queue does when a unit or a worker fails."""
    faults = config.current().faults
    spec = faults.at_unit
    if not spec:
        return
    name, _, u = spec.rpartition(":")
    if int(u) != unit or (name and name != video):
        return
    counter = run.fault_counter(f"unit{unit}")
    counter.parent.mkdir(parents=True, exist_ok=True)
    fired = int(counter.read_text() or 0) if counter.exists() else 0
    if faults.times is not None and fired >= faults.times:
        return
    counter.write_text(str(fired + 1))
    mode = faults.mode or "raise"
    say(f"injecting fault ({config.FAIL_ENV}={spec}, {mode}) at {video}, unit {unit}")
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "exit":
        os._exit(3)
    if mode == "oom":
        raise OOM_ERROR(f"CUDA out of memory (injected by {config.FAIL_ENV}={spec})")
    raise InjectedFault(f"injected fault ({config.FAIL_ENV}={spec}) at {video}, unit {unit}")


@dataclass
class _Video:
    """What a worker keeps per video between its units: the plan, read and verified once."""

    plan: Plan
    run: RunDir


@dataclass
class DeviceWorker:
    """One device's worker: the model, loaded once, and the store thread, shared by every unit it computes.

    `emit` sends a message to the host (events); it may be called from the store thread, so it must be thread-safe.
    """

    device: str
    emit: Callable[[events.Message], None]
    checkpoint: str | None = None  # default: the plan's, resolved through models/
    micro_batch: int | None = None
    compile: bool = False
    slot: int = 0
    # Where pieces go, plans come from and stored pieces are looked up: the run folder by default. A Ray actor sends
    # pieces back to the driver, gets plans from it and computes every piece of a unit it is given (the driver only
    # hands out unfinished units), so that no node but the driver's reads or writes the run folder.
    store_piece: PieceStore = write_piece
    load_plan: Callable[[str], Plan] = Plan.load
    unfinished: Callable[[RunDir, Plan, Unit], list[int]] = RunDir.unfinished_pieces
    source: FrameSource = field(default_factory=lambda: FrameSource(keep=REREAD))  # decoders kept from unit to unit
    # Shared by every unit: fp32 recomputes in a row (after FP32_AFTER the worker computes in fp32), and the stage
    # times of `vda work` (VDA_STAGE_TIMES, read by gpu_check.py).
    guard: PrecisionGuard = field(default_factory=PrecisionGuard)
    clock: StageClock = field(default_factory=StageClock)
    cuda: object = torch.cuda  # tests pass a fake (no GPU here)
    _videos: dict[str, _Video] = field(default_factory=dict)
    _models: dict[tuple, tuple] = field(default_factory=dict)  # (encoder, metric, sha, precision) -> (model, runtime)
    _switch_said: bool = False

    def serve(self, lines: Iterable[str]) -> None:
        """Compute every unit assigned on `lines` until Stop or the end of input; stores finish before it returns.

        The worker asks for its next unit (Ready) as it starts computing one, and starts that unit's decoder as soon as
        it is assigned: the seek to a unit's first frame (up to a GOP of decoding, 0.66 s at 1080p with 250-frame GOPs,
        bench_queue.py) then overlaps the current unit's compute instead of idling the device.
        """
        inbox: queue.Queue = queue.Queue()
        threading.Thread(target=_read_messages, args=(lines, inbox), name="vda-inbox", daemon=True).start()
        with UnitStore() as self.store:
            self.emit(events.Ready(os.getpid()))
            task = self._wait(inbox)
            ahead = self._decode_ahead(task)
            while isinstance(task, events.Assign):
                self.emit(events.Ready(os.getpid()))
                try:
                    following = inbox.get(timeout=PREFETCH_WAIT_S)
                except queue.Empty:
                    following = None
                following_ahead = self._decode_ahead(following)
                self.run(task, ahead)
                if following is None:
                    following = self._wait(inbox)
                    following_ahead = self._decode_ahead(following)
                task, ahead = following, following_ahead

    def _wait(self, inbox: queue.Queue):
        """The next message; while waiting, a failed store (a full disk) ends the worker at once with its error, so
        that the host, which waits for that unit's Done, hears of it and gives the unit to another worker."""
        while True:
            self.store.raise_pending()
            try:
                return inbox.get(timeout=0.5)
            except queue.Empty:
                continue

    def _decode_ahead(self, task) -> Prefetch | None:
        """Start decoding an assigned unit's frames now; None when there is nothing to decode (or it cannot be: the
        unit then fails in `run`, with the reason)."""
        if not isinstance(task, events.Assign):
            return None
        try:
            video = self._video(task)
            unit = video.plan.units[task.unit]
            if not self.unfinished(video.run, video.plan, unit):
                return None
            return _frames(video.plan, unit, self.source)
        except (*UNIT_ERRORS, IndexError):
            return None

    def run(self, task: events.Assign, frames: Prefetch | None = None) -> None:
        """Compute one unit; a unit error (UNIT_ERRORS) is reported as Failed, anything else ends the worker."""
        try:
            self._compute(task, frames)
        except ModelOutOfMemory as err:  # every unit would fail alike: say so, and end the worker
            self.emit(events.Failed(task.video, task.unit, str(err).strip(), False, retire=True))
            raise
        except UNIT_ERRORS as err:
            device_bound = isinstance(err, DeviceOutOfMemory)
            self.emit(events.Failed(task.video, task.unit, str(err).strip(), device_bound))
        finally:
            if frames is not None:
                frames.close()

    def _video(self, task: events.Assign) -> _Video:
        if task.run_dir not in self._videos:
            plan = self.load_plan(task.run_dir)
            verify_input(plan, task.input)
            verify_simulation(plan)
            self._videos[task.run_dir] = _Video(plan, RunDir(task.run_dir))
        return self._videos[task.run_dir]

    def _model(self, plan: Plan, micro_batch: int = 0) -> tuple[torch.nn.Module, Runtime]:
        """The plan's model and runtime, loaded once; `micro_batch` is the one that worked here after an out of memory
        (from the queue: a restarted worker keeps it)."""
        from vda.model.registry import resolve

        s = plan.settings
        key = (s.encoder, s.metric, s.checkpoint_sha256, s.precision)
        simulate_ms = config.current().faults.simulate_ms
        if simulate_ms is not None and key not in self._models:  # no model, no CUDA: the host is what is measured
            # it stands for a GPU, so it stores what a GPU run stores (float16 at auto), whatever device it names
            runtime = Runtime(torch.device(self.device), resolve_precision(s.precision, "cuda"), self.micro_batch)
            self._models = {key: (SimulatedDevice(simulate_ms), runtime)}
        if key not in self._models:
            ckpt = resolve(s.encoder, s.metric, self.checkpoint)
            verify_checkpoint(plan, ckpt)
            runtime = Runtime.create(self.device, s.precision, self.micro_batch, self.compile)  # auto: fp16 on GPUs
            try:
                model = load_model(ckpt, encoder=s.encoder, metric=s.metric, device=runtime.device)
            except OOM_ERROR:
                free_device_memory(runtime.device, self.cuda)
                raise ModelOutOfMemory(
                    f"the GPU ran out of memory loading the {s.encoder} weights, before any unit; this device takes no "
                    "more work: run fewer workers per GPU, a smaller --encoder, or use a GPU with more memory"
                ) from None
            self._models = {key: (model, runtime)}  # one model per device: a new one replaces the old
        model, runtime = self._models[key]
        if 0 < micro_batch < runtime.micro_batch:
            self.micro_batch, runtime = micro_batch, runtime.with_micro_batch(micro_batch)
            self._models[key] = (model, runtime)
        return model, runtime

    def _compute(self, task: events.Assign, frames: Prefetch | None) -> None:
        """One unit. Out of memory: the device's cached blocks are freed and the unit is retried here once with half
        the micro-batch (down to 1), which the worker then keeps; only if that fails too does the unit move on."""
        video = self._video(task)
        plan, run, s = video.plan, video.run, video.plan.settings
        if not 0 <= task.unit < len(plan.units):
            raise PlanError(f"{task.video} has units 0..{len(plan.units) - 1}, not {task.unit}; plan again")
        unit = plan.units[task.unit]
        started = time.time()
        todo = set(self.unfinished(run, plan, unit))
        if not todo:  # stored by an earlier run or attempt
            self.emit(events.Done(task.video, unit.index, unit.produced_frames, 0, 0.0))
            return
        time.sleep(config.current().faults.delay_of(self.slot))
        model, runtime = self._model(plan, task.micro_batch)
        try:
            recomputed = self._attempt(task, video, model, runtime, todo, started, frames)
        except OOM_ERROR:
            free_device_memory(runtime.device, self.cuda)
            if runtime.micro_batch <= 1:
                raise _out_of_memory(s, runtime, "running") from None
            half = max(1, runtime.micro_batch // 2)
            say(
                f"{task.video} unit {unit.index}: out of memory at micro-batch {runtime.micro_batch}; "
                f"retrying here at {half}"
            )
            model, runtime = self._model(plan, half)
            try:
                recomputed = self._attempt(task, video, model, runtime, todo, started, None)
            except OOM_ERROR:
                free_device_memory(runtime.device, self.cuda)
                raise _out_of_memory(s, runtime, "running") from None
        switch = self.guard.switched if self.guard.switched and not self._switch_said else ""
        self._switch_said = self._switch_said or bool(switch)
        done = events.Done(
            task.video, unit.index, unit.produced_frames, unit.computed_frames, 0.0, recomputed, runtime.micro_batch,
            switch,
        )  # fmt: skip
        self.store.submit(lambda: self.emit(_stamped(done, started)))

    def _attempt(self, task, video: _Video, model, runtime: Runtime, todo: set[int], started: float, frames) -> int:
        """Compute the unit's pieces still in `todo` (each leaves it as it is handed to the store); the number of fp32
        recomputes. An out of memory propagates, so that `_compute` can retry."""
        plan, run = video.plan, video.run
        unit = plan.units[task.unit]
        recomputed: list[int] = []  # windows (or frames) recomputed in fp32 because fp16/bf16 gave NaN or inf
        frames = frames or _frames(plan, unit)
        try:
            _maybe_fail(run, task.video, unit.index)
        except BaseException:
            frames.close()
            raise

        def save(piece: int, depth: torch.Tensor, fresh: int, staged: tuple | None = None) -> None:
            if piece not in todo:
                return
            todo.discard(piece)
            stored = "fp32" if fresh or self.guard.switched else runtime.precision  # recomputed pieces stay fp32
            rows, host, event = staged or _stage(depth, stored)
            if fresh:
                say(f"{task.video} piece {piece}: depth not finite in {runtime.precision}; recomputed in fp32")
            path = run.piece(plan.settings.mode, piece)
            self.store.submit(lambda: _store(path, host, event, started, piece, self.store_piece, rows))

        count_check = _Checked(check_frame_count, plan.input) if unit.index == len(plan.units) - 1 else None
        try:
            _compute_unit(plan, unit, model, runtime, save, recomputed, frames, self.guard, self.clock)
        except (VideoError, FrameError):
            if count_check is not None:  # a video shorter than planned: the count, not the decoder, is what failed
                count_check.result()
            raise
        if count_check is not None:
            count_check.result()  # a count from packets that decoding contradicts fails the video (FrameCountMismatch)
        return len(recomputed)


class _Checked:
    """A check run in a thread beside the unit's compute (it decodes, on the host's cores, while the device works)."""

    def __init__(self, check: Callable, *args):
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(check, args), name="vda-check", daemon=True)
        self._thread.start()

    def _run(self, check: Callable, args: tuple) -> None:
        try:
            check(*args)
        except BaseException as err:  # handed to result(), which re-raises it
            self._error = err

    def result(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error


def _stamped(done: events.Done, started: float) -> events.Done:
    """The Done message with the unit's time, taken when its last piece is stored."""
    return dataclasses.replace(done, seconds=round(time.time() - started, 3))


def _frames(plan: Plan, unit: Unit, source: FrameSource | None = None) -> Prefetch:
    """A unit's frames, decoded in a thread that starts now.

    From `source` (once its decoder of the video is free, see FrameSource) only for units decoded ahead, which are
    consumed in the order they were started; a unit decoded when it is computed gets its own decoder, so it never
    waits for one started after it.
    """
    s = plan.settings
    wanted = (i for a, b in unit.decode for i in range(a, b))
    size = (s.frame_width, s.frame_height)
    return threaded(
        read_frames(plan.input, wanted, size) if source is None else source.read(plan.input, wanted, size), DECODE_AHEAD
    )


def _read_messages(lines: Iterable[str], inbox: queue.Queue) -> None:
    """The host's messages, in order; the end of input (the host went away) is a Stop."""
    try:
        for line in lines:
            message = events.decode(line.strip())
            if message is not None:
                inbox.put(message)
    finally:
        inbox.put(events.Stop())


def _compute_unit(
    plan: Plan, unit: Unit, model, runtime: Runtime, save, recomputed: list[int], frames, guard=None, clock=None
) -> None:
    """Compute one unit from its own start, calling save(piece, depth [k, h, w], fp32_recomputes) per piece.

    `guard` carries the fp32 recomputes in a row across units (vda.pipeline.inference.PrecisionGuard), `clock` the
    stage times of window mode (StageClock)."""
    s, n = plan.settings, plan.frame_count
    shape = (s.net_height, s.net_width)
    simulated = isinstance(model, SimulatedDevice)
    clock = clock or StageClock()
    try:
        if s.mode == "window":
            feed = FrameFeed(frames, total=n)
            if simulated:
                runner = SimulatedWindows(model, shape, store_dtype(runtime.precision))
                settled = runner.settled(range(*unit.span), feed, n)
            else:  # window w is settled (its finiteness read) once w + 1 is launched: no host sync in between
                runner = WindowRunner(model, runtime, shape, guard, clock)
                settled = launch_settled(runner, range(*unit.span), feed, n, _stage)
            for w, depth, fresh, staged in settled:
                save(w, depth, fresh, staged)
                clock.lap("store hand-off")
            clock.end()
            recomputed.extend(runner.recomputed)
            return
        first, stop = unit.span
        segment, seg_start, before = [], first, 0
        depths = (
            simulated_stream(model, frames, shape, store_dtype(runtime.precision))
            if simulated
            else stream_depths(model, runtime, frames, shape, recomputed, guard)
        )
        for i, depth in depths:
            if i < first:
                before = len(recomputed)  # recomputes in the warm-up belong to no piece of this unit
                continue
            segment.append(depth)
            if len(segment) == SEGMENT or i == stop - 1:
                save(seg_start, torch.stack(segment), len(recomputed) - before)
                segment, seg_start, before = [], i + 1, len(recomputed)
    finally:
        frames.close()


_STDOUT = threading.Lock()  # the worker's thread and its store thread both write lines to stdout


def say(line: str) -> None:
    """One whole line to stdout: a message to the host must never share a line with log text."""
    with _STDOUT:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _emit(message: events.Message) -> None:
    say(events.encode(message))


def serve_stdin(device: str, **options) -> None:
    """`vda work --device D`: serve the host over stdin and stdout until it says Stop or goes away. With
    VDA_STAGE_TIMES, its stage times go to `<VDA_STAGE_TIMES>.<pid>.json` (several workers serve one `vda depth`)."""
    worker = DeviceWorker(device, _emit, **options)
    stage_times = config.current().stage_times
    worker.clock = StageClock(enabled=bool(stage_times))
    worker.serve(sys.stdin)
    if stage_times:  # serve returns once every store is done: every hand-off is timed
        rows = {"device": device, "stages": ["window", *STAGES, "total", "gpu"], "rows": worker.clock.rows}
        write_json(Path(f"{stage_times}.{os.getpid()}.json"), rows)


def work_runs(run_dirs: list[str], device: str, *, input_path: str | None = None, **options) -> int:
    """`vda work RUN_DIR... --device D`: compute every unfinished unit of these runs here, without a host.

    The first unit error ends the command, as one line; returns the number of units computed.
    """
    failures: list[events.Failed] = []

    def emit(message: events.Message) -> None:
        if isinstance(message, events.Failed):
            failures.append(message)
        if isinstance(message, events.Done) and message.fp32_switch:
            say(f"vda: {device}: {message.fp32_switch}")

    worker = DeviceWorker(device, emit, **options)
    stage_times = config.current().stage_times
    worker.clock = StageClock(enabled=bool(stage_times))
    count = 0
    with UnitStore() as worker.store:
        for run_dir in run_dirs:
            run = RunDir(run_dir)
            plan = Plan.load(run.path)
            for unit in run.unfinished_units(plan):
                worker.run(events.Assign(run.path.name, str(run.path), input_path or plan.input.path, unit.index))
                if failures:
                    error = DeviceOutOfMemory if failures[0].device_bound else PlanError
                    raise error(failures[0].reason)
                count += 1
    if stage_times:  # after the store thread: every hand-off is timed
        write_json(
            Path(stage_times),
            {"device": device, "stages": ["window", *STAGES, "total", "gpu"], "rows": worker.clock.rows},
        )
    return count
