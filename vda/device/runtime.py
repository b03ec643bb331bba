"""The runtime seam: how the runners reach the network, and the settings every runtime shares.

`Network` is what computes the model on a device: frames to encoder features, a window of features (or one frame and
the stream cache) to depth. The window and stream runners, the single pass and the worker call nothing else of it.
`runtime_torch` implements it with torch (autocast, torch.compile); ONNX Runtime is a second implementation.
`Runtime` holds the settings a run is computed with (device, precision, micro-batch, compile), checked before work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sysconfig
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from vda import config
from vda.core.plan import AUTO, PRECISION_CHOICES, PRECISION_NAMES
from vda.errors import DeviceError, UsageError

PRECISIONS = dict(zip(PRECISION_NAMES, (torch.float32, torch.float16, torch.bfloat16)))


BF16_MIN_CAPABILITY = (8, 0)  # bf16 tensor cores arrived with Ampere; older GPUs emulate it slowly or not at all


# Frames per batch through the encoder and the full-resolution part of the head. The window is still 32
# frames for the temporal layers; only memory changes (the head's last layers hold 32 full-size maps).
DEFAULT_MICRO_BATCH = 4


class UnsupportedDevice(DeviceError, ValueError):
    """A device that cannot run what was asked (precision, compiler, placement); the message says what to use."""


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
        raise UnsupportedDevice(
            "--compile needs a C compiler where the workers run (torch.compile builds kernels), and there is none; "
            "install gcc there (e.g. in the image), or run without --compile"
        )
    include = include or sysconfig.get_paths()["include"]
    if gpu and not os.path.isfile(os.path.join(include, "Python.h")):  # Triton builds its launcher against it
        raise UnsupportedDevice(
            f"--compile on a GPU needs the Python headers (no Python.h in {include}); install python3-dev (or the "
            "matching python*-dev package), or run without --compile"
        )


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
        on a GPU host by `make gpu-check` (docs/design.md, "What is bitwise")."""
        micro_batch = micro_batch or DEFAULT_MICRO_BATCH  # the CLI and infer_video default to 4, not to None
        device = torch.device(device)
        if precision not in PRECISION_CHOICES:
            raise UsageError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISION_CHOICES)}")
        precision = resolve_precision(precision, device.type)
        if micro_batch < 1:
            raise UsageError(f"--micro-batch must be at least 1, got {micro_batch}")
        if device.type == "cpu" and precision == "fp16":
            raise UnsupportedDevice("fp16 needs a CUDA device; use --precision auto (fp32 on CPU) or bf16 on CPU")
        if device.type == "cuda":
            if not cuda.is_available():
                raise UnsupportedDevice(f"device {device} requested but CUDA is not available here; use --device cpu")
            if precision == "bf16" and tuple(cuda.get_device_capability(device)) < BF16_MIN_CAPABILITY:
                major, minor = cuda.get_device_capability(device)
                raise UnsupportedDevice(
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


class Network(ABC):
    """A model as the runners drive it. Feature levels are per frame ([n, ...] each), so micro-batching is exact."""

    device: torch.device
    metric: bool

    @abstractmethod
    def encode(self, x: torch.Tensor, micro_batch: int | None = None) -> list[torch.Tensor]:
        """Encoder features of normalised frames x [n, 3, H, W]: four levels, [n, ...] each."""

    @abstractmethod
    def decode(
        self, feats: list[torch.Tensor], grid: tuple[int, int], frames: int, cache=None, micro_batch: int | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Depth [frames, h, w] of a window's features (stream mode: one frame after `cache`), and the fresh cache."""

    def check_device(self, device: torch.device, asked: str) -> None:  # noqa: B027 - optional: most compute anywhere
        """Refuse to compute on `device` (the user asked for `asked`) where the network cannot; default: anywhere."""

    def exact(self) -> Network:
        """The network as the fp32 recompute runs it: eager, without compiled graphs (default: itself)."""
        return self

    def autocast(self, precision: str):
        """The context the network computes `precision` in (default: none; the graph's own precision)."""
        return contextlib.nullcontext()
