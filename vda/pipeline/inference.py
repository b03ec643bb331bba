"""Long-video inference as generators: window mode (the authors' batch method) and stream mode.

Memory is bounded by one window whatever the video length: frames are pulled lazily, encoder features
are kept only for the frames the next window reuses, and each depth map is yielded once it is final.

Speed beyond the reference: the DINOv2 encoder is per frame, so the features of the 10 frames a
window shares with the previous one (8 overlap frames, 2 keyframes) are reused instead of recomputed.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import shutil
import sysconfig
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vda import config
from vda.core import stitch
from vda.core.plan import AUTO, MODES, PRECISION_CHOICES, PRECISION_NAMES
from vda.core.preprocess import network_shape, preprocess
from vda.errors import DeviceError as DeviceKind
from vda.errors import InputError, RunError, UsageError
from vda.model.network import PATCH, VideoDepthAnything
from vda.pipeline.compat import ieee_fp32
from vda.system import one_blas_thread

PRECISIONS = dict(zip(PRECISION_NAMES, (torch.float32, torch.float16, torch.bfloat16)))
BF16_MIN_CAPABILITY = (8, 0)  # bf16 tensor cores arrived with Ampere; older GPUs emulate it slowly or not at all
# Frames per batch through the encoder and the full-resolution part of the head. The window is still 32
# frames for the temporal layers; only memory changes (the head's last layers hold 32 full-size maps).
DEFAULT_MICRO_BATCH = 4
STREAM_CACHE = 2 * stitch.STRIDE - stitch.ALIGN  # 42 cached frames: frame 0, then a sliding 41-frame reach
# Windows (stream mode: frames) in a row that need an fp32 recompute before a worker computes in fp32 for the rest of
# its run: one bad window is a fluke worth a recompute; three in a row is a card that overflows on everything (GTX 16xx
# in fp16), where computing twice costs more than fp32 once.
FP32_AFTER = 3


class FrameError(InputError, ValueError):
    """A frame that cannot be processed; the message names the frame and the fix."""


class DeviceError(DeviceKind, ValueError):
    """A device that cannot run what was asked (precision, compiler, placement); the message says what to use."""


class NonFiniteDepth(RunError):
    """Depth that is NaN or infinite even in fp32: never written; the message names the window."""


def resolve_precision(precision: str | None, device_type: str) -> str:
    """The precision a device of `device_type` ("cpu", "cuda") computes in, for a planned `precision`."""
    if precision in (None, AUTO):
        return "fp16" if device_type == "cuda" else "fp32"
    return precision


def store_dtype(precision: str) -> torch.dtype:
    """dtype a unit is stored in: float16 for fp16 runs (half the disk and copy); float32 otherwise, because numpy has
    no bfloat16 and float16's range (65504) could clip bf16 maps."""
    return torch.float16 if precision == "fp16" else torch.float32


def same_device(a: torch.device, b: torch.device, current_cuda: int | None = None) -> bool:
    """Whether two devices are the same; "cuda" without an index means the current CUDA device."""
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    return (a.index if a.index is not None else current_cuda) == (b.index if b.index is not None else current_cuda)


def check_compiler(which=shutil.which, environ=os.environ, gpu: bool = False, include: str | None = None) -> None:
    """torch.compile builds kernels with a C compiler where the model runs (Triton's launcher on a GPU, C++ on CPU).

    Without one it fails deep in the first window with a long traceback; refuse in one line before any work.
    """
    cc = environ.get("CC")
    if not ((cc and which(cc)) or which("cc") or which("gcc") or which("clang")):
        raise DeviceError(
            "--compile needs a C compiler where the workers run (torch.compile builds kernels), and there is none; "
            "install gcc there (e.g. in the image), or run without --compile"
        )
    include = include or sysconfig.get_paths()["include"]
    if gpu and not os.path.isfile(os.path.join(include, "Python.h")):  # Triton builds its launcher against it
        raise DeviceError(
            f"--compile on a GPU needs the Python headers (no Python.h in {include}); install python3-dev (or the "
            "matching python*-dev package), or run without --compile"
        )


def check_frame(index: int, frame, size: tuple[int, int] | None) -> np.ndarray:
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        got = f"shape {getattr(frame, 'shape', None)} dtype {getattr(frame, 'dtype', type(frame).__name__)}"
        raise FrameError(f"frame {index}: expected an HxWx3 uint8 RGB array, got {got}; convert frames to RGB uint8")
    if size is not None and frame.shape[:2] != size:
        raise FrameError(
            f"frame {index} is {frame.shape[1]}x{frame.shape[0]} but frame 0 is {size[1]}x{size[0]}; "
            "all frames of a video must have one size (resize them first)"
        )
    return frame


