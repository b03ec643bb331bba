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

import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vda import config, events
from vda.core.plan import Plan, PlanError, Unit
from vda.device.clock import StageClock
from vda.device.compat import OOM_ERROR, free_device_memory
from vda.device.feed import FrameError
from vda.device.guard import NonFiniteDepth, PrecisionGuard
from vda.device.protocol import _read_messages, say
from vda.device.rehearsal import InjectedFault, _maybe_fail
from vda.device.runtime import Runtime, resolve_precision
from vda.device.simulate import SimulatedDevice
from vda.device.transfer import piece_to_host
from vda.device.unit import (
    REREAD,
    DeviceOutOfMemory,
    ModelOutOfMemory,
    _Checked,
    _compute_unit,
    _frames,
    _out_of_memory,
    _stamped,
    verify_checkpoint,
    verify_input,
    verify_simulation,
)
from vda.io.frame_source import FrameSource
from vda.io.pieces import PieceStore, UnitStore, write_piece
from vda.io.prefetch import Prefetch
from vda.io.probe import VideoError, check_frame_count
from vda.io.rundir import RunDir
from vda.model.network import load_model

PREFETCH_WAIT_S = 0.05  # how long a worker waits for its next unit before it computes without decoding it ahead


def _store(
    path: Path,
    host: torch.Tensor,
    event,
    started: float,
    piece: int,
    store: PieceStore = write_piece,
    rows: torch.Tensor | None = None,
) -> None:
    """Store a piece once its copy to the host (and that of its `rows`, `piece_to_host`) has landed."""
    if event is not None:
        event.synchronize()
    store(path, host.numpy(), piece, round(time.time() - started, 3), None if rows is None else rows.numpy())


# What fails a unit and not the worker: the worker reports it (events.Failed) and goes on with the next unit.
UNIT_ERRORS = (VideoError, FrameError, PlanError, NonFiniteDepth, InjectedFault, DeviceOutOfMemory)


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
    runtime: str = "torch"  # what computes the network: torch, or onnx (ONNX Runtime)
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
                model = self._load(ckpt, plan, runtime)
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

    def _load(self, ckpt: Path, plan: Plan, runtime: Runtime):
        """The model this worker's runtime computes: a torch module, or the ONNX network of the plan's size (exported
        into the export cache by the first worker that needs it)."""
        s = plan.settings
        if self.runtime != "onnx":
            return load_model(ckpt, encoder=s.encoder, metric=s.metric, device=runtime.device)
        from vda.device.runtime_onnx import OnnxModel

        model = OnnxModel(ckpt, encoder=s.encoder, metric=s.metric, device=runtime.device, sha256=s.checkpoint_sha256)
        net = model.network_for((s.net_height, s.net_width), runtime.precision)
        if s.mode == "stream" and not net.stream:
            raise PlanError(
                "stream mode with --runtime onnx needs the stream graphs, which do not export exactly with this torch; "
                "use --mode window or --runtime torch"
            )
        return net

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

        def save(piece: int, depth: torch.Tensor, fresh: int, copied: tuple | None = None) -> None:
            if piece not in todo:
                return
            todo.discard(piece)
            stored = "fp32" if fresh or self.guard.switched else runtime.precision  # recomputed pieces stay fp32
            rows, host, event = copied or piece_to_host(depth, stored)
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
