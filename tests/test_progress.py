"""The batch's progress line: units, frames/s and time left, videos for a batch, and the one-off notes; a tqdm bar
on a terminal, plain lines in a log (none repeated)."""

from __future__ import annotations

import io
import os
import pty
import re

import pytest
from conftest import run_vda, synthetic_frames, write_images

from vda.orchestrator.planning import create_plan
from vda.orchestrator.progress import LOG_INTERVAL_S, BatchProgress, _duration


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def plans(tmp_path_factory, checkpoint):
    """Two plans of 5 units each (100 frames, one window per unit)."""
    tmp = tmp_path_factory.mktemp("progress")
    src = write_images(tmp / "imgs", synthetic_frames(100, 32, 24))
    common = dict(checkpoint=str(checkpoint), input_size=28, unit_size=1)
    return [create_plan(src, tmp / name, **common)[0] for name in ("a", "b")]


def test_rate_and_time_left_count_only_this_runs_units(plans):
    clock, out = Clock(), io.StringIO()
    bar = BatchProgress(plans[:1], stream=out, clock=clock)
    assert len(plans[0].units) == 5
    bar.stored(1)  # one unit stored by an earlier run
    assert bar.text() == "1/5 units, 0s"  # no rate before a unit of this run
    clock.now += 10
    bar.unit_done(0, 22, 0, "cpu")
    bar.unit_done(0, 22, 0, "cuda:0")
    # 2 fresh units in 10 s, 2 left: about 10 s; 44 frames in 10 s (the stored unit's frames do not count)
    assert bar.text() == "3/5 units, 4.4 frames/s, about 10s left, 10s"
    clock.now += 10
    bar.unit_done(0, 22, 0, "cpu")
    bar.unit_done(0, 34, 0, "cpu")
    assert bar.text() == "5/5 units, 5.0 frames/s, 20s"
    assert bar.by_device == {"cpu": 3, "cuda:0": 1}


def test_videos_are_counted_only_for_a_batch(plans):
    clock, out = Clock(), io.StringIO()
    single = BatchProgress(plans[:1], stream=io.StringIO(), clock=clock)
    assert "videos" not in single.text()
    bar = BatchProgress(plans, stream=out, clock=clock)
    assert bar.text() == "0/2 videos, 0/10 units, 0s"
    bar.stored(5)
    clock.now += 4
    bar.video_finished("vda: a: merged 100 frames into out/a (npy) in 0.1 s")
    lines = out.getvalue().splitlines()  # not a terminal: whole lines, the video's own line, then the bar
    assert lines == ["vda: a: merged 100 frames into out/a (npy) in 0.1 s", f"vda: {bar.text()}"]
    bar.video_failed(1)
    assert bar.text() == "1/2 videos (1 failed), 5/10 units, 4s"


def test_units_per_node_where_workers_span_hosts(plans):
    """The Ray backend names each unit's node: the bar counts units per node (ids shortened), others show nothing."""
    clock = Clock()
    bar = BatchProgress(plans[:1], stream=io.StringIO(), clock=clock)
    node_a, node_b = "a1b2c3d4" + "0" * 48, "ffee0011" + "0" * 48
    bar.unit_done(0, 22, 0, "cpu", node_a)
    bar.unit_done(0, 22, 0, "cpu", node_b)
    bar.unit_done(0, 22, 0, "cpu", node_a)
    assert bar.text().endswith(", 0s | per node: a1b2c3d4 2, ffee0011 1")
    local = BatchProgress(plans[:1], stream=io.StringIO(), clock=clock)
    local.unit_done(0, 22, 0, "cpu")
    assert "node" not in local.text()


def test_the_fp32_recompute_is_said_once(plans):
    out = io.StringIO()
    bar = BatchProgress(plans, stream=out, clock=Clock())
    bar.unit_done(0, 22, 0, "cuda:0")
    bar.unit_done(0, 22, 2, "cuda:0")
    bar.unit_done(1, 22, 3, "cuda:1")
    notes = [line for line in out.getvalue().splitlines() if "recomputed in fp32" in line]
    assert len(notes) == 1 and "processing_results.json" in notes[0]
    assert bar.recomputes == 5


def test_a_log_gets_a_line_per_interval_and_never_the_same_counts_twice(plans):
    clock, out = Clock(), io.StringIO()
    bar = BatchProgress(plans[:1], stream=out, clock=clock)
    bar.unit_done(0, 22, 0, "cpu")  # drawn: the first
    clock.now += 1
    bar.unit_done(0, 22, 0, "cpu")  # not drawn: within the interval
    clock.now += LOG_INTERVAL_S
    bar.unit_done(0, 22, 0, "cpu")  # drawn
    bar.render(final=True)  # the queue is over, but the counts are those drawn: nothing new to say
    bar.unit_done(0, 22, 0, "cpu")
    bar.close()  # drawn at once: new counts
    bar.close()
    lines = out.getvalue().splitlines()
    assert all(line.startswith("vda: ") and "\r" not in line for line in lines)
    assert [line.split(",")[0] for line in lines] == ["vda: 1/5 units", "vda: 3/5 units", "vda: 4/5 units"]


def test_on_a_terminal_tqdm_draws_a_bar_updated_in_place(plans):
    main, side = pty.openpty()
    with os.fdopen(side, "w") as terminal:
        bar = BatchProgress(plans, stream=terminal)
        bar.unit_done(0, 22, 0, "cpu")
        bar.video_finished("vda: a: merged")
        bar.close()
        text = os.read(main, 1 << 16).decode()
    os.close(main)
    assert re.search(r"\r\s*10%\|█{3}\s{27}\| 1/2 videos, 1/10 units", text), repr(text)  # tqdm's bar, redrawn
    assert "vda: a: merged" in text and text.count("\n") == 2, repr(text)  # the video's line and the closed bar


def test_a_run_logged_to_a_file_ends_with_one_progress_line(tmp_path, checkpoint):
    """stderr to a file, as `make depth 2>log`: the last units line is said once, not once per final draw."""
    src = write_images(tmp_path / "imgs", synthetic_frames(40, 32, 24))
    out = tmp_path / "out"
    flags = ["--checkpoint", checkpoint, "--input-size", "28", "--format", "npy", "--devices", "cpu,cpu"]
    done = run_vda("depth", src, "-o", out, *flags, "--unit-size", "1")
    lines = done.stderr.splitlines()
    progress = [line for line in lines if re.match(r"vda: \d+/\d+ units", line)]
    total = progress[-1].split("/")[1].split(" ")[0]
    assert sum(f"{total}/{total} units" in line for line in lines) == 1, done.stderr
    assert "\r" not in done.stderr and "%|" not in done.stderr  # no bar in a log


@pytest.mark.parametrize(("seconds", "text"), [(59.4, "59s"), (61, "1m01s"), (3725, "1h02m")])
def test_durations(seconds, text):
    assert _duration(seconds) == text
