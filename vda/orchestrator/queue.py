"""The work queue: every unit of every video of a batch, shared by one long-lived worker per device.

A worker asks for work (events.Ready) as it starts a unit and gets the next one, which it starts decoding ahead; a
fast device therefore takes more units than a slow one, and a run of many short videos keeps every device busy. A
device much slower than the fastest (SLOW_FACTOR) gets no unit ahead, so that it never sits on one. Units are
handed out in batch order, so the first video is done first and its merge (`on_computed`) runs on spare CPU while
the devices go on with the others.

Failures stay as small as they can be:
- A unit that fails (events.Failed) or whose worker dies goes back to the front of the queue and is retried, on a
  device it has not tried when one is free, at most `retries` more times. Out of memory is device-bound: such a unit
  waits for a device it has not tried, and fails once every device has.
- A unit out of retries fails its video only: the video's other units are dropped, every other video goes on.
- A worker that dies is restarted on its device. A death during a unit is charged to that unit (an attempt, so a
  video whose units crash workers fails alone); a unit it had only been handed ahead, and not begun, goes back to the
  queue without counting. A device whose worker dies RESTARTS times in a row outside any unit, or inside RESTARTS
  different units in a row (a sticky CUDA error, Xid, ECC), or cannot start at all (START_FAILED), or whose model
  does not fit (events.Failed with retire: that unit is not charged), is retired, and the others carry on.
- Out of memory is first retried by the worker itself, with half the micro-batch; the micro-batch that worked is
  recorded per device and sent with every later unit (a restarted worker keeps it). A worker that switched to fp32
  (fp16 overflowing window after window) says why once, and its device's record keeps it.

The backend is only asked to start, message and stop workers (vda.orchestrator.backends.base). Everything the queue saw
is in RUN_DIR/processing_results.json: per device, per video and per unit, written when something changed, at most
every SAVE_INTERVAL_S, and at the end.

Every event costs the same at 10 units or 100,000 (bench/bench_scale.py): pending units are indexed by video (a
failed video's units leave at once) and kept apart from the few that came back from a failure, which alone carry a
device constraint (a unit out of memory waits for a device it has not tried), so no turn of the loop scans them all.
"""

from __future__ import annotations

import logging
import queue
import resource
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial

from vda import events
from vda.core.plan import Plan
from vda.errors import RunError
from vda.files import write_json
from vda.io.probe import COUNT_MISMATCH
from vda.io.rundir import RunDir
from vda.orchestrator.backends.base import START_FAILED, Backend, VideoRun, WorkerHandle
from vda.orchestrator.planning import require_decode
from vda.orchestrator.progress import BatchProgress

RESULTS_SCHEMA = 1
log = logging.getLogger(__name__)
STOP_WAIT_S = 60  # how long workers get to finish their stores after Stop
RESTARTS = 3  # a device whose worker dies this many times in a row outside any unit is retired
SLOW_FACTOR = 1.5  # a device this many times slower per unit than the fastest gets no unit ahead
# processing_results.json at 10,000 units is about 4 MB and 0.1 s of serialising: written at most this often while
# the run goes on (and at once at its end), so that a batch of thousands of units spends no real time on its record.
SAVE_INTERVAL_S = 5.0
KEPT_ERRORS, ERROR_CHARS = 8, 500  # what a unit's record keeps of its errors: the first ones, each cut to a line


class RunFailed(RunError):
    """The run could not go on (no device left); the message names the cause and the log to read."""


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


Key = tuple[int, int]  # (video's position in the batch, unit index)


