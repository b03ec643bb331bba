"""The queue's decisions, each answering one question over the records, apart from the loop that acts on them:
which pending unit a device gets (`PendingUnits`), whether a failed unit is retried (`refuse_retry`), whether a
device is retired (`DeviceHealth`), and whether a device is too slow to hold a unit ahead (`is_slow`)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from vda.io.probe import COUNT_MISMATCH
from vda.orchestrator.backends.base import START_FAILED
from vda.orchestrator.records import DeviceRecord, Key, UnitRecord

RESTARTS = 3  # a device whose worker dies this many times in a row outside any unit is retired
SLOW_FACTOR = 1.5  # a device this many times slower per unit than the fastest gets no unit ahead


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


def may_run(unit: UnitRecord, device: str) -> bool:
    """A unit that ran out of memory waits for a device it has not tried; others run anywhere."""
    return not unit.device_bound or device not in unit.devices


def refuse_retry(unit: UnitRecord, devices: list[str], retries: int, device: str, reason: str) -> str | None:
    """Why a unit that just failed on `device` is not retried (the error its video fails with), or None to retry it.

    A frame-count mismatch means the plan is wrong, not the unit: no retry helps. Out of memory (`unit.device_bound`)
    is retried on every device once; any other failure `retries` more times."""
    if reason.startswith(COUNT_MISMATCH):
        return reason
    tried_all = all(d in unit.devices for d in devices)
    if unit.device_bound and tried_all:
        why = "out of memory on every device"
    elif not unit.device_bound and unit.attempts > retries:
        why = f"failed {unit.attempts} time(s)"
    else:
        return None
    return f"unit {unit.unit} {why}, last on {device}: {reason}"


def is_slow(records: list[DeviceRecord], slot: int, factor: float = SLOW_FACTOR) -> bool:
    """Whether a device is so much slower per unit than the fastest that it should not hold a unit ahead (a worker
    asks for its next unit as it starts one, to decode it in time; a slow device would sit on it)."""
    rates = {r.slot: r.seconds / r.units for r in records if r.units}
    return slot in rates and rates[slot] > factor * min(rates.values())


class DeviceHealth:
    """When a device is retired after its workers die: RESTARTS deaths in a row outside any unit, or inside RESTARTS
    different units in a row (a sticky CUDA error, Xid, ECC), or a worker that could not start at all. A unit done on
    the device clears its history."""

    def __init__(self, slots: int, restarts: int = RESTARTS):
        self.restarts = restarts
        self.streak = dict.fromkeys(range(slots), 0)  # deaths in a row outside any unit
        self.died_in: dict[int, set[Key]] = {slot: set() for slot in range(slots)}  # units, since its last Done

    def unit_done(self, slot: int) -> None:
        self.streak[slot] = 0
        self.died_in[slot].clear()

    def worker_died(self, slot: int, begun: Iterable[Key]) -> None:
        """Its worker exited holding the units it had `begun` (none: the device, not a unit, is the suspect)."""
        begun = set(begun)
        self.died_in[slot] |= begun
        if not begun:
            self.streak[slot] += 1

    def retire_reason(self, slot: int, code: int, why: str) -> str | None:
        """Why the device is retired after its worker exited with `code` (`why`: the exit, in words), or None."""
        if code == START_FAILED:
            return f"the worker could not start ({why})"
        if self.streak[slot] >= self.restarts:
            return f"its worker stopped {self.streak[slot]} times in a row outside any unit ({why})"
        if len(self.died_in[slot]) >= self.restarts:
            return f"its worker died inside {len(self.died_in[slot])} different units in a row ({why})"
        return None
