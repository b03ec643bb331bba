"""Facts about the machine a process runs on."""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
from collections.abc import Iterator, Mapping
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


# (get, set) of an OpenBLAS's thread count, by the names its builds export: plain, and numpy's wheels' scipy-openblas
_OPENBLAS_THREADS = (
    ("openblas_get_num_threads", "openblas_set_num_threads"),
    ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
    ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
)


def loaded_openblas() -> list[tuple]:
    """(get, set) of the thread count of every OpenBLAS this process has loaded (numpy's, found in /proc/self/maps);
    empty where there is none or this is not Linux. numpy has no call for it, and its environment variables are read
    once, when the library loads."""
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    found = []
    for path in sorted({line.split()[-1] for line in maps if "openblas" in line.rsplit("/", 1)[-1].lower()}):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        found += [(getattr(lib, get), getattr(lib, put)) for get, put in _OPENBLAS_THREADS if hasattr(lib, get)][:1]
    return found


@contextlib.contextmanager
def host_threads(threads: int = 1) -> Iterator[None]:
    """torch's and numpy's BLAS threads bounded to `threads` for the host's own work (pass 1 of the merge), and put
    back after.

    Pass 1 is a chain of small steps, one window after another: each library's idle threads spin between them and
    take the cores the workers' decoders want. On one simulated device at 7.5 ms/frame (2,000 frames of 1080p, 2-core
    build machine) the `vda depth` process used 13.0-13.6 s of CPU at the libraries' defaults and 6.4-6.8 s with one
    thread each, and the run's wall time fell from 48.1 to 44.6 s. One thread also makes pass 1's sums, and so its
    bits, the same on every host, whatever its core count.
    """
    import torch

    blas = loaded_openblas()
    before = torch.get_num_threads(), [get() for get, _ in blas]
    torch.set_num_threads(threads)
    for _, put in blas:
        put(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        for (_, put), count in zip(blas, before[1]):
            put(count)


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