class PendingUnits:
    """The units waiting for a device, in the order they are handed out: the ones back from a failure or a dead worker
    first (front first), then the fresh ones in batch order. Fresh units are indexed by video, so taking one and
    dropping a failed video are O(1); only the units that came back (a handful: failures are rare) are scanned, for
    the one that suits the asking device."""

    def __init__(self):
        self._fresh: dict[int, deque[int]] = {}  # video -> its untried units, in order; videos in batch order
        self.again: deque[Key] = deque()  # back from a failure or a dead worker
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, vi: int, unit: int) -> None:
        """A fresh unit, after every unit added before it."""
        self._fresh.setdefault(vi, deque()).append(unit)
        self._count += 1

    def push_front(self, key: Key) -> None:
        self.again.appendleft(key)
        self._count += 1

    def take(self, suits: Callable[[Key], bool], untried: Callable[[Key], bool]) -> Key | None:
        """The first unit that came back and that `suits` the device and it has not `untried`, else the first fresh
        one, else the first that came back and suits it; None when none suits."""
        key = next((k for k in self.again if suits(k) and untried(k)), None)
        if key is None and self._fresh:
            vi = next(iter(self._fresh))
            units = self._fresh[vi]
            key = (vi, units.popleft())
            if not units:
                del self._fresh[vi]
            self._count -= 1
            return key
        key = key or next((k for k in self.again if suits(k)), None)
        if key is not None:
            self.again.remove(key)
            self._count -= 1
        return key

    def drop_video(self, vi: int) -> None:
        self._count -= len(self._fresh.pop(vi, ()))
        kept = deque(k for k in self.again if k[0] != vi)
        self._count -= len(self.again) - len(kept)
        self.again = kept


@dataclass
class _Worker:
    handle: WorkerHandle
    wants: bool = False  # said Ready and has not been given a unit since
    running: list[tuple[int, int]] = field(default_factory=list)  # (video, unit) assigned and not yet Done/Failed
    started: set[tuple[int, int]] = field(default_factory=set)  # of those, the ones it began (a Ready followed)


