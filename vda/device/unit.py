"""One unit on a device: its frames decoded ahead, its windows (or stream frames) computed, each piece handed on;
the checks a worker makes before it computes a planned video, and the out-of-memory errors."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from vda import config, events
from vda.core import stitch
from vda.core.plan import SEGMENT, Plan, PlanError, Unit
from vda.device.clock import StageClock
from vda.device.feed import FrameFeed
from vda.device.runtime import Runtime, store_dtype
from vda.device.simulate import SimulatedDevice, SimulatedWindows, simulated_stream
from vda.device.stream import stream_depths
from vda.device.transfer import piece_to_host
from vda.device.window import WindowRunner, launch_settled
from vda.errors import OutOfMemory
from vda.files import file_sha256
from vda.io.decode import read_frames
from vda.io.frame_source import FrameSource
from vda.io.prefetch import Prefetch
from vda.io.probe import NOT_FOUND, VideoError, identity_mismatch

# Decoded frames held ahead of the model: a window takes its 22 new frames at once, so a shorter queue would make
# the device wait for the decoder at every window (bench_stages.py, "decode overlap"). 44 frames at 720p: 120 MB.
DECODE_AHEAD = 2 * stitch.STRIDE


# Frames a unit reads again from the previous unit's decode: the keyframe of its first window's predecessor, at most
# 20 frames back from that unit's last (the keyframe at (w-1)*22+12, the last decoded (w-1)*22+31), and the overlap.
REREAD = stitch.WINDOW - 1 - stitch.KEYFRAME + 1


class DeviceOutOfMemory(OutOfMemory):
    """The device ran out of memory: expected, one line naming what to lower, and not retried with the same settings.

    The worker first retries the unit once itself with half the micro-batch (DeviceWorker._compute); when that fails
    too, retrying on the same device would fail the same way: the worker reports it as device-bound (events.Failed),
    and the queue hands the unit to a device that has not tried it, or gives it up.
    """


class ModelOutOfMemory(DeviceOutOfMemory):
    """The model itself did not fit (vitl on two workers of one GPU): the worker reports it (events.Failed, retire)
    and exits, and the queue retires its device, since every unit it is handed would fail alike."""


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


def _out_of_memory(s, runtime: Runtime, doing: str) -> DeviceOutOfMemory:
    """The one line for an OOM. It does not name the device: an isolated worker sees its GPU as cuda:0, and the
    queue, which knows which GPU that is, names it."""
    mb = runtime.micro_batch
    lower = f"--micro-batch (e.g. {max(1, mb // 2)}), --input-size" if mb > 1 else "--input-size"
    return DeviceOutOfMemory(
        f"the GPU ran out of memory {doing} {s.encoder} at input size {s.input_size} ({s.net_width}x{s.net_height}) "
        f"with micro-batch {mb} in {runtime.precision}; lower {lower} or --max-res, or use a GPU with more memory"
    )


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
    return Prefetch(
        read_frames(plan.input, wanted, size) if source is None else source.read(plan.input, wanted, size), DECODE_AHEAD
    )


def _compute_unit(
    plan: Plan, unit: Unit, model, runtime: Runtime, save, recomputed: list[int], frames, guard=None, clock=None
) -> None:
    """Compute one unit from its own start, calling save(piece, depth [k, h, w], fp32_recomputes) per piece.

    `guard` carries the fp32 recomputes in a row across units (vda.device.PrecisionGuard), `clock` the
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
                settled = launch_settled(runner, range(*unit.span), feed, n, piece_to_host)
            for w, depth, fresh, copied in settled:
                save(w, depth, fresh, copied)
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