class FrameFeed:
    """Lazily pulls (index, frame) pairs, in increasing index order, and hands out frames by index.

    Only frames asked for but not yet consumed are held. `total` is the frame count when the caller
    knows it (a planned unit); otherwise it is learnt when the source runs dry.
    """

    def __init__(self, pairs: Iterable[tuple[int, np.ndarray]], total: int | None = None):
        self._pairs = iter(pairs)
        self._held: dict[int, np.ndarray] = {}
        self._last = -1
        self.size: tuple[int, int] | None = None
        self.total = total
        self._exhausted = False

    def _pull_until(self, index: int) -> None:
        while self._last < index and not self._exhausted:
            try:
                i, frame = next(self._pairs)
            except StopIteration:
                self._exhausted = True
                if self.total is None:
                    self.total = self._last + 1
                elif self._last + 1 < self.total and index < self.total:
                    raise FrameError(
                        f"the video ended before frame {index} of {self.total}; it may be truncated"
                    ) from None
                return
            if i <= self._last:
                raise FrameError(f"frames out of order: {i} after {self._last}")
            self._held[i] = check_frame(i, frame, self.size)
            self.size = self.size or frame.shape[:2]
            self._last = i

    def frame_count_hint(self, upto: int) -> int:
        """The frame count if known, else a lower bound after making frames up to `upto` available."""
        self._pull_until(upto)
        return self.total if self.total is not None else self._last + 1

    def first(self) -> np.ndarray:
        self._pull_until(0)
        if 0 not in self._held:
            raise FrameError("no frames: the video (or iterable) is empty")
        return self._held[0]

    def take(self, index: int) -> np.ndarray:
        """The frame at `index` (consumed: asking again is an error)."""
        self._pull_until(index)
        if index not in self._held:
            raise FrameError(f"frame {index} is not available from the source")
        return self._held.pop(index)

    def indexed(self) -> Iterator[tuple[int, np.ndarray]]:
        """All frames in order (for stream mode)."""
        i = 0
        while True:
            self._pull_until(i)
            if i not in self._held:
                return
            yield i, self._held.pop(i)
            i += 1


@dataclass(frozen=True)
class Runtime:
    """Where and how the model runs; shared by the single pass, the device worker and the benchmarks."""

    device: torch.device
    precision: str = "fp32"
    micro_batch: int | None = DEFAULT_MICRO_BATCH  # frames per encoder / head-tail batch (None: the whole window)
    compile: bool = False  # torch.compile the encoder and the head; pays a compile on the first window

    @classmethod
    def create(cls, device="cpu", precision="fp32", micro_batch=None, compile=False, cuda=torch.cuda) -> Runtime:
        """Check the combination before any work. `cuda` is torch.cuda; tests pass a fake (no GPU on CI).

        On CUDA, cuDNN's deterministic algorithms are used when VDA_CUDNN_DETERMINISTIC=1 (vda.config), to be measured
        on a GPU host by `make gpu-check` (README, "What is bitwise")."""
        micro_batch = micro_batch or DEFAULT_MICRO_BATCH  # the CLI and infer_video default to 4, not to None
        device = torch.device(device)
        if precision not in PRECISION_CHOICES:
            raise UsageError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISION_CHOICES)}")
        precision = resolve_precision(precision, device.type)
        if micro_batch < 1:
            raise UsageError(f"--micro-batch must be at least 1, got {micro_batch}")
        if device.type == "cpu" and precision == "fp16":
            raise DeviceError("fp16 needs a CUDA device; use --precision auto (fp32 on CPU) or bf16 on CPU")
        if device.type == "cuda":
            if not cuda.is_available():
                raise DeviceError(f"device {device} requested but CUDA is not available here; use --device cpu")
            if precision == "bf16" and tuple(cuda.get_device_capability(device)) < BF16_MIN_CAPABILITY:
                major, minor = cuda.get_device_capability(device)
                raise DeviceError(
                    f"bf16 needs a GPU of compute capability 8.0 or newer, and {cuda.get_device_name(device)} "
                    f"({device}) has {major}.{minor}; use --precision fp16 or fp32"
                )
        if compile:
            check_compiler(gpu=device.type == "cuda")
        if device.type == "cuda" and config.current().cudnn_deterministic:
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        return cls(device, precision, micro_batch, compile)

    def fp32(self) -> Runtime:
        """The same runtime in fp32: where a device's reduced precision keeps overflowing (FP32_AFTER)."""
        return dataclasses.replace(self, precision="fp32")

    def with_micro_batch(self, micro_batch: int) -> Runtime:
        return dataclasses.replace(self, micro_batch=micro_batch)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the model computes in (autocast's), which cached features are kept in."""
        return PRECISIONS[self.precision]

    def encoder(self, model: VideoDepthAnything):
        """model.encode, compiled when asked; frames are independent, so compiling changes no result.

        Compiled, every batch has exactly `micro_batch` frames: the last one is padded with copies of its last frame
        and the padding's features dropped, so one compiled graph serves every window (22 new frames, 32 at the
        start, fewer at the end) instead of one recompilation per batch size.
        """
        if not self.compile:
            return model.encode
        compiled = torch.compile(model.pretrained, dynamic=False)

        def encode(x: torch.Tensor, micro_batch: int | None = None) -> list[torch.Tensor]:
            step = micro_batch or x.shape[0]  # stream mode encodes one frame at a time: its fixed shape is 1
            parts = []
            for i in range(0, x.shape[0], step):
                batch = x[i : i + step]
                pad = step - batch.shape[0]
                if pad:
                    batch = torch.cat([batch, batch[-1:].expand(pad, *batch.shape[1:])])
                parts.append([level[: step - pad] for level in compiled(batch)])
            return [torch.cat(level) for level in zip(*parts)]

        return encode

    def decoder(self, model: VideoDepthAnything):
        """model.decode for window mode, its head compiled when asked: the head always sees one 32-frame window (the
        window's features, no cache) of one network shape per video, so one graph serves every window; it is about a
        third of the compute. Stream mode (one frame and a growing cache) stays eager."""
        if not self.compile:
            return model.decode
        head = torch.compile(model.head, dynamic=False)
        return lambda feats, grid, frames, micro_batch=None: model.decode(feats, grid, frames, None, micro_batch, head)

    def autocast(self, precision: str | None = None):
        """The context the model runs in: autocast for fp16/bf16; for fp32 on CUDA, true fp32 (see ieee_fp32)."""
        precision = precision or self.precision
        if precision == "fp32":
            return ieee_fp32() if self.device.type == "cuda" else contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=PRECISIONS[precision])


