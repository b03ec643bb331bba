"""The queue's index of pending units: the order units are handed out in, without scanning them all."""

from __future__ import annotations

from vda.orchestrator.policies import PendingUnits


def test_units_back_from_a_failure_go_first_to_a_device_that_has_not_tried_them():
    pending = PendingUnits()
    for vi, units in ((0, 3), (1, 2)):
        for u in range(units):
            pending.add(vi, u)
    tried = {(0, 1): {"cuda:0"}, (1, 0): {"cuda:1"}}
    assert pending.take(lambda k: True, lambda k: True) == (0, 0)
    assert pending.take(lambda k: True, lambda k: True) == (0, 1)
    pending.push_front((0, 1))  # failed on cuda:0
    assert len(pending) == 4
    untried_by = lambda device: lambda k: device not in tried.get(k, ())  # noqa: E731
    assert pending.take(lambda k: True, untried_by("cuda:0")) == (0, 2)  # a fresh unit before the one it failed
    assert pending.take(lambda k: True, untried_by("cuda:1")) == (0, 1)  # another device takes the failed one
    pending.push_front((0, 1))
    assert pending.take(lambda k: k != (0, 1), untried_by("cuda:0")) == (1, 0)  # (0, 1) does not suit this device
    pending.drop_video(0)  # its video failed: its units leave at once, retried ones too
    assert len(pending) == 1 and pending.take(lambda k: True, lambda k: True) == (1, 1)
    assert len(pending) == 0 and pending.take(lambda k: True, lambda k: True) is None


def test_a_device_takes_a_unit_it_tried_when_nothing_else_is_left():
    pending = PendingUnits()
    pending.add(0, 0)
    assert pending.take(lambda k: True, lambda k: True) == (0, 0)
    pending.push_front((0, 0))
    assert pending.take(lambda k: True, lambda k: False) == (0, 0)
    pending.push_front((0, 0))
    assert pending.take(lambda k: False, lambda k: True) is None and len(pending) == 1  # out of memory here: it waits
