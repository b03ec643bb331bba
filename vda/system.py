"""Facts about the machine a process runs on."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """CPUs this process may run on: a cpuset (docker --cpuset-cpus, taskset, Slurm) can allow fewer than exist.

    os.cpu_count() counts the machine's CPUs, so sizing pools by it oversubscribes a restricted process.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)