class WorkQueue:
    """Runs every unfinished unit of `videos` on `devices` through `backend` (see the module docstring)."""

    def __init__(
        self,
        videos: list[QueuedVideo],
        backend: Backend,
        devices: list[str],
        root: RunDir,
        *,
        retries: int = 2,
        progress: BatchProgress | None = None,
        on_computed: Callable[[QueuedVideo], None] = lambda video: None,
        poll_interval: float = 0.2,
        stream=sys.stderr,
    ):
        self.videos, self.backend, self.devices, self.root = videos, backend, devices, root
        self.retries, self.on_computed, self.poll_interval, self.stream = retries, on_computed, poll_interval, stream
        self.progress = progress or BatchProgress([v.plan for v in videos], stream=stream)
        self.inbox: queue.Queue = queue.Queue()  # (slot, worker generation, line) from the pump threads
        self.units: dict[Key, UnitRecord] = {}
        self.pending = PendingUnits()
        for vi, video in enumerate(videos):
            self._index(vi, video)
        # Videos planned after the queue began (vda.orchestrator.batch.Planner): each call returns those planned since
        # the last one, None once no more will come.
        self.incoming: Callable[[], list[QueuedVideo] | None] = lambda: None
        self._expecting = True
        self.records = [
            DeviceRecord(s, d, str(root.worker_log(s).relative_to(root.path))) for s, d in enumerate(devices)
        ]
        self.refused: list[dict] = []  # inputs that never reached the queue (batch.Refused), for the record
        self.started = time.time()  # when the run began (the batch sets its own start, planning included)
        self.context: dict = {}  # what the batch adds to the record (backend, format, output size), for the report
        self.finished = False  # set by the batch once every merge is over: the record is final
        self._cpu0 = _host_cpu()
        self.progress.stored(sum(v.units_done for v in videos))
        self.workers: dict[int, _Worker] = {}
        self._generation = dict.fromkeys(range(len(devices)), 0)
        self._streak = dict.fromkeys(range(len(devices)), 0)  # deaths in a row, outside any unit, per slot
        self._saved, self._changed, self._save_cost = 0.0, True, 0.0
        self._died_in: dict[int, set] = {slot: set() for slot in range(len(devices))}  # units, since its last Done

    def _index(self, vi: int, video: QueuedVideo) -> None:
        """Its units, pending unless an earlier run stored them."""
        unfinished = {u.index for u in video.run.run.unfinished_units(video.plan)}
        for unit in video.plan.units:
            record = UnitRecord(video.name, unit.index, frames=unit.produced_frames)
            self.units[vi, unit.index] = record
            if unit.index in unfinished:
                self.pending.add(vi, unit.index)
            else:
                record.status = "stored"
                video.units_done += 1

    def add(self, video: QueuedVideo) -> None:
        """A video planned while the queue runs: its units go after every unit queued so far."""
        vi = len(self.videos)
        self.videos.append(video)
        self._index(vi, video)
        self.progress.add(video.plan)
        self.progress.stored(video.units_done)
        self._changed = True
        if video.units_done == len(video.plan.units):
            self._computed(vi)

    def _arrivals(self) -> None:
        if self._expecting:
            new = self.incoming()
            self._expecting = new is not None
            for video in new or []:
                self.add(video)

    # -- the loop ------------------------------------------------------------------------------------
    def run(self) -> None:
        """Until every unit is stored or its video failed. On any exception (also Ctrl-C) every worker is stopped."""
        self.root.logs.mkdir(parents=True, exist_ok=True)
        for vi, video in enumerate(self.videos):
            if video.units_done == len(video.plan.units):
                self._computed(vi)
        try:
            while self.pending or any(w.running for w in self.workers.values()) or self._expecting:
                self._arrivals()
                self._staff()
                self._drain()
                self._reap()
                self._assign()
                if self.pending and all(r.retired for r in self.records):
                    self._out_of_devices()
                self._give_up_unrunnable()
                self._save()
            self._shutdown()
        finally:
            _stop_all([w.handle for w in self.workers.values()])
            self._save(force=True)
        self.progress.render(final=True)

    def _start(self, slot: int) -> None:
        record = self.records[slot]
        self._generation[slot] += 1
        generation = self._generation[slot]
        record.worker_starts += 1
        log.info("starting worker %d on %s (start %d)", slot, record.device, record.worker_starts)
        handle = self.backend.start_worker(
            slot, record.device, self.root.worker_log(slot), lambda line: self.inbox.put((slot, generation, line))
        )
        self.workers[slot] = _Worker(handle)

    def _staff(self) -> None:
        """A worker on every device not retired, while there is work: at the start, and after a worker died."""
        if self.pending:
            for slot, record in enumerate(self.records):
                if slot not in self.workers and not record.retired:
                    self._start(slot)

    def _drain(self, wait: bool = True) -> None:
        """Handle the messages the workers sent since the last round (waiting up to one poll interval for one)."""
        timeout = self.poll_interval if wait else 0
        while True:
            try:
                slot, generation, line = self.inbox.get(timeout=timeout)
            except queue.Empty:
                return
            timeout = 0
            if generation != self._generation[slot] or slot not in self.workers:
                continue  # from a worker that has since been replaced
            self._changed = True
            try:
                message = events.decode(line)
            except ValueError as err:
                print(f"\nvda: worker {slot}: {err}", file=self.stream)
                continue
            if isinstance(message, events.Ready):  # it wants a unit, having begun the oldest one it held
                worker = self.workers[slot]
                worker.wants = True
                begun = next(([k] for k in worker.running if k not in worker.started), [])
                worker.started.update(begun)
                for key in begun:
                    self._span(key, start=True)
                self._assign()  # at once: the worker decodes its next unit ahead only if it comes in time
            elif isinstance(message, events.Done):
                self._done(slot, message)
            elif isinstance(message, events.Failed) and message.retire:
                self._retire_on_failure(slot, message)
            elif isinstance(message, events.Failed):
                self._failed(slot, message.video, message.unit, message.reason, message.device_bound)

    def _done(self, slot: int, message: events.Done) -> None:
        log.debug("unit %s:%d done on worker %d", message.video, message.unit, slot)
        record, key = self.records[slot], self._settle(slot, message.video, message.unit)
        if key is None:
            return
        self._streak[slot] = 0
        self._died_in[slot].clear()
        if message.micro_batch:
            record.micro_batch = message.micro_batch
        if message.fp32_switch and not record.fp32_switch:
            record.fp32_switch = message.fp32_switch
            print(f"\nvda: {record.device}: {message.fp32_switch}", file=self.stream)
        unit, video = self.units[key], self.videos[key[0]]
        if unit.status not in ("running", "dropped"):
            return
        unit.status, unit.seconds = "done", message.seconds
        self._span(key, start=time.time() - self.started - message.seconds, end=True)
        unit.computed_frames, unit.fp32_recomputes = message.computed, message.fp32_recomputes
        record.units += 1
        record.frames += message.frames
        record.computed_frames += message.computed
        record.seconds += message.seconds
        video.units_done += 1
        if message.computed:
            unit.stored_by = getattr(self.workers[slot].handle, "stored_by", None) if slot in self.workers else None
            node = getattr(self.workers[slot].handle, "node", None) if slot in self.workers else None
            self.progress.unit_done(key[0], message.frames, message.fp32_recomputes, record.device, node)
        else:  # stored by an earlier attempt: not this run's work, so not in its rate
            self.progress.stored(1)
        if video.units_done == len(video.plan.units):
            self._computed(key[0])

    def _computed(self, vi: int) -> None:
        video = self.videos[vi]
        video.status = "computed"
        self.on_computed(video)

    def _failed(self, slot: int, video_name: str, unit_index: int, reason: str, device_bound: bool) -> None:
        log.info("unit %s:%d failed on worker %d: %s", video_name, unit_index, slot, reason)
        key = self._settle(slot, video_name, unit_index)
        if key is not None:
            self._retry(key, self.records[slot], reason, device_bound)

    def _retire_on_failure(self, slot: int, message: events.Failed) -> None:
        """The worker cannot compute anything (its model did not fit): retire its device, in one line; the unit was
        never begun, so it goes back to the queue uncharged. The worker exits by itself."""
        record = self.records[slot]
        key = self._settle(slot, message.video, message.unit)
        if key is not None and self.units[key].status == "running":
            self._unassign(key)
        if not record.retired:
            record.retired = message.reason
            print(f"\nvda: {record.device}: {record.retired}; the other devices go on", file=self.stream)

    def _unassign(self, key: Key) -> None:
        """A unit handed to a worker that never began it: back to the front of the queue, not an attempt."""
        unit = self.units[key]
        unit.status, unit.attempts = "pending", unit.attempts - 1
        unit.devices.pop()
        del unit.nodes[len(unit.devices) :]
        del unit.spans[len(unit.devices) :]
        self.pending.push_front(key)

    def _settle(self, slot: int, video_name: str, unit_index: int) -> Key | None:
        """The unit a worker reports on, no longer held by it; None if it holds no such unit."""
        worker = self.workers[slot]
        key = next((k for k in worker.running if self.videos[k[0]].name == video_name and k[1] == unit_index), None)
        if key is not None:
            worker.running.remove(key)
            worker.started.discard(key)
        return key

    def _retry(self, key: Key, record: DeviceRecord, reason: str, device_bound: bool) -> None:
        """A unit failed on `record`'s device: back to the front of the queue, or, out of retries, fail its video."""
        unit, video = self.units[key], self.videos[key[0]]
        record.failures += 1
        self._span(key, end=True)
        if len(unit.errors) < KEPT_ERRORS:  # bounded: a unit that kills its workers forever does not grow its record
            unit.errors.append(f"{record.device}: {reason}"[:ERROR_CHARS])
        unit.device_bound = device_bound
        log = video.run.run.video_log
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"unit {unit.unit} attempt {unit.attempts} on {record.device}: {reason} (see {record.log})\n")
        if unit.status != "running":
            return
        if reason.startswith(COUNT_MISMATCH):  # the plan is wrong, not the unit: no retry helps, a new plan does
            require_decode(video.run.run)
            self._fail_video(key, reason, record)
            return
        tried_all = all(d in unit.devices for d in self.devices)
        if (device_bound and tried_all) or (not device_bound and unit.attempts > self.retries):
            why = "out of memory on every device" if device_bound and tried_all else f"failed {unit.attempts} time(s)"
            self._fail_video(key, f"unit {unit.unit} {why}, last on {record.device}: {reason}", record)
            return
        unit.status = "pending"
        self.pending.push_front(key)
        print(
            f"\nvda: {video.name}: unit {unit.unit} failed on {record.device} ({reason}); retrying "
            f"({unit.attempts}/{self.retries}), log: {self.root.path / record.log}",
            file=self.stream,
        )

    def _fail_video(self, culprit: Key, error: str, record: DeviceRecord | None) -> None:
        vi = culprit[0]
        video = self.videos[vi]
        video.status, video.error = "failed", error
        video.log = str(self.root.path / record.log) if record else str(video.run.run.video_log)
        for index in range(len(video.plan.units)):
            unit = self.units[vi, index]
            if unit.status in ("pending", "running"):
                unit.status = "dropped"
        self.units[culprit].status = "failed"
        self.pending.drop_video(vi)
        self.progress.video_failed(vi)
        print(f"\nvda: {video.name} failed: {error}; the other videos go on", file=self.stream)

    def _reap(self) -> None:
        """Workers that exited: their units go back to the queue; the worker is restarted or its device retired."""
        for slot, worker in list(self.workers.items()):
            code = worker.handle.poll()
            if code is None:
                continue
            self._drain(wait=False)  # what it said before it exited (poll() has read all its output)
            record = self.records[slot]
            log.info("worker %d on %s exited with %s: %s", slot, record.device, code, worker.handle.reason)
            record.exit_codes.append(code)
            del self.workers[slot]
            self._changed = True
            why = f"exit {code}: {worker.handle.reason}" if worker.handle.reason else f"exit {code}"
            for key in reversed(worker.running):
                if key in worker.started:
                    self._died_in[slot].add(key)
                    self._retry(key, record, f"the worker on {record.device} stopped ({why})", False)
                elif self.units[key].status == "running":  # handed ahead and never begun: not an attempt
                    self._unassign(key)
            if not worker.started:  # it died outside any unit: the device, not a unit, is the suspect
                record.failures += 1
                self._streak[slot] += 1
            if record.retired:  # already retired, and said so (its model did not fit)
                continue
            if code == START_FAILED:
                record.retired = f"the worker could not start ({why})"
            elif self._streak[slot] >= RESTARTS:
                record.retired = f"its worker stopped {self._streak[slot]} times in a row outside any unit ({why})"
            elif len(self._died_in[slot]) >= RESTARTS:
                record.retired = f"its worker died inside {len(self._died_in[slot])} different units in a row ({why})"
            if record.retired:
                print(f"\nvda: {record.device}: {record.retired}; the other devices go on", file=self.stream)
            else:  # _staff starts another while there is work
                print(f"\nvda: the worker on {record.device} stopped ({why})", file=self.stream)

    def _assign(self) -> None:
        for slot, worker in self.workers.items():
            if not worker.wants or not self.pending or (worker.running and self._slow(slot)):
                continue
            device = self.records[slot].device
            # A unit that failed here goes to another device when one asks; here only when nothing else is left.
            key = self.pending.take(partial(self._may_run, device=device), partial(self._untried, device=device))
            if key is None:
                continue
            self._changed = True
            unit, video = self.units[key], self.videos[key[0]]
            unit.status, unit.attempts = "running", unit.attempts + 1
            unit.devices.append(device)
            node = getattr(worker.handle, "node", None)
            unit.spans.append({"slot": slot, "node": node, "start": round(time.time() - self.started, 3), "end": None})
            if getattr(worker.handle, "node", None):  # known once the worker said Ready
                unit.nodes.append(worker.handle.node)
            worker.wants = False
            worker.running.append(key)
            path = video.run
            message = events.Assign(
                video.name,
                self.backend.worker_path(path.run.path),
                self.backend.worker_path(path.input),
                key[1],
                self.records[slot].micro_batch or 0,
            )
            worker.handle.send(message)
            log.debug("unit %s:%d -> worker %d on %s", video.name, key[1], slot, device)

    def _span(self, key: Key, start: float | bool = False, end: bool = False) -> None:
        """Time the current attempt of a unit: its start (now, or the time given), its end (now), for the report."""
        spans, now = self.units[key].spans, round(time.time() - self.started, 3)
        if not spans or spans[-1]["end"] is not None:
            return
        if start is not False:
            spans[-1]["start"] = now if start is True else round(max(start, 0.0), 3)
        if end:
            spans[-1]["end"] = now

    def _slow(self, slot: int) -> bool:
        """Whether a device is so much slower than the fastest that it should not hold a unit ahead (the worker asks
        for its next unit as it starts one, to decode it in time; a slow device would sit on it)."""
        rates = {r.slot: r.seconds / r.units for r in self.records if r.units}
        return slot in rates and rates[slot] > SLOW_FACTOR * min(rates.values())

    def _untried(self, key: Key, device: str) -> bool:
        return device not in self.units[key].devices

    def _may_run(self, key: Key, device: str) -> bool:
        """A unit that ran out of memory waits for a device it has not tried; others run anywhere."""
        unit = self.units[key]
        return not unit.device_bound or device not in unit.devices

    def _give_up_unrunnable(self) -> None:
        """Units that ran out of memory on every device not retired cannot run anywhere: fail them. Only units that came
        back from a failure can be device-bound, so only they are looked at."""
        live = [r.device for r in self.records if not r.retired]
        for key in [k for k in self.pending.again if self.units[k].device_bound]:
            if key in self.pending.again and not any(self._may_run(key, d) for d in live):
                unit = self.units[key]
                self._fail_video(key, f"unit {unit.unit} ran out of memory on {', '.join(unit.devices)}", None)

    def _out_of_devices(self) -> None:
        reasons = "; ".join(f"{r.device}: {r.retired}" for r in self.records if r.retired)
        logs = ", ".join(str(self.root.path / r.log) for r in self.records)
        raise RunFailed(
            f"no device is left to run the work ({reasons}); see {logs}, fix the cause and run the same command "
            "again to resume"
        )

    def _shutdown(self) -> None:
        """Every unit is accounted for: tell the workers to stop, and give them time to finish their stores."""
        for worker in self.workers.values():
            worker.handle.send(events.Stop())
        deadline = time.time() + STOP_WAIT_S
        while self.workers and time.time() < deadline:
            for slot, worker in list(self.workers.items()):
                code = worker.handle.poll()
                if code is not None:
                    self.records[slot].exit_codes.append(code)
                    del self.workers[slot]
            time.sleep(0.05)

    # -- the record ----------------------------------------------------------------------------------
    def results(self) -> dict:
        produced = sum(u.frames for u in self.units.values() if u.status == "done")
        computed = sum(u.computed_frames for u in self.units.values() if u.status == "done")
        videos = [
            {
                "name": v.name,
                "input": str(v.run.input),
                "run_dir": str(v.run.run.path),
                "status": v.status,
                "units": len(v.plan.units),
                "frames": v.plan.frame_count,
                "error": v.error,
                "log": v.log,
                "merge_node": v.merge_node,
                "out": str(v.run.out) if v.run.out else None,
                "merge": [round(t - self.started, 3) for t in v.merge_times] if v.merge_times else None,
            }
            for v in self.videos
        ]
        now = time.time()
        return {
            "schema_version": RESULTS_SCHEMA,
            # When the run began and this record was written (epoch seconds), whether it is final, and the host's CPU
            # seconds since the queue began (this process and the children it reaped: local workers, merges).
            "run": {
                "started": round(self.started, 3),
                "updated": round(now, 3),
                "finished": self.finished,
                "host_cpu_s": round(_host_cpu() - self._cpu0, 3),
                **self.context,
            },
            "computed_over_produced": round(computed / produced, 4) if produced else None,
            "devices": [asdict(r) for r in self.records],
            "videos": videos + self.refused,
            "units": [dict(vars(u)) for u in self.units.values()],  # shallow: asdict deep-copies 10,000 records
        }

    def save(self) -> None:
        self._save(force=True)

    def _save(self, force: bool = False) -> None:
        """Write the record when something changed, at most every SAVE_INTERVAL_S, and never more than a twentieth of
        the loop's time (the record grows with the units: at 10,000 it takes a good part of a second on a loaded
        host, which would otherwise delay every Ready behind it); `force`: now (the end)."""
        now = time.time()
        if force or (self._changed and now - self._saved >= max(SAVE_INTERVAL_S, 20 * self._save_cost)):
            self._changed = False
            write_json(self.root.results, self.results())
            self._saved, self._save_cost = time.time(), time.time() - now


def _host_cpu() -> float:
    """CPU seconds of this process and of its reaped children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _stop_all(handles: list[WorkerHandle]) -> None:
    """Stop every worker at once: one after another, each with its grace period, could outlast a SIGTERM's."""
    threads = [threading.Thread(target=h.stop, daemon=True) for h in handles]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