def pinned_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Page-locked host memory, which a copy from or to a GPU needs to run asynchronously; tests with a fake
    torch.cuda replace it (a CPU build of torch cannot pin)."""
    return torch.empty(shape, dtype=dtype, pin_memory=True)


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


def flag_to_host(flag: torch.Tensor, device: torch.device, cuda=torch.cuda) -> tuple[torch.Tensor, object]:
    """Queue the copy of flags computed on the device (torch.isfinite(depth).all()) to host memory, without waiting:
    (host flags, event after their copy). On CUDA the host reads them only after waiting for the event, one window
    later (PendingWindow.finite, stream mode's _Flags); on CPU they are there already (event None)."""
    if device.type != "cuda":
        return flag, None
    host = pinned_empty(tuple(flag.shape), torch.bool)
    host.copy_(flag, non_blocking=True)
    return host, copy_done_event(device, cuda)


# Pinned batches an Uploader cycles through: one being filled by the host while the one before is copied to the
# device, and one spare, so that the host rarely finds the buffer it wants still being read by its copy.
UPLOAD_BUFFERS = 3


class Uploader:
    """Frames to the device, one batch at a time, uint8 [n, H, W, 3] (issue 22: no batch building in the GPU's way).

    On CUDA each frame is copied once, from the decoder's array into a pre-allocated pinned buffer [rows, H, W, 3] of
    a small pool reused round-robin (no np.stack, no second copy to pin it); the copy to the device is queued on a
    side stream, and the compute stream waits for it on the device (an event), never the host. A buffer is filled
    again only once the copy that last read it has landed: the host waits on that copy's event, which the copy engine
    completes whatever the compute stream is doing. On CPU: one stacked batch, nothing pinned, no stream.
    `cuda` is torch.cuda; tests pass a fake and replace `_transfer` (no GPU on CI).
    """

    def __init__(self, device: torch.device, rows: int, cuda=torch.cuda, buffers: int = UPLOAD_BUFFERS):
        self.device, self.rows, self.cuda = device, rows, cuda
        self._pool: list[list] = [[None, None] for _ in range(buffers)]  # [pinned buffer, event of its last copy]
        self._turn = 0
        self._side = None

    def __call__(self, frames: list[np.ndarray]) -> torch.Tensor:
        if self.device.type != "cuda":
            return torch.from_numpy(np.stack(frames))
        slot = self._pool[self._turn]
        self._turn = (self._turn + 1) % len(self._pool)
        if slot[1] is not None:
            slot[1].synchronize()  # the copy that last read this buffer has landed (a copy, never the compute)
        shape = (max(self.rows, len(frames)), *frames[0].shape)
        if slot[0] is None or tuple(slot[0].shape) != shape:
            slot[0] = pinned_empty(shape, torch.uint8)
        rows = slot[0][: len(frames)]
        view = rows.numpy()
        for k, frame in enumerate(frames):
            view[k] = frame  # the one host copy: decoder's array -> pinned buffer
        self._side = self._side or self.cuda.Stream(self.device)
        compute = self.cuda.current_stream(self.device)
        with self.cuda.stream(self._side):
            batch = self._transfer(rows, compute)
            slot[1] = self.cuda.Event(blocking=True)
            slot[1].record(self._side)
        compute.wait_event(slot[1])  # the compute stream, not the host, waits for the batch
        return batch

    def _transfer(self, rows: torch.Tensor, compute) -> torch.Tensor:
        """The copy to the device, queued on the current (side) stream; the batch is used on `compute`, which the
        caching allocator is told, so that it does not hand the memory out again before compute is done with it."""
        batch = rows.to(self.device, non_blocking=True)
        batch.record_stream(compute)
        return batch


def upsample(depth: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[k, h, w] -> [k, H, W], bilinear with aligned corners as the authors do; at its own size, no resampling
    (what bilinear with aligned corners gives there anyway: the maps as they are, as --output-size net writes them)."""
    if tuple(depth.shape[-2:]) == tuple(size):
        return depth.float()
    return F.interpolate(depth.float()[:, None], size=size, mode="bilinear", align_corners=True)[:, 0]


STAGES = ("decode wait", "batch", "compute", "finite sync", "store hand-off")


class StageClock:
    """Seconds per window of the worker path's stages (issue 20), for `make gpu-check`; off unless asked for
    (VDA_STAGE_TIMES), and then only perf_counter calls and two CUDA events per window.

    Host stages are laps of perf_counter: waiting for the decoder, building the batch (the copy into a pinned buffer,
    the upload queued, preprocessing), compute (the encoder and head as the host sees them: launches on CUDA, the work
    itself on CPU), the finiteness sync (on CUDA, the host waiting for the flag of the window before, launched one
    window earlier: WindowRunner.settle) and the hand-off to the store; a row is one launch. On CUDA, "gpu" is the
    device time between two events around the window's work, read when the rows are (no sync per window).
    `cuda` is torch.cuda; tests pass a fake.
    """

    def __init__(self, enabled: bool = False, cuda=torch.cuda):
        self.enabled, self.cuda = enabled, cuda
        self._rows: list[dict] = []
        self._unread: list[tuple] = []  # (row, first event, last event): device time not read yet
        self._row: dict = {}
        self._mark = self._start = 0.0
        self._events: list = []

    @property
    def rows(self) -> list[dict]:
        """The rows so far, "gpu" read here: at a row's end its window's work may still be queued (its finiteness is
        read one window later), and reading the events then would make the host wait for it."""
        for row, first, last in self._unread:
            last.synchronize()
            row["gpu"] = first.elapsed_time(last) / 1000
        self._unread = []
        return self._rows

    def start(self, window: int) -> None:
        """A new row; one still open ends first (the worker ends the last: a row is one launch, with the settling of
        the window before it and its hand-off to the store, WindowRunner.settle)."""
        if self.enabled and self._row:
            self.end()
        if self.enabled:
            self._row, self._events = {"window": window, **dict.fromkeys(STAGES, 0.0)}, []
            self._mark = self._start = time.perf_counter()

    def lap(self, stage: str) -> None:
        if self.enabled and self._row:
            now = time.perf_counter()
            self._row[stage] += now - self._mark
            self._mark = now

    def device_mark(self, device: torch.device) -> None:
        if self.enabled and device.type == "cuda":
            event = self.cuda.Event(enable_timing=True)
            event.record(self.cuda.current_stream(device))
            self._events.append(event)

    def end(self) -> None:
        if self.enabled and self._row:
            self._row["total"] = time.perf_counter() - self._start
            self._row["gpu"] = None
            if len(self._events) > 1:
                self._unread.append((self._row, self._events[0], self._events[-1]))
            self._rows.append(self._row)
            self._row = {}


@dataclass
class PrecisionGuard:
    """Counts the windows (stream mode: frames) in a row that needed an fp32 recompute, across every unit a worker
    computes; after FP32_AFTER of them the worker computes in fp32 for the rest of its run (`switched`)."""

    after: int = FP32_AFTER
    streak: int = 0
    switched: str = ""  # why it switched, one line naming --precision fp32; empty while it has not

    def record(self, recomputed: bool, precision: str, what: str) -> bool:
        """Count one window; True when the device must switch to fp32 now (once)."""
        self.streak = self.streak + 1 if recomputed else 0
        if self.switched or self.streak < self.after:
            return False
        self.switched = (
            f"depth was not finite in {precision} for {self.streak} {what} in a row; computing in fp32 from here on "
            "(this GPU overflows in reduced precision: run it with --precision fp32)"
        )
        return True


def as_stored(depth: torch.Tensor, precision: str, recomputed: bool = False) -> torch.Tensor:
    """A window's raw depth rounded as a worker stores it (store_dtype; a recomputed window is fp32), so that the
    single pass, which rounds the same way, equals N devices in every precision."""
    return depth.to(store_dtype("fp32" if recomputed else precision))


def _reduced(feats: list[torch.Tensor], dtype: torch.dtype) -> list[list[torch.Tensor]]:
    """Per frame, fp32 features cast to `dtype` where every value stays finite, else kept in fp32 (fp16 overflows
    past 65504): feats are per level [n, ...]; one sync per level, on the recompute path only."""
    out: list[list[torch.Tensor]] = [[] for _ in range(feats[0].shape[0])]
    for level in feats:
        cast = level.to(dtype)
        finite = torch.isfinite(cast.flatten(1)).all(1).tolist()
        for k, ok in enumerate(finite):
            out[k].append((cast[k] if ok else level[k]).clone())
    return out


@dataclass
class PendingWindow:
    """A window launched on the device whose finiteness the host has not read yet (issue 22).

    The flag (torch.isfinite(depth).all()) is computed on the device and its copy to the host queued right behind
    the window's work (after what `stage` queued: the worker's copy of the depth to the host), so that the host reads
    it only once the next window is launched (WindowRunner.settle): the device never waits for the host in between.
    """

    w: int
    n_frames: int
    inputs: list[int]
    new: list[int]  # the frames first encoded for it, in the order they were (encoded again if the runner goes fp32)
    precision: str
    depth: torch.Tensor  # [32, h, w], rounded as stored, float32, on the device
    flag: torch.Tensor | None  # host bool, filled by the copy that `done` marks; None in fp32 (nothing to check)
    done: object = None  # the CUDA event after the flag's copy; None on CPU
    staged: object = None  # what the caller's `stage` queued for this depth (the worker: its copy to the host)

    def finite(self) -> bool:
        """Whether its depth is finite: waits for the flag's copy on CUDA (one window later than it was queued)."""
        if self.flag is None:
            return True
        if self.done is not None:
            self.done.synchronize()
        return bool(self.flag)


def _next_inputs(w: int, n_frames: int) -> set[int]:
    """The frames window w + 1 reads (those of a longer video too: `n_frames` may be a lower bound)."""
    keep = set(stitch.window_inputs(w + 1, max(n_frames, (w + 1) * stitch.STRIDE + stitch.WINDOW)))
    return keep | {min(i, n_frames - 1) for i in keep}


class WindowRunner:
    """Computes raw window depths [32, h, w] (network resolution, float32, rounded as stored) in window order.

    Keeps encoder features per source frame and evicts those the next window does not read. They are compact copies
    in the compute dtype: slices of the batch tensor would keep the whole batch alive (frame 0's features would pin
    all of window 0), and on CUDA autocast's layer norm returns them in float32, twice the memory. Frames are taken,
    uploaded, preprocessed and encoded one micro-batch at a time, so no whole window is ever held in fp32 at frame
    resolution (3.2 GB at 4K with --max-res 0).

    fp16 guard: a window whose depth is not finite in fp16 or bf16 (a known failure on some GPUs, e.g. GTX 16xx) is
    recomputed once from its frames in fp32. So raw frames (uint8) are kept too when not in fp32: those of the window
    not yet settled and of the one launched after it (issue 22: finiteness is read one window late, `launch` then
    `settle`), two windows at most. The recompute heals the cache: the features later windows reuse (frame 0, the
    keyframe, the overlap) are replaced by the fp32 ones, cast down where that stays finite, so one fault costs one
    window; the window launched after it from the unhealed features is decoded again from the healed ones
    (`redone`). `recomputed` lists the windows that needed it, `fp32_frames` counts the frames encoded again; if fp32
    is not finite either, NonFiniteDepth is raised: NaN depth is never handed on. After `guard.after` recomputes in a
    row the runner (and, through the shared guard, the worker) computes in fp32.
    """

    def __init__(
        self,
        model: VideoDepthAnything,
        runtime: Runtime,
        shape: tuple[int, int],
        guard: PrecisionGuard | None = None,
        clock: StageClock | None = None,
        cuda=torch.cuda,
    ):
        self.model, self.shape = model, shape
        self.rt = runtime.fp32() if guard is not None and guard.switched else runtime
        self.guard, self.clock, self.cuda = guard or PrecisionGuard(), clock or StageClock(), cuda
        self.grid = (shape[0] // PATCH, shape[1] // PATCH)
        self._features: dict[int, list[torch.Tensor]] = {}
        self._frames: dict[int, np.ndarray] = {}  # raw frames of the windows not settled, for the fp32 recompute
        self._encode, self._decoder = runtime.encoder(model), runtime.decoder(model)
        self._upload = Uploader(runtime.device, runtime.micro_batch or stitch.WINDOW, cuda)
        self.recomputed: list[int] = []
        self.redone: list[int] = []  # windows launched again because the one before them was not finite
        self.fp32_frames = 0

    def run(self, w: int, feed: FrameFeed, n_frames: int) -> torch.Tensor:
        """Window w, launched and settled at once (the single pass); the worker overlaps them (`launch`, `settle`)."""
        depth, _, _ = self.settle(self.launch(w, feed, n_frames))
        return depth

    @torch.inference_mode()
    def launch(self, w: int, feed: FrameFeed, n_frames: int, stage=None) -> PendingWindow:
        """Queue window w's work on the device, with no host sync: its new frames encoded, the head, the finiteness
        flag, and `stage(depth, precision)` (a copy the caller queues behind it). Windows are launched in order."""
        inputs = stitch.window_inputs(w, n_frames)
        self._features = {i: f for i, f in self._features.items() if i in inputs}  # no later window reads the rest
        new = sorted(set(inputs) - self._features.keys())
        self.clock.start(w)
        self.clock.device_mark(self.rt.device)
        with self.rt.autocast():
            self._encode_new(feed.take, new)
        pending = self._decode_pending(w, n_frames, inputs, new, stage)
        self.clock.lap("compute")
        self.clock.device_mark(self.rt.device)
        return pending

    @torch.inference_mode()
    def settle(
        self, pending: PendingWindow, after: PendingWindow | None = None, stage=None
    ) -> tuple[torch.Tensor, int, PendingWindow | None]:
        """(depth, 1 if it was recomputed in fp32 else 0, `after` or its redo) for `pending`, once its flag is read.

        The host blocks on the flag's copy only, with `after` (the next window, if launched) queued behind it. Not
        finite: `pending` is recomputed in fp32, which heals the cache, and `after`, launched from the unhealed
        features, is launched again (`stage` its copy): decoded from the healed features, or, if the guard switched
        to fp32 now, its new frames encoded again in fp32, as they would have been had it been launched after."""
        finite = pending.finite()
        self.clock.lap("finite sync")
        depth = pending.depth
        if not finite:
            depth = as_stored(self._recompute_fp32(pending.w, pending.inputs), "fp32").float()
        switch = self.guard.record(not finite, pending.precision, "windows")
        if switch:
            self.rt = self.rt.fp32()
            self._features = {i: [f.float() for f in feats] for i, feats in self._features.items()}
        if not finite and after is not None:
            after = self._redo(after, switch, stage)
        keep = _next_inputs(pending.w, pending.n_frames)  # `after` holds its new frames too: they are in it
        self._frames = {} if self.rt.precision == "fp32" else {i: f for i, f in self._frames.items() if i in keep}
        return depth, int(not finite), after

    def _redo(self, after: PendingWindow, fp32: bool, stage) -> PendingWindow:
        """`after` launched again from the healed cache; its own new frames encoded again only if now in fp32."""
        self.redone.append(after.w)
        if fp32:
            for i in after.new:
                del self._features[i]
            with self.rt.autocast():
                self._encode_new(self._frames.__getitem__, after.new)
        return self._decode_pending(after.w, after.n_frames, after.inputs, after.new, stage)

    def _encode_new(self, take, new: list[int]) -> None:
        """Encode a window's new frames (`take(i)` gives frame i) one micro-batch at a time, into the cache (in the
        compute dtype). Frames are let go once uploaded, unless the fp32 recompute may need them."""
        step = self.rt.micro_batch or max(1, len(new))
        for start in range(0, len(new), step):
            chunk = new[start : start + step]
            frames = [take(i) for i in chunk]
            self.clock.lap("decode wait")
            if self.rt.precision != "fp32":
                self._frames.update(zip(chunk, frames))
            x = preprocess(self._upload(frames), self.shape)
            self.clock.lap("batch")
            feats = self._encode(x, step)
            for k, i in enumerate(chunk):
                self._features[i] = [level[k].to(self.rt.dtype, copy=True) for level in feats]
            self.clock.lap("compute")

    def _decode_pending(self, w: int, n_frames: int, inputs: list[int], new: list[int], stage) -> PendingWindow:
        """The head over the window's cached features (in autocast), then, outside it, the depth as stored, the
        caller's `stage` and the finiteness flag queued behind it."""
        with self.rt.autocast():
            window = [torch.stack([self._features[i][lv] for i in inputs]) for lv in range(4)]
            raw, _ = self._decoder(window, self.grid, stitch.WINDOW, micro_batch=self.rt.micro_batch)
        precision = self.rt.precision
        depth = as_stored(raw, precision).float()
        staged = None if stage is None else stage(depth, precision)
        flag = done = None
        if precision != "fp32":  # the flag stays on the device; its copy is read one window later (settle)
            flag, done = flag_to_host(torch.isfinite(raw).all(), self.rt.device, self.cuda)
        return PendingWindow(w, n_frames, inputs, new, precision, depth, flag, done, staged)

    def _recompute_fp32(self, w: int, inputs: list[int]) -> torch.Tensor:
        """The window again in fp32, eager (the fallback path); its frames' features replace the cached ones."""
        self.recomputed.append(w)
        unique = sorted(set(inputs))
        step = self.rt.micro_batch or len(unique)
        chunks = []
        with self.rt.autocast("fp32"):
            for start in range(0, len(unique), step):
                chunk = unique[start : start + step]
                x = preprocess(self._upload([self._frames[i] for i in chunk]), self.shape)
                chunks.append((chunk, self.model.encode(x)))
            self.fp32_frames += len(unique)
            row = {i: [level[k] for level in feats] for chunk, feats in chunks for k, i in enumerate(chunk)}
            window = [torch.stack([row[i][lv] for i in inputs]) for lv in range(4)]
            depth, _ = self.model.decode(window, self.grid, stitch.WINDOW, micro_batch=self.rt.micro_batch)
        if not bool(torch.isfinite(depth).all()):
            raise NonFiniteDepth(
                f"window {w} gives non-finite depth even in fp32; the checkpoint or the frames are broken "
                "(check the checkpoint file and the input)"
            )
        for chunk, feats in chunks:
            self._features.update(zip(chunk, _reduced(feats, self.rt.dtype)))
        return depth


def launch_settled(
    runner: WindowRunner, windows: Iterable[int], feed: FrameFeed, n_frames: int, stage=None
) -> Iterator[tuple[int, torch.Tensor, int, object]]:
    """(w, depth, recomputed, staged) per window, in order, each window settled only after the next one is launched:
    the host waits for window w's finiteness while w + 1 is queued on the device (issue 22). `staged` is what
    `stage(depth, precision)` queued for that depth, None where the window was recomputed (its depth is new)."""
    pending = None
    for w in windows:
        launched = runner.launch(w, feed, n_frames, stage)
        if pending is not None:
            depth, fresh, launched = runner.settle(pending, launched, stage)
            yield pending.w, depth, fresh, None if fresh else pending.staged
        pending = launched
    if pending is not None:
        depth, fresh, _ = runner.settle(pending)
        yield pending.w, depth, fresh, None if fresh else pending.staged


CHAIN_OUTPUTS = [0, 1, stitch.KEYFRAME]  # the outputs of a window the alignment chain reads


def chain_maps(picked: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """A window's outputs CHAIN_OUTPUTS ([3, h, w], network resolution) at full resolution: [3, H, W]."""
    return upsample(picked, size).cpu().numpy()


def chain_step(
    chain: stitch.AlignmentChain, picked: torch.Tensor, size: tuple[int, int]
) -> tuple[np.float32, np.float32]:
    """Scale and shift of the next window from its outputs CHAIN_OUTPUTS ([3, h, w], network resolution), fitted at
    one BLAS thread, as the merge's pass 1 fits it: the same sums on any host."""
    first, second, key = chain_maps(picked, size)
    with one_blas_thread():
        return chain.step(first, second, key)


class WindowAligner:
    """Turns raw windows and their scale/shift into final full-resolution frames (the authors' stitching).

    Holds the last two windows only, at network resolution. `host=False` keeps the frames as tensors where the
    windows are (on the device), for a caller that goes on computing there. On the host, each frame is aligned and
    blended in place in its freshly upsampled array (the same bits as the reference's expressions, without their
    full-size temporaries: issue 22's render cost).
    """

    def __init__(self, size: tuple[int, int], host: bool = True):
        self.size, self.host = size, host
        self._windows: dict[int, tuple[torch.Tensor, np.float32, np.float32, dict[int, int] | None]] = {}

    def add(
        self, w: int, depth: torch.Tensor, scale: np.float32, shift: np.float32, rows: list[int] | None = None
    ) -> None:
        """Window w's raw depth [k, h, w]: all 32 outputs, or only the outputs `rows` (in order), as the merge reads
        them (the 8 rows of w-1 that w's frames blend with, not the whole window)."""
        at = None if rows is None else {r: k for k, r in enumerate(rows)}
        self._windows[w] = (depth, scale, shift, at)
        self._windows.pop(w - 2, None)

    def aligned(self, w: int, i: int) -> np.ndarray:
        depth, scale, shift, at = self._windows[w]
        k = i if at is None else at[i]
        up = upsample(depth[k : k + 1], self.size)[0]
        if not self.host:
            return stitch.apply_scale_shift(up, scale, shift)
        if up.device.type == "cpu" and tuple(depth.shape[-2:]) == tuple(self.size):
            up = up.clone()  # not resampled: `up` may be the window's own memory, which stays as it is
        return stitch.apply_scale_shift(up.cpu().numpy(), scale, shift, inplace=True)

    def frames(self, w: int, n_frames: int) -> Iterator[tuple[int, np.ndarray]]:
        """(frame index, depth) for the frames window w makes final."""
        for f in stitch.window_outputs(w, n_frames):
            src = stitch.frame_source(f, n_frames)
            newer = self.aligned(src.w, src.i)
            if src.weight == 1.0:
                yield f, newer
            else:
                older = self.aligned(src.w - 1, src.i + stitch.STRIDE)
                yield f, stitch.blend(older, newer, src.weight, inplace=self.host)


class StreamCache:
    """The authors' streaming context: frame 0 plus a sliding reach of 41 frames, per temporal layer.

    At start the list is filled with copies of frame 0's entry, as if a window of it had been seen.
    """

    def __init__(self):
        self.entries: list[list[torch.Tensor]] = []

    def context(self) -> list[torch.Tensor] | None:
        if not self.entries:
            return None
        picked = self.entries[: stitch.ALIGN] + self.entries[-(stitch.WINDOW - 1 - stitch.ALIGN) :]  # 31 frames
        return [torch.cat([e[k] for e in picked], dim=1) for k in range(len(picked[0]))]

    def push(self, fresh: list[torch.Tensor]) -> None:
        self.entries = self.entries + [fresh] if self.entries else [fresh] * stitch.WINDOW
        if len(self.entries) > STREAM_CACHE:
            del self.entries[1]


# Stream mode's finiteness flags are copied to the host in groups of STREAM_CHECK frames, and a group is read only once
# the next one is launched: one wait per 4 frames, never with the device idle (issue 22). A fault found late redoes
# the frames launched after it (decoded again, at most 2 x 4 - 1), so 4 keeps that cheap and what is held small.
STREAM_CHECK = 4


class _Flags:
    """The finiteness flags of a group of frames, in one copy to the host; the host waits for it once, when read."""

    def __init__(self, flags: list[torch.Tensor], device: torch.device, cuda):
        self._host, self._done = flag_to_host(torch.stack(flags), device, cuda)
        self._values: list[bool] | None = None

    def read(self, k: int) -> bool:
        if self._values is None:
            if self._done is not None:
                self._done.synchronize()
            self._values = self._host.tolist()
        return self._values[k]


@dataclass
class _Launched:
    """A frame of stream mode launched on the device and not yet settled: what redoing it needs."""

    i: int
    x: torch.Tensor  # its preprocessed input (encoded again if the runner switches to fp32)
    feats: list[torch.Tensor]  # its encoder features
    before: list  # the cache entries it was decoded after
    depth: torch.Tensor
    fresh: list[torch.Tensor]
    precision: str
    flag: torch.Tensor | None  # on the device; None in fp32
    copied: tuple[_Flags, int] | None = None  # its group's flags on the host, and its place in them


class _Stream:
    """stream_depths' state: the authors' cache, and the frames launched but not settled (their finiteness unread).

    A frame found not finite is recomputed in fp32 from the cache it was decoded after, and the frames launched after
    it are decoded again after its healed entries (their features kept: only the cache changed), or encoded again in
    fp32 if the guard switched now: each depth is then exactly what computing frame by frame gives."""

    def __init__(self, model, runtime: Runtime, shape, recomputed: list[int] | None, guard: PrecisionGuard, cuda):
        self.model, self.guard, self.cuda = model, guard, cuda
        self.rt = runtime.fp32() if guard.switched else runtime
        self.grid, self.recomputed = (shape[0] // PATCH, shape[1] // PATCH), recomputed
        self.encode, self.cache, self.pending = runtime.encoder(model), StreamCache(), collections.deque()

    def launch(self, i: int, x: torch.Tensor, feats: list[torch.Tensor] | None = None) -> None:
        """Queue frame i (no host sync): encoded (unless `feats`), decoded after the cache, flagged, pushed."""
        before, context = self.cache.entries, self.cache.context()
        with self.rt.autocast():
            feats = self.encode(x) if feats is None else feats
            depth, fresh = self.model.decode(feats, self.grid, 1, cache=context)
        flag = None if self.rt.precision == "fp32" else torch.isfinite(depth).all()
        self.pending.append(_Launched(i, x, feats, before, depth, fresh, self.rt.precision, flag))
        self.cache.push(fresh)
        unread = [f for f in self.pending if f.flag is not None and f.copied is None]
        if len(unread) >= STREAM_CHECK:
            self.copy_flags(unread)

    def copy_flags(self, unread: list[_Launched]) -> None:
        flags = _Flags([f.flag for f in unread], self.rt.device, self.cuda)
        for k, f in enumerate(unread):
            f.copied = (flags, k)

    def settle(self, count: int) -> Iterator[tuple[int, torch.Tensor]]:
        """(index, depth) of the oldest `count` launched frames (fewer if fewer are launched), once their flags are
        read; a frame not finite is recomputed and the frames after it launched again."""
        for _ in range(min(count, len(self.pending))):
            f = self.pending.popleft()
            if f.flag is not None and f.copied is None:
                self.copy_flags([f, *(g for g in self.pending if g.flag is not None and g.copied is None)])
            bad = f.copied is not None and not f.copied[0].read(f.copied[1])
            depth, healed = self._recompute(f) if bad else (f.depth, None)
            if self.guard.record(bad, f.precision, "frames"):
                self.rt = self.rt.fp32()
                self.cache.entries = [[t.float() for t in entry] for entry in self.cache.entries]
            if healed is not None:
                self._redo(healed)
            yield f.i, as_stored(depth[0], f.precision, bad).float()

    def _recompute(self, f: _Launched) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Frame f in fp32, after the cache it was decoded after (upcast); the cache goes back to that, plus its
        fresh entries cast down where that stays finite (one fault costs one frame)."""
        self.cache.entries = f.before
        context = self.cache.context()
        upcast = None if context is None else [c.float() for c in context]
        with self.rt.autocast("fp32"):
            depth, fresh = self.model.decode(self.model.encode(f.x), self.grid, 1, cache=upcast)
        if not bool(torch.isfinite(depth).all()):
            raise NonFiniteDepth(f"frame {f.i} gives non-finite depth even in fp32; check the checkpoint and input")
        if self.recomputed is not None:
            self.recomputed.append(f.i)
        return depth, _reduced([t[None] for t in fresh], f.fresh[0].dtype)[0]  # one "frame": cast where finite

    def _redo(self, healed: list[torch.Tensor]) -> None:
        """Push the healed entries (fp32 if the runner switched), then launch again every frame launched after."""
        fp32 = self.rt.precision == "fp32"
        self.cache.push([t.float() for t in healed] if fp32 else healed)
        later, self.pending = list(self.pending), collections.deque()
        for f in later:
            self.launch(f.i, f.x, None if fp32 else f.feats)


@torch.inference_mode()
def stream_depths(
    model: VideoDepthAnything,
    runtime: Runtime,
    pairs: Iterable[tuple[int, np.ndarray]],
    shape: tuple[int, int],
    recomputed: list[int] | None = None,
    guard: PrecisionGuard | None = None,
    cuda=torch.cuda,
) -> Iterator[tuple[int, torch.Tensor]]:
    """(index, depth [h, w]) per frame, in network resolution, carrying the cache through `pairs`; each depth is
    rounded as a worker stores it (as_stored), so the single pass and the workers agree in every precision.

    A frame whose depth is not finite in fp16/bf16 is recomputed once in fp32 (with the same cache, upcast) and its
    index appended to `recomputed`; its fresh cache entries are cast down where that stays finite (else kept in
    fp32), so one fault costs one frame. NonFiniteDepth if fp32 does not help either. After `guard.after` frames in
    a row needed it, the rest is computed in fp32. No host sync per frame (issue 22): finiteness is read per group
    of STREAM_CHECK frames, a group after the next is launched, so depths come out up to 2 x 4 - 1 frames late.
    """
    stream = _Stream(model, runtime, shape, recomputed, guard or PrecisionGuard(), cuda)
    upload = Uploader(runtime.device, 1, cuda)
    for i, frame in pairs:
        stream.launch(i, preprocess(upload([frame]), shape))
        if stream.rt.precision == "fp32":  # nothing to read: each depth is final at once
            yield from stream.settle(len(stream.pending))
        elif len(stream.pending) >= 2 * STREAM_CHECK:
            yield from stream.settle(STREAM_CHECK)
    yield from stream.settle(len(stream.pending))


def infer_video(
    model: VideoDepthAnything,
    frames: Iterable[np.ndarray],
    *,
    input_size: int = 518,
    mode: str = "window",
    precision: str = AUTO,
    device="cpu",
    micro_batch: int | None = None,
    compile: bool = False,
    out_size: tuple[int, int] | str | None = None,
    tensors: bool = False,
) -> Iterator[np.ndarray]:
    """Yield one float32 depth map per input frame, in order: at the frame's resolution, or at `out_size` ((H, W), or
    "net": the network's, no upsampling); as tensors on the device with `tensors`. The alignment is fitted at the
    frame's resolution whatever `out_size` is, as the merge does, so every size holds the same depth. `precision` "auto"
    is the CLI's rule: fp16 on a GPU, fp32 on a CPU.

    Raw depth is rounded exactly as the workers store it (fp16 in fp16, a recomputed window in fp32), and the same
    fp32 fallback applies, so `vda depth` on any number of devices equals this single pass in every precision."""
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    runtime = Runtime.create(device, precision, micro_batch, compile)
    model_device = next(model.parameters()).device
    current = torch.cuda.current_device() if runtime.device.type == "cuda" else None
    if not same_device(model_device, runtime.device, current):
        raise DeviceError(f"model is on {model_device} but device={runtime.device}; load it with device={device!r}")
    feed = FrameFeed(enumerate(frames))
    size = feed.first().shape[:2]
    shape = network_shape(*size, input_size)
    out = shape if out_size == "net" else tuple(out_size or size)
    if mode == "stream":
        for _, depth in stream_depths(model, runtime, feed.indexed(), shape):
            up = upsample(depth[None], out)[0]
            yield up if tensors else up.cpu().numpy()
        return
    runner = WindowRunner(model, runtime, shape)
    chain, aligner = stitch.AlignmentChain(metric=model.config.metric), WindowAligner(out, host=not tensors)
    w = 0
    while w == 0 or w * stitch.STRIDE < feed.frame_count_hint(w * stitch.STRIDE):
        n = feed.frame_count_hint(w * stitch.STRIDE + stitch.WINDOW - 1)
        depth = runner.run(w, feed, n)
        aligner.add(w, depth, *chain_step(chain, depth[CHAIN_OUTPUTS], size))
        yield from (d for _, d in aligner.frames(w, n))
        w += 1
