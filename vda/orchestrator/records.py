"""RUN_DIR/processing_results.json: what the queue saw, per device, per video and per unit.

The queue changes these records as events come; `RunRecord` turns them into the file (`results`) and writes it when
something changed, at most every SAVE_INTERVAL_S, and at the end. vda.report reads it.
"""

from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass, field

from vda.core.plan import Plan
from vda.files import write_json
from vda.io.rundir import RunDir
from vda.orchestrator.backends.base import VideoRun

RESULTS_SCHEMA = 1
# processing_results.json at 10,000 units is about 4 MB and 0.1 s of serialising: written at most this often while
# the run goes on (and at once at its end), so that a batch of thousands of units spends no real time on its record.
SAVE_INTERVAL_S = 5.0
KEPT_ERRORS, ERROR_CHARS = 8, 500  # what a unit's record keeps of its errors: the first ones, each cut to a line

Key = tuple[int, int]  # (video's position in the batch, unit index)


@dataclass
class QueuedVideo:
    """A video in the queue: its run and plan, and what happened to it."""

    run: VideoRun
    plan: Plan
    status: str = "pending"  # pending, computed (every unit stored), merged, failed
    error: str | None = None
    log: str | None = None
    units_done: int = 0
    merge_node: str | None = None  # where it was merged, where a backend spans hosts (Ray: a node id, or "driver")
    merge_times: tuple[float, float] | None = None  # its merge's start and end (epoch seconds), for the report

    @property
    def name(self) -> str:
        return self.run.name


@dataclass
class UnitRecord:
    video: str
    unit: int
    status: str = "pending"  # pending, running, done, stored (by an earlier run), failed, dropped (its video failed)
    attempts: int = 0
    devices: list[str] = field(default_factory=list)  # one entry per attempt
    nodes: list[str] = field(default_factory=list)  # per attempt, where a backend spans hosts (Ray: the node id)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    frames: int = 0
    computed_frames: int = 0
    fp32_recomputes: int = 0
    device_bound: bool = False  # the last failure was out of memory: wait for a device not tried yet
    stored_by: str | None = None  # who wrote its pieces, where a backend spans hosts (Ray: a node id, or "driver")
    # Per attempt, for the report's timeline: {"slot", "node", "start", "end"} in seconds since the run began (end
    # None while it runs); the start is when the worker began it (its Ready), or, for a finished unit, its end less
    # its time.
    spans: list[dict] = field(default_factory=list)

    def begin_attempt(self, device: str, slot: int, node: str | None, now: float) -> None:
        """Handed to the worker in `slot` on `device` (`node`: known once the worker said Ready)."""
        self.status, self.attempts = "running", self.attempts + 1
        self.devices.append(device)
        self.spans.append({"slot": slot, "node": node, "start": now, "end": None})
        if node:
            self.nodes.append(node)

    def undo_attempt(self) -> None:
        """Handed to a worker that never began it: pending again, and not an attempt."""
        self.status, self.attempts = "pending", self.attempts - 1
        self.devices.pop()
        del self.nodes[len(self.devices) :]
        del self.spans[len(self.devices) :]

    def note_error(self, text: str) -> None:
        """Bounded: a unit that kills its workers forever does not grow its record."""
        if len(self.errors) < KEPT_ERRORS:
            self.errors.append(text[:ERROR_CHARS])


@dataclass
class DeviceRecord:
    slot: int
    device: str
    log: str
    units: int = 0
    frames: int = 0
    computed_frames: int = 0
    seconds: float = 0.0  # summed unit times (compute and store) of the units it finished
    failures: int = 0  # units that failed on it, and worker deaths
    worker_starts: int = 0
    exit_codes: list[int] = field(default_factory=list)
    retired: str | None = None  # why this device takes no more work
    micro_batch: int | None = None  # the micro-batch its units were last computed with (halved after out of memory)
    fp32_switch: str | None = None  # why its worker computes in fp32 for the rest of the run


class RunRecord:
    """The records of one run and their file. `videos` is the queue's own list (it grows as inputs are planned)."""

    def __init__(self, root: RunDir, videos: list[QueuedVideo], devices: list[str]):
        self.root, self.videos = root, videos
        self.devices = [
            DeviceRecord(s, d, str(root.worker_log(s).relative_to(root.path))) for s, d in enumerate(devices)
        ]
        self.units: dict[Key, UnitRecord] = {}
        self.refused: list[dict] = []  # inputs that never reached the queue (batch.Refused)
        self.started = time.time()  # when the run began (the batch sets its own start, planning included)
        self.context: dict = {}  # what the batch adds to the record (backend, format, output size), for the report
        self.finished = False  # set by the batch once every merge is over: the record is final
        self.changed = True  # something changed since the file was last written
        self._cpu0 = host_cpu()
        self._saved, self._save_cost = 0.0, 0.0

    def now(self) -> float:
        """Seconds since the run began, as the spans hold them."""
        return round(time.time() - self.started, 3)

    def span(self, key: Key, start: float | bool = False, end: bool = False) -> None:
        """Time the current attempt of a unit: its start (now, or the time given), its end (now), for the report."""
        spans, now = self.units[key].spans, self.now()
        if not spans or spans[-1]["end"] is not None:
            return
        if start is not False:
            spans[-1]["start"] = now if start is True else round(max(start, 0.0), 3)
        if end:
            spans[-1]["end"] = now

    def results(self) -> dict:
        """The content of processing_results.json."""
        done = [u for u in self.units.values() if u.status == "done"]
        produced, computed = sum(u.frames for u in done), sum(u.computed_frames for u in done)
        return {
            "schema_version": RESULTS_SCHEMA,
            # When the run began and this record was written (epoch seconds), whether it is final, and the host's CPU
            # seconds since the queue began (this process and the children it reaped: local workers, merges).
            "run": {
                "started": round(self.started, 3),
                "updated": round(time.time(), 3),
                "finished": self.finished,
                "host_cpu_s": round(host_cpu() - self._cpu0, 3),
                **self.context,
            },
            "computed_over_produced": round(computed / produced, 4) if produced else None,
            "devices": [asdict(r) for r in self.devices],
            "videos": [self._video(v) for v in self.videos] + self.refused,
            "units": [dict(vars(u)) for u in self.units.values()],  # shallow: asdict deep-copies 10,000 records
        }

    def _video(self, v: QueuedVideo) -> dict:
        return {
            "name": v.name,
            "input": str(v.run.input),
            "run_dir": str(v.run.folder.path),
            "status": v.status,
            "units": len(v.plan.units),
            "frames": v.plan.frame_count,
            "error": v.error,
            "log": v.log,
            "merge_node": v.merge_node,
            "out": str(v.run.out) if v.run.out else None,
            "merge": [round(t - self.started, 3) for t in v.merge_times] if v.merge_times else None,
        }

    def save(self, force: bool = False) -> None:
        """Write the file when something changed, at most every SAVE_INTERVAL_S, and never more than a twentieth of
        the loop's time (at 10,000 units a write takes a good part of a second on a loaded host, which would delay
        every Ready behind it); `force`: now (the end)."""
        now = time.time()
        if force or (self.changed and now - self._saved >= max(SAVE_INTERVAL_S, 20 * self._save_cost)):
            self.changed = False
            write_json(self.root.results, self.results())
            self._saved, self._save_cost = time.time(), time.time() - now


def host_cpu() -> float:
    """CPU seconds of this process and of its reaped children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
