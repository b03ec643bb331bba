"""The one place that builds a device worker's command line and environment, for every backend.

A backend only says how its workers are reached: the program that runs `vda` (this Python here, `vda` inside the
image), how the worker sees the checkpoint, and which environment it adds (a local GPU worker is shown its own GPU
only, a container gets its GPU from Docker). Settings reach a worker through this command and environment, never
through the host changing its own environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from vda import config
from vda.config import CUDNN_DETERMINISTIC_ENV, ONNX_CACHE_ENV, THREADS_ENV, Config
from vda.system import usable_cpus

ALLOC_ENV = "PYTORCH_CUDA_ALLOC_CONF"
# Expandable segments let torch's allocator grow a block instead of failing on fragmentation, which a worker computing
# windows of several shapes (a batch of videos) meets; a user's own setting wins.
GPU_ALLOC_CONF = "expandable_segments:True"
COMPILE_CACHE_MOUNT = "/vda-compile-cache"  # where a container sees the host's compile cache (vda.config)
ONNX_CACHE_MOUNT = "/vda-onnx-cache"  # where a container sees the host's export cache of --runtime onnx


@dataclass(frozen=True)
class WorkerOptions:
    """What every worker of a run is told, whichever backend starts it."""

    checkpoint: str | None = None  # an explicit checkpoint file on the host (default: the plan's, through models/)
    micro_batch: int | None = None
    compile: bool = False
    threads: int | None = None  # CPU threads per worker (default: the usable cores shared by workers of a kind)
    runtime: str = "torch"  # what computes the network: torch, or onnx (ONNX Runtime)


def inner_device(device: str) -> str:
    """The device as the worker names it: a GPU worker sees only its own GPU, as cuda:0."""
    return "cuda:0" if device.startswith("cuda") else device


def worker_command(
    program: list[str], device: str, slot: int, options: WorkerOptions, checkpoint: str | None
) -> list[str]:
    """`vda work` for the worker in `slot` on `device`; `checkpoint` is options.checkpoint as the worker sees it."""
    cmd = [*program, "work", "--device", inner_device(device), "--slot", str(slot)]
    if checkpoint:
        cmd += ["--checkpoint", checkpoint]
    if options.micro_batch:
        cmd += ["--micro-batch", str(options.micro_batch)]
    if options.compile:
        cmd += ["--compile"]
    if options.runtime != "torch":
        cmd += ["--runtime", options.runtime]
    return cmd


def worker_threads(devices: list[str], device: str, cpus: int) -> int:
    """CPU threads for one worker: the usable cores shared by the workers of its kind, at least one.

    CPU workers compute on them; GPU workers decode, preprocess and store with them. Without a count each worker
    would use every core, and five GPU workers would fight over them.
    """
    same_kind = sum((d == "cpu") == (device == "cpu") for d in devices)
    return max(1, cpus // max(1, same_kind))


def compile_cache_env(folder: Path | str) -> dict[str, str]:
    """Where torch.compile keeps what it built (inductor's kernels, Triton's binaries): one folder shared by every
    worker of a host and by later runs, so only the first worker of the first run pays for the compilation."""
    return {"TORCHINDUCTOR_CACHE_DIR": f"{folder}/inductor", "TRITON_CACHE_DIR": f"{folder}/triton"}


def worker_env(
    devices: list[str],
    device: str,
    options: WorkerOptions,
    settings: Config | None = None,
    parent_env: Mapping[str, str] = os.environ,
    compile_cache: Path | str | None = None,
    onnx_cache: Path | str | None = None,
):
    """The variables every worker gets, on top of what its backend adds: unbuffered output, its thread count, and the
    host's fault rehearsal (vda.config.Faults) when it has one, so that failures can be rehearsed anywhere. GPU
    workers get expandable allocator segments (unless `parent_env` has its own PYTORCH_CUDA_ALLOC_CONF, which is
    passed on) and the cuDNN setting; --compile gets the shared compile cache (`compile_cache` as the worker sees
    it, default the host's folder)."""
    settings = settings or config.current()
    env = {"PYTHONUNBUFFERED": "1"}
    env[THREADS_ENV] = str(options.threads or worker_threads(devices, device, usable_cpus()))
    env.update(settings.faults.env())
    if device.startswith("cuda"):
        env[ALLOC_ENV] = parent_env.get(ALLOC_ENV, GPU_ALLOC_CONF)
        if settings.cudnn_deterministic:
            env[CUDNN_DETERMINISTIC_ENV] = "1"
    if options.compile:
        env.update(compile_cache_env(compile_cache or settings.compile_cache))
    if options.runtime == "onnx":  # one export per checkpoint and size, shared by every worker and later runs
        env[ONNX_CACHE_ENV] = str(onnx_cache or settings.onnx_cache)
    return env


def compile_shape_warning(shapes: set[tuple[int, int]], limit: int | None) -> str | None:
    """One line when a batch under --compile has more network shapes than dynamo keeps graphs for: past the limit
    dynamo stops compiling and those windows run eagerly, which --compile would otherwise hide."""
    if limit is None or len(shapes) <= limit:
        return None
    return (
        f"vda: warning: --compile: this batch has {len(shapes)} network shapes (one per video resolution), more than "
        f"torch.compile's recompile limit ({limit}); videos past it run uncompiled: batch videos of one resolution, "
        "or set --max-res so that they share one"
    )
