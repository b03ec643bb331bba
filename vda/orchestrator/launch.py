"""The one place that builds a device worker's command line and environment, for every backend.

A backend only says how its workers are reached: the program that runs `vda` (this Python here, `vda` inside the
image), how the worker sees the checkpoint, and which environment it adds (a local GPU worker is shown its own GPU
only, a container gets its GPU from Docker). Settings reach a worker through this command and environment, never
through the host changing its own environment.
"""

from __future__ import annotations

from dataclasses import dataclass

from vda import config
from vda.config import THREADS_ENV, Config
from vda.system import usable_cpus


@dataclass(frozen=True)
class WorkerOptions:
    """What every worker of a run is told, whichever backend starts it."""

    checkpoint: str | None = None  # an explicit checkpoint file on the host (default: the plan's, through models/)
    micro_batch: int | None = None
    compile: bool = False
    threads: int | None = None  # CPU threads per worker (default: the usable cores shared by workers of a kind)


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
    return cmd


def worker_threads(devices: list[str], device: str, cpus: int) -> int:
    """CPU threads for one worker: the usable cores shared by the workers of its kind, at least one.

    CPU workers compute on them; GPU workers decode, preprocess and store with them. Without a count each worker
    would use every core, and five GPU workers would fight over them.
    """
    same_kind = sum((d == "cpu") == (device == "cpu") for d in devices)
    return max(1, cpus // max(1, same_kind))


def worker_env(devices: list[str], device: str, options: WorkerOptions, settings: Config | None = None):
    """The variables every worker gets, on top of what its backend adds: unbuffered output, its thread count, and the
    host's fault rehearsal (vda.config.Faults) when it has one, so that failures can be rehearsed anywhere."""
    settings = settings or config.current()
    env = {"PYTHONUNBUFFERED": "1"}
    env[THREADS_ENV] = str(options.threads or worker_threads(devices, device, usable_cpus()))
    env.update(settings.faults.env())
    return env
