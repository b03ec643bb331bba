"""Injected faults (VDA_FAIL_*): a unit or a worker made to fail on purpose, to rehearse what the host does."""

from __future__ import annotations

import os
import signal

from vda import config
from vda.device.compat import OOM_ERROR
from vda.device.protocol import say
from vda.errors import RunError
from vda.io.rundir import RunDir


class InjectedFault(RunError):
    """A failure injected on purpose (VDA_FAIL_*), to rehearse what the host does with a real one."""


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
