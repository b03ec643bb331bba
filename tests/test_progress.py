"""The progress bar: units, frames/s and time left, from the workers' @progress lines."""

from __future__ import annotations

import io
import json

import pytest
from conftest import synthetic_frames, write_images

from orchestrator.planning import create_plan
from orchestrator.scheduler import Progress
from vda.worker import PROGRESS_PREFIX, units_of


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def event(**fields) -> str:
    return PROGRESS_PREFIX + json.dumps(fields)


@pytest.fixture(scope="module")
def plan(tmp_path_factory, checkpoint):
    tmp = tmp_path_factory.mktemp("progress")
    src = write_images(tmp / "imgs", synthetic_frames(100, 32, 24))
    return create_plan(src, tmp / "run", ["cpu", "cpu"], checkpoint=str(checkpoint), input_size=28)[0]


def test_rate_and_time_left_count_only_this_runs_units(plan):
    clock, out = Clock(), io.StringIO()
    bar = Progress(plan, stream=out, clock=clock)
    per_chunk = [len(units_of(plan, c.index)) for c in plan.chunks]
    assert per_chunk == [3, 2]  # 100 frames: 5 windows over 2 devices
    bar.line(0, event(chunk=0, done=1, total=3, event="start"))  # one unit done by an earlier run
    bar.line(1, event(chunk=1, done=0, total=2, event="start"))
    assert bar.text() == "[######........................] 1/5 units, 0s"  # no rate before a unit of this run
    clock.now += 10
    bar.line(0, event(chunk=0, done=2, total=3, frames=22, event="unit"))
    bar.line(1, event(chunk=1, done=1, total=2, frames=22, event="unit"))
    # 2 fresh units in 10 s, 2 left: about 10 s; 44 frames in 10 s
    assert bar.text() == "[##################............] 3/5 units, 4.4 frames/s, about 10s left, 10s"
    clock.now += 10
    bar.line(0, event(chunk=0, done=3, total=3, frames=22, event="unit"))
    bar.line(1, event(chunk=1, done=2, total=2, frames=34, event="unit"))
    assert bar.text() == "[##############################] 5/5 units, 5.0 frames/s, 20s"


def test_a_retried_chunk_keeps_its_first_base(plan):
    clock = Clock()
    bar = Progress(plan, stream=io.StringIO(), clock=clock)
    bar.line(0, event(chunk=0, done=0, total=3, event="start"))
    clock.now += 5
    bar.line(0, event(chunk=0, done=1, total=3, frames=24, event="unit"))
    bar.line(0, event(chunk=0, done=1, total=3, event="start"))  # the retry starts after the finished unit
    clock.now += 5
    assert "1/5 units, 2.4 frames/s, about 40s left" in bar.text()  # 1 fresh unit in 10 s, 4 left


@pytest.mark.parametrize(("seconds", "text"), [(59.4, "59s"), (61, "1m01s"), (3725, "1h02m")])
def test_durations(seconds, text):
    from orchestrator.scheduler import _duration

    assert _duration(seconds) == text


def test_lines_that_are_not_progress_are_ignored(plan):
    bar = Progress(plan, stream=io.StringIO(), clock=Clock())
    bar.line(0, "some log line")
    bar.line(0, PROGRESS_PREFIX + "{not json")
    assert bar.text().startswith("[..............................] 0/5 units")
