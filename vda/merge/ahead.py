"""Rendering ahead: a video's frames written as pass 1 reaches them, while the workers compute its later units.

Without it an hour of 1080p is rendered after its last unit, about a minute on 16 cores with the GPUs idle. A unit's
frames need only its window and the previous one, aligned by pass 1's (scale, shift), so they are final once pass 1
has passed the unit: `EarlyMerge` steps pass 1 as pieces are stored, and a `RenderAhead` hands each unit it passed
to the shared render pool. Only for outputs that need no value range (`Output.renders_ahead`): png's quantisation
range is known only once every unit is. The merge, and a resumed one, start after the units written
(RUN_DIR/rendered_ahead.json); the frames are the merge's own: the same render task, pool and alignment.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import logging
from pathlib import Path

from vda.core.plan import Plan
from vda.io.writers import LEVELS, fixed_range, output_shape
from vda.merge.first_pass import FirstPass
from vda.merge.output import Output, prepare_output, record_rendered
from vda.merge.render import POOL, job_for, render_processes, render_unit

log = logging.getLogger(__name__)


class RenderAhead:
    """One video's units rendered in order as its pass 1 passes them, at most one task per render process in flight.

    A task that fails stops the rendering ahead of this video: its merge renders from the first unit not written,
    and reports the error there. `stop()` waits for the tasks in flight and records the units written.
    """

    def __init__(self, run_dir: Path, plan: Plan, output: Output):
        self.run_dir, self.plan, self.output = Path(run_dir), plan, output
        s = plan.settings
        job = job_for(plan, run_dir, Path(output.out_dir), output.fmt, False)
        out_size = output_shape(output.output_size, job.size, (s.net_height, s.net_width))
        quant = fixed_range(output.png_scale, LEVELS[output.fmt]) if output.png_scale is not None else None
        self.job = dataclasses.replace(job, out_size=out_size, quant=quant)
        self.units = list(job.pieces)
        self.workers = render_processes(output.workers, plan.frame_count * out_size[0] * out_size[1], len(self.units))
        self.done = prepare_output(self.run_dir, plan, output)  # units written before (an earlier run of this one)
        self._params: dict[int, tuple[float, float]] = {}
        self._pending: collections.deque[cf.Future] = collections.deque()
        self.failed = False

    @classmethod
    def worth_it(cls, plan: Plan, output: Output) -> bool:
        """Whether to render ahead: an output that needs no range, and a video that the merge renders on a pool
        (a small one renders in the merge's own process faster than a pool starts: render.POOL_MIN_PIXELS)."""
        if not output.renders_ahead:
            return False
        pixels = plan.frame_count * plan.settings.frame_height * plan.settings.frame_width
        return render_processes(output.workers, pixels, len(plan.all_pieces())) > 1

    def step(self, first: FirstPass) -> bool:
        """Collect the tasks finished (in order) and submit the units pass 1 has passed; whether anything moved."""
        moved = self._collect(wait=False)
        if self.failed:
            return moved
        for entry in first.entries[len(self._params) :]:
            self._params[entry["unit"]] = (entry["scale"], entry["shift"])
        pool = None
        while len(self._pending) < self.workers and self.done + len(self._pending) < len(first.entries):
            unit = self.units[self.done + len(self._pending)]
            pool = pool or POOL.get(self.workers)
            job = dataclasses.replace(self.job, params=self._params).for_unit(unit)
            self._pending.append(pool.submit(render_unit, job, unit))
            moved = True
        return moved

    def stop(self) -> None:
        """Wait for the tasks in flight (the merge, or the next run, starts after the units they write)."""
        self._collect(wait=True)

    def _collect(self, wait: bool) -> bool:
        written = 0
        while self._pending and (wait or self._pending[0].done()):
            future = self._pending.popleft()
            try:
                future.result()
            except Exception as err:  # noqa: BLE001 - the merge renders this unit again and reports its error
                log.info("%s: rendering ahead stopped at unit %d: %s", self.run_dir, self.done, err)
                self.failed = True
                for later in self._pending:
                    later.cancel()
                wait = True  # the tasks already running still finish; none of them counts
                continue
            if not self.failed:
                written += 1
        if written:
            self.done += written
            record_rendered(self.run_dir, self.plan, self.output, self.done)
        return written > 0
