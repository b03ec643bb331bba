"""The worker's two entry points: `vda work --device D` serving the host over stdin, and `vda work RUN_DIR...`
computing runs without a host."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from vda import config, events
from vda.core.plan import Plan, PlanError
from vda.device.clock import STAGES, StageClock
from vda.device.protocol import _emit, say
from vda.device.unit import DeviceOutOfMemory
from vda.device.worker import DeviceWorker
from vda.files import write_json
from vda.io.pieces import UnitStore
from vda.io.rundir import RunDir


def serve_stdin(device: str, **options) -> None:
    """`vda work --device D`: serve the host over stdin and stdout until it says Stop or goes away. With
    VDA_STAGE_TIMES, its stage times go to `<VDA_STAGE_TIMES>.<pid>.json` (several workers serve one `vda depth`)."""
    worker = DeviceWorker(device, _emit, **options)
    stage_times = config.current().stage_times
    worker.clock = StageClock(enabled=bool(stage_times))
    worker.serve(sys.stdin)
    if stage_times:  # serve returns once every store is done: every hand-off is timed
        write_stage_times(Path(f"{stage_times}.{os.getpid()}.json"), device, worker.clock)


def work_runs(run_dirs: list[str], device: str, *, input_path: str | None = None, **options) -> int:
    """`vda work RUN_DIR... --device D`: compute every unfinished unit of these runs here, without a host.

    The first unit error ends the command, as one line; returns the number of units computed.
    """
    failures: list[events.Failed] = []

    def emit(message: events.Message) -> None:
        if isinstance(message, events.Failed):
            failures.append(message)
        if isinstance(message, events.Done) and message.fp32_switch:
            say(f"vda: {device}: {message.fp32_switch}")

    worker = DeviceWorker(device, emit, **options)
    stage_times = config.current().stage_times
    worker.clock = StageClock(enabled=bool(stage_times))
    count = 0
    with UnitStore() as worker.store:
        for run_dir in run_dirs:
            run = RunDir(run_dir)
            plan = Plan.load(run.path)
            for unit in run.unfinished_units(plan):
                worker.run(events.Assign(run.path.name, str(run.path), input_path or plan.input.path, unit.index))
                if failures:
                    error = DeviceOutOfMemory if failures[0].device_bound else PlanError
                    raise error(failures[0].reason)
                count += 1
    if stage_times:  # after the store thread: every hand-off is timed
        write_stage_times(Path(stage_times), device, worker.clock)
    return count


def write_stage_times(path: Path, device: str, clock: StageClock) -> None:
    """The stage times of every window a worker computed, as `make gpu-check` reads them."""
    write_json(path, {"device": device, "stages": ["window", *STAGES, "total", "gpu"], "rows": clock.rows})
