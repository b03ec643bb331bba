"""The work queue: every unit of every video of a batch, shared by one long-lived worker per device.

A worker asks for work (events.Ready) as it starts a unit and gets the next one, which it starts decoding ahead, so a
fast device takes more units than a slow one. Units are handed out in batch order: the first video is done first and
its merge (`on_computed`) runs on spare CPU while the devices go on with the others.

A failure stays as small as it can: a failed unit is retried elsewhere, a unit out of retries fails its video only, a
dead worker is restarted, and a device that keeps failing is retired while the others carry on. The decisions are
in vda.orchestrator.policies, the records and their file (processing_results.json) in vda.orchestrator.records; the
backend is only asked to start, message and stop workers (vda.orchestrator.backends.base).
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from vda import events
from vda.errors import RunError
from vda.io.probe import COUNT_MISMATCH
from vda.io.rundir import RunDir
from vda.orchestrator.backends.base import Backend, WorkerHandle
from vda.orchestrator.planning import require_decode
from vda.orchestrator.policies import DeviceHealth, PendingUnits, is_slow, may_run, refuse_retry
from vda.orchestrator.progress import BatchProgress
from vda.orchestrator.records import DeviceRecord, Key, QueuedVideo, RunRecord, UnitRecord

__all__ = ["QueuedVideo", "RunFailed", "WorkQueue"]
log = logging.getLogger(__name__)
STOP_WAIT_S = 60  # how long workers get to finish their stores after Stop


class RunFailed(RunError):
    """The run could not go on (no device left); the message names the cause and the log to read."""


@dataclass
class _Worker:
    handle: WorkerHandle
    wants: bool = False  # said Ready and has not been given a unit since
    running: list[Key] = field(default_factory=list)  # (video, unit) assigned and not yet Done/Failed
    started: set[Key] = field(default_factory=set)  # of those, the ones it began (a Ready followed)


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
        self._own_progress = progress is None  # closed at the end of `run`; a batch closes its own after the merges
        self.progress = progress or BatchProgress([v.plan for v in videos], stream=stream)
        self.inbox: queue.Queue = queue.Queue()  # (slot, worker generation, line) from the pump threads
        self.run_record = RunRecord(root, videos, devices)
        self.units, self.records = self.run_record.units, self.run_record.devices
        self.pending = PendingUnits()
        for vi, video in enumerate(videos):
            self._index(vi, video)
        # Videos planned after the queue began (vda.orchestrator.inputs.Planner): each call returns those planned since
        # the last one, None once no more will come.
        self.incoming: Callable[[], list[QueuedVideo] | None] = lambda: None
        self._expecting = True
        self.progress.stored(sum(v.units_done for v in videos))
        self.workers: dict[int, _Worker] = {}
        self._generation = dict.fromkeys(range(len(devices)), 0)
        self.health = DeviceHealth(len(devices))

    def _index(self, vi: int, video: QueuedVideo) -> None:
        """Its units, pending unless an earlier run stored them."""
        unfinished = {u.index for u in video.run.folder.unfinished_units(video.plan)}
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
        self.run_record.changed = True
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
                self.run_record.save()
            self._shutdown()
        finally:
            _stop_all([w.handle for w in self.workers.values()])
            self.run_record.save(force=True)
        if self._own_progress:
            self.progress.close()
        else:
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
            self.run_record.changed = True
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
                    self.run_record.span(key, start=True)
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
        self.health.unit_done(slot)
        if message.micro_batch:
            record.micro_batch = message.micro_batch
        if message.fp32_switch and not record.fp32_switch:
            record.fp32_switch = message.fp32_switch
            print(f"\nvda: {record.device}: {message.fp32_switch}", file=self.stream)
        unit, video = self.units[key], self.videos[key[0]]
        if unit.status not in ("running", "dropped"):
            return
        unit.status, unit.seconds = "done", message.seconds
        self.run_record.span(key, start=time.time() - self.run_record.started - message.seconds, end=True)
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
        self.units[key].undo_attempt()
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
        self.run_record.span(key, end=True)
        unit.note_error(f"{record.device}: {reason}")
        unit.device_bound = device_bound
        log = video.run.folder.video_log
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"unit {unit.unit} attempt {unit.attempts} on {record.device}: {reason} (see {record.log})\n")
        if unit.status != "running":
            return
        error = refuse_retry(unit, self.devices, self.retries, record.device, reason)
        if error is not None:
            if reason.startswith(COUNT_MISMATCH):  # the plan is wrong: the next run decodes anew
                require_decode(video.run.folder)
            self._fail_video(key, error, record)
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
        video.log = str(self.root.path / record.log) if record else str(video.run.folder.video_log)
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
            self.run_record.changed = True
            why = f"exit {code}: {worker.handle.reason}" if worker.handle.reason else f"exit {code}"
            self.health.worker_died(slot, worker.started)
            for key in reversed(worker.running):
                if key in worker.started:
                    self._retry(key, record, f"the worker on {record.device} stopped ({why})", False)
                elif self.units[key].status == "running":  # handed ahead and never begun: not an attempt
                    self._unassign(key)
            if not worker.started:  # it died outside any unit: the device, not a unit, is the suspect
                record.failures += 1
            if record.retired:  # already retired, and said so (its model did not fit)
                continue
            record.retired = self.health.retire_reason(slot, code, why)
            if record.retired:
                print(f"\nvda: {record.device}: {record.retired}; the other devices go on", file=self.stream)
            else:  # _staff starts another while there is work
                print(f"\nvda: the worker on {record.device} stopped ({why})", file=self.stream)

    def _assign(self) -> None:
        for slot, worker in self.workers.items():
            if not worker.wants or not self.pending or (worker.running and is_slow(self.records, slot)):
                continue
            device = self.records[slot].device
            # A unit that failed here goes to another device when one asks; here only when nothing else is left.
            key = self.pending.take(
                lambda k: may_run(self.units[k], device),  # noqa: B023 - called at once, in this turn
                lambda k: device not in self.units[k].devices,  # noqa: B023
            )
            if key is None:
                continue
            self.run_record.changed = True
            unit, video = self.units[key], self.videos[key[0]]
            unit.begin_attempt(device, slot, getattr(worker.handle, "node", None), self.run_record.now())
            worker.wants = False
            worker.running.append(key)
            where = self.backend.worker_path(video.run.folder.path), self.backend.worker_path(video.run.input)
            worker.handle.send(events.Assign(video.name, *where, key[1], self.records[slot].micro_batch or 0))
            log.debug("unit %s:%d -> worker %d on %s", video.name, key[1], slot, device)

    def _give_up_unrunnable(self) -> None:
        """Units that ran out of memory on every device not retired cannot run anywhere: fail them. Only units that came
        back from a failure can be device-bound, so only they are looked at."""
        live = [r.device for r in self.records if not r.retired]
        for key in [k for k in self.pending.again if self.units[k].device_bound]:
            if key in self.pending.again and not any(may_run(self.units[key], d) for d in live):
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

    def save(self) -> None:
        self.run_record.save(force=True)


def _stop_all(handles: list[WorkerHandle]) -> None:
    """Stop every worker at once: one after another, each with its grace period, could outlast a SIGTERM's."""
    threads = [threading.Thread(target=h.stop, daemon=True) for h in handles]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
