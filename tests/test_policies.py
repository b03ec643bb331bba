"""The queue's decisions, each alone: retry a failed unit, retire a device, hold back a slow device."""

from __future__ import annotations

from vda.io.probe import COUNT_MISMATCH
from vda.orchestrator.backends.base import START_FAILED
from vda.orchestrator.policies import DeviceHealth, is_slow, may_run, refuse_retry
from vda.orchestrator.records import DeviceRecord, UnitRecord

DEVICES = ["cuda:0", "cuda:1"]


def _unit(attempts: int, devices: list[str], device_bound: bool = False) -> UnitRecord:
    return UnitRecord("v", 3, attempts=attempts, devices=devices, device_bound=device_bound)


def test_a_failed_unit_is_retried_until_its_retries_are_spent():
    assert refuse_retry(_unit(1, ["cuda:0"]), DEVICES, 2, "cuda:0", "boom") is None
    assert refuse_retry(_unit(3, ["cuda:0"] * 3), DEVICES, 2, "cuda:0", "boom") == (
        "unit 3 failed 3 time(s), last on cuda:0: boom"
    )
    assert refuse_retry(_unit(3, ["cuda:0"] * 3), DEVICES, 3, "cuda:0", "boom") is None


def test_out_of_memory_is_retried_once_on_every_device_whatever_the_retries():
    assert refuse_retry(_unit(5, ["cuda:0"] * 5, True), DEVICES, 0, "cuda:0", "oom") is None  # cuda:1 not tried
    assert refuse_retry(_unit(2, DEVICES, True), DEVICES, 9, "cuda:1", "oom") == (
        "unit 3 out of memory on every device, last on cuda:1: oom"
    )
    assert may_run(_unit(1, ["cuda:0"], True), "cuda:0") is False
    assert may_run(_unit(1, ["cuda:0"], True), "cuda:1") and may_run(_unit(1, ["cuda:0"]), "cuda:0")


def test_a_wrong_frame_count_is_never_retried():
    reason = f"{COUNT_MISMATCH}: 10 frames, the plan says 12"
    assert refuse_retry(_unit(1, ["cuda:0"]), DEVICES, 2, "cuda:0", reason) == reason


def test_a_device_is_retired_after_restarts_deaths_outside_units_or_in_different_units():
    health = DeviceHealth(2, restarts=3)
    for _ in range(2):
        health.worker_died(0, [])
        assert health.retire_reason(0, 1, "exit 1") is None
    health.worker_died(0, [])
    assert health.retire_reason(0, 1, "exit 1") == "its worker stopped 3 times in a row outside any unit (exit 1)"
    assert health.retire_reason(1, 1, "exit 1") is None  # slots are apart
    health.worker_died(1, [(0, 0)])
    health.worker_died(1, [(0, 0)])  # the same unit twice: one unit
    health.worker_died(1, [(0, 1)])
    assert health.retire_reason(1, 1, "x") is None
    health.unit_done(1)  # a unit done clears the history
    for unit in range(3):
        health.worker_died(1, [(1, unit)])
    assert health.retire_reason(1, 1, "x") == "its worker died inside 3 different units in a row (x)"


def test_a_worker_that_cannot_start_retires_its_device_at_once():
    assert DeviceHealth(1).retire_reason(0, START_FAILED, "no image") == "the worker could not start (no image)"


def test_a_device_much_slower_than_the_fastest_holds_no_unit_ahead():
    fast, slow = DeviceRecord(0, "cuda:0", "a", units=4, seconds=4.0), DeviceRecord(1, "cpu", "b", units=2, seconds=4.0)
    fresh = DeviceRecord(2, "cuda:1", "c")
    records = [fast, slow, fresh]
    assert is_slow(records, 1) and not is_slow(records, 0)
    assert not is_slow(records, 2)  # no unit done yet: no rate to judge by
    assert not is_slow(records, 1, factor=2.5)
