"""Facts about the machine a process runs on."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from vda.errors import UsageError


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (one of another user's counts: it exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner() -> str:
    """This process as the owner of what it starts elsewhere (containers): HOST:PID."""
    return f"{socket.gethostname()}:{os.getpid()}"


def usable_cpus() -> int:
    """CPUs this process may run on: a cpuset (docker --cpuset-cpus, taskset, Slurm) can allow fewer than exist.

    os.cpu_count() counts the machine's CPUs, so sizing pools by it oversubscribes a restricted process.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def limit_threads(threads: int) -> None:
    """Bound the threads of torch and OpenCV in this process to its share of the cores (VDA_THREADS, or 1 in a render
    process); FFmpeg's decoders take the same share (vda.io.video). Without it each library starts one thread per
    core, and five workers on one host would fight over them."""
    import cv2
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


# (get, set) of an OpenBLAS's thread count, by the names its builds export: plain, 64-bit integers, and numpy's
# wheels' scipy-openblas (64- and 32-bit integers)
_OPENBLAS_THREADS = (
    ("openblas_get_num_threads", "openblas_set_num_threads"),
    ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
    ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
    ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
)


@functools.cache
def loaded_openblas() -> tuple[tuple, ...]:
    """(get, set) of the thread count of every OpenBLAS this process has loaded (numpy's, found in /proc/self/maps);
    empty where there is none or this is not Linux. numpy has no call for it, and its environment variables are read
    once, when the library loads. Looked up once, after numpy is imported (which loads its BLAS)."""
    import numpy  # noqa: F401

    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return ()
    named = (f[5].removesuffix(" (deleted)") for f in (line.split(maxsplit=5) for line in maps) if len(f) == 6)
    paths = {path for path in named if "openblas" in path.rsplit("/")[-1].lower()}
    found = []
    for path in sorted(p for p in paths if os.path.isfile(p)):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        calls = [
            (getattr(lib, g), getattr(lib, s)) for g, s in _OPENBLAS_THREADS if hasattr(lib, g) and hasattr(lib, s)
        ]
        found += calls[:1]
    return tuple(found)


class _HeldCount:
    """A process-wide thread count held at one value while any caller is inside `held`, and put back when the last
    one leaves. Calls from several threads may overlap (two merges, pass 1 beside a single pass): were each to save
    and restore the count on its own, one ending after another began would leave the held value for good."""

    def __init__(self, read: Callable[[], list[int]], write: Callable[[list[int]], None]):
        self._read, self._write = read, write
        self._lock = threading.Lock()
        self._users, self._saved = 0, []

    @contextlib.contextmanager
    def held(self, threads: int) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                self._saved = self._read()
            self._users += 1
            self._write([threads] * len(self._saved))
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    self._write(self._saved)


def _write_blas(counts: list[int]) -> None:
    for (_, put), count in zip(loaded_openblas(), counts):
        put(count)


_BLAS = _HeldCount(lambda: [get() for get, _ in loaded_openblas()], _write_blas)


def one_blas_thread() -> contextlib.AbstractContextManager:
    """numpy's OpenBLAS at one thread inside, as every fit of the alignment chain runs (FirstPass, infer_video).

    OpenBLAS splits a long dot product between its threads, so its sum, and a fit's scale and shift with it, depend
    on how many there are: at one thread pass 1 gives the same bits as the single pass, on any host."""
    return _BLAS.held(1)


@contextlib.contextmanager
def host_threads(threads: int = 1) -> Iterator[None]:
    """torch's and numpy's BLAS threads bounded to `threads` for the host's own work (pass 1 of the merge), and put
    back after.

    torch's count acts per thread (OpenMP: a thread keeps the count it had at its first parallel op, and a new thread
    takes the last one set, so the EarlyMerge thread that `vda depth` starts inside runs pass 1 at `threads`): the
    thread that bounds it puts its own back. OpenBLAS's count is the process's: it is held while any caller is inside
    and put back when the last one leaves.

    Pass 1 is a chain of small steps, one window after another: each library's idle threads spin between them and
    take the cores the workers' decoders want. On one simulated device at 7.5 ms/frame (2,000 frames of 1080p, 2-core
    build machine) the `vda depth` process used 13.0-13.6 s of CPU at the libraries' defaults and 6.4-6.8 s with one
    thread each, and the run's wall time fell from 48.1 to 44.6 s.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with _BLAS.held(threads):
            yield
    finally:
        torch.set_num_threads(before)


# glibc's mallopt parameters (malloc.h), and the largest mmap threshold it takes on 64-bit (HEAP_MAX_SIZE / 2)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 << 20


def keep_freed_memory(threshold: int = MMAP_THRESHOLD_MAX) -> bool:
    """Let glibc keep freed blocks up to `threshold` bytes for reuse, instead of returning them to the kernel.

    A renderer allocates a few full-size frames per output frame (3.7 MB each at 1280x720 float32) and frees them at
    once. glibc's default trims the heap top back to the kernel whenever 2x its mmap threshold lies free, so each new
    frame is faulted in and zeroed again by the kernel. Fixing both thresholds keeps the process's peak as it is (the
    same blocks come back) and spares most of that system time: rendering 858 frames of 1280x720 npy on one core took
    78,517 minor faults and 3.8 s of system time with it, against 99,366 and 6.1 s without (the process's whole run,
    imports included; 2-core build machine). A worker (`vda work`, a Ray actor) allocates a decoded frame per frame and
    a piece per window: on one simulated device over 2,000 frames of 1080p its minor faults fell from 271k to 136k and
    its system time from 5.2 to 3.8 s. False where this is not glibc (musl, macOS): nothing changes there.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, 4 * threshold))


def gpu_env(index: int, parent_env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Environment for a worker that must see only GPU `index`, numbered as this process sees the GPUs.

    The worker then opens a context on that GPU only (as `cuda:0`): no memory on the others, and it works on GPUs in
    EXCLUSIVE_PROCESS mode. An index goes through this process's own CUDA_VISIBLE_DEVICES (ids or UUIDs) when one is
    set, and the order is the PCI bus order, which is what nvidia-smi and Docker's --gpus device ids number; CUDA's
    default order (fastest first) could give another card.
    """
    physical = str(index)
    if "CUDA_VISIBLE_DEVICES" in parent_env:
        visible = [v.strip() for v in parent_env["CUDA_VISIBLE_DEVICES"].split(",") if v.strip()]
        if not visible:
            raise UsageError("CUDA_VISIBLE_DEVICES is empty, so no GPU is visible; unset it, or use --devices cpu")
        if not 0 <= index < len(visible):
            raise UsageError(
                f"GPU {index} requested but CUDA_VISIBLE_DEVICES={parent_env['CUDA_VISIBLE_DEVICES']!r} shows "
                f"{len(visible)} GPU(s); use ids 0..{len(visible) - 1} or unset CUDA_VISIBLE_DEVICES"
            )
        physical = visible[index]
    # A parent that set its own order read its CUDA_VISIBLE_DEVICES in that order: keep it for the same card.
    return {"CUDA_VISIBLE_DEVICES": physical, "CUDA_DEVICE_ORDER": parent_env.get("CUDA_DEVICE_ORDER", "PCI_BUS_ID")}
