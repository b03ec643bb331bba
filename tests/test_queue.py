"""The work queue (issue 13): many videos share one queue of small units on long-lived device workers.

Every run here is real: `vda depth` subprocesses with CPU workers, real encoded videos, and the Docker engine for the
cross-backend resume. Fault and delay injection (VDA_FAIL_*, VDA_WORKER_DELAY, vda.device.worker) stand for a
crashing or a slow device.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import (
    ROOT,
    TOL,
    one_thread_env,
    process_alive,
    read_output,
    rel_err,
    run_vda,
    single_pass,
    synthetic_frames,
    wait_for,
    write_images,
    write_video,
)

from vda import events
from vda.core import stitch
from vda.core.plan import STREAM_UNIT_FRAMES, STREAM_WARMUP, UNIT_WINDOWS, Plan, PlanError, make_units
from vda.errors import InputError
from vda.io.probe import probe
from vda.io.rundir import RunDir
from vda.orchestrator.inputs import expand_inputs, name_inputs

SIZE = "28"  # network input: tiny, the queue is what is tested


def depth_args(inputs, out, checkpoint, *flags) -> list:
    return ["depth", *inputs, "-o", out, "--checkpoint", checkpoint, "--input-size", SIZE, "--format", "npy", *flags]


def depth(inputs, out, checkpoint, *flags, env=None, check=True) -> subprocess.CompletedProcess:
    return run_vda(*depth_args(inputs, out, checkpoint, *flags), env=env, check=check)


def results(out) -> dict:
    return json.loads((out / "_run" / "processing_results.json").read_text())


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Three short inputs of different lengths and sizes: two videos and a folder of images."""
    tmp = tmp_path_factory.mktemp("clips")
    return [
        write_video(tmp / "a.mp4", synthetic_frames(70, 64, 48, seed=1)),
        write_video(tmp / "b.mkv", synthetic_frames(45, 48, 64, seed=2)),
        write_images(tmp / "c", synthetic_frames(30, 40, 32, seed=3)),
    ]


# -- pure parts -------------------------------------------------------------------------------------------------------
def test_units_cover_every_window_once_and_do_not_depend_on_devices():
    for n in (1, 22, 23, 100, 1000):
        units = make_units(n, "window", 3)
        windows = [w for u in units for w in range(*u.span)]
        assert windows == list(range(stitch.num_windows(n)))
        produced = [f for u in units for f in range(*u.produces)]
        assert produced == list(range(n))  # every output frame is made final by exactly one unit
    assert make_units(5000, "window", UNIT_WINDOWS) == make_units(5000, "window", UNIT_WINDOWS)


def test_default_unit_costs():
    """Window mode: a unit's first window encodes all 32 frames; stream mode replays frame 0 and the warm-up."""
    window = make_units(10_000, "window", UNIT_WINDOWS)[1]
    assert window.computed_frames / window.produced_frames == pytest.approx((32 + 7 * 22) / 176)
    stream = make_units(10_000, "stream", STREAM_UNIT_FRAMES)
    inner = stream[1]
    assert inner.computed_frames == STREAM_UNIT_FRAMES + STREAM_WARMUP + 1
    assert inner.computed_frames / inner.produced_frames <= 1.25
    total = sum(u.computed_frames for u in stream) / sum(u.produced_frames for u in stream)
    assert total <= 1.25
    with pytest.raises(PlanError, match="--unit-size must be at least 1"):
        make_units(100, "window", 0)


def test_events_round_trip_and_a_garbled_line_is_an_error():
    messages = [
        events.Assign("a", "/run/a", "/in/a.mp4", 3),
        events.Stop(),
        events.Ready(12),
        events.Done("a", 3, 176, 186, 1.5, 0),
        events.Failed("a", 3, "out of memory", True),
    ]
    for message in messages:
        assert events.decode(events.encode(message)) == message
    assert events.decode("an ordinary log line") is None
    with pytest.raises(ValueError, match="malformed"):
        events.decode(events.PREFIX + '{"kind": "done", "video": "a"}')


def test_inputs_folders_and_names(tmp_path, clips):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("x.mp4", "y.mkv"):
        (videos / name).write_bytes(clips[0].read_bytes())
    (videos / "notes.txt").write_text("not an input")
    assert expand_inputs([str(videos), str(clips[2])]) == [videos / "x.mp4", videos / "y.mkv", clips[2]]
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.mp4").write_bytes(b"")
    (mixed / "b.png").write_bytes(b"")
    with pytest.raises(InputError, match="holds both images and video files; give a folder of images"):
        expand_inputs([str(mixed)])
    said = []
    names = name_inputs([videos / "x.mp4", tmp_path / "x.mkv", tmp_path / "x", tmp_path / "_run.mp4"], said.append)
    assert names == ["x", "x_2", "x_3", "_run_2"]
    assert said[0].endswith("would be named x, which is taken; its output goes to x_2/")


# -- the batch --------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_n_videos_on_m_workers_equal_each_single_pass(tmp_path, clips, checkpoint, model):
    out = tmp_path / "out"
    done = depth(clips, out, checkpoint, "--devices", "cpu,cpu", "--unit-size", "1")
    record = results(out)
    for src, name in zip(clips, ("a", "b", "c")):
        assert rel_err(read_output(out / name), single_pass(model, src, int(SIZE))) <= TOL
        assert f"vda: {name}: merged" in done.stderr
    # Every window was computed exactly once: the sum of the single-pass counts, no more.
    windows = 0
    for video in record["videos"]:
        plan = Plan.load(RunDir(video["run_dir"]).path)
        windows += sum(len(plan.pieces(u)) for u in plan.units)
    single = sum(stitch.num_windows(probe(src).frame_count) for src in clips)
    assert windows == single
    assert all(u["status"] == "done" and u["attempts"] == 1 for u in record["units"])
    assert sum(d["units"] for d in record["devices"]) == len(record["units"])
    assert all(d["units"] > 0 and d["worker_starts"] == 1 for d in record["devices"])  # both devices took units
    assert "3/3 videos" in done.stderr


@pytest.mark.slow
def test_slow_worker_takes_fewer_units(tmp_path, checkpoint):
    src = write_video(tmp_path / "long.mp4", synthetic_frames(200, 48, 32))  # 10 windows: 10 units of 1
    delay = 5.0
    depth(
        [src],
        tmp_path / "out",
        checkpoint,
        "--devices",
        "cpu,cpu",
        "--unit-size",
        "1",
        env={"VDA_WORKER_DELAY": f"1:{delay}"},
    )
    fast, slow = results(tmp_path / "out")["devices"]
    assert fast["units"] + slow["units"] == 10
    assert slow["units"] < fast["units"] and slow["units"] <= 3
    # Its share: it is busy at most two units longer than the fast worker (the one it computes and the one it was
    # handed ahead before its speed was known). An even split would give it 5 units, so 5 delays.
    assert slow["seconds"] <= fast["seconds"] + 2 * delay + 1.0


def test_merge_of_a_finished_video_runs_while_others_compute(tmp_path, clips, checkpoint):
    out = tmp_path / "out"
    depth(clips, out, checkpoint, "--devices", "cpu", "--unit-size", "1", env={"VDA_WORKER_DELAY": "0:0.5"})
    merged_a = (out / "a" / "depth_meta.json").stat().st_mtime
    last_c = max(p.stat().st_mtime for p in (out / "_run" / "c" / "windows").glob("*.done"))
    assert merged_a < last_c  # a was merged before the last window of c was stored


@pytest.mark.slow
def test_one_bad_input_costs_the_others_nothing(tmp_path, clips, checkpoint, model):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    out = tmp_path / "out"
    done = depth([clips[0], bad, clips[1]], out, checkpoint, "--devices", "cpu", check=False)
    assert done.returncode == 2
    assert rel_err(read_output(out / "a"), single_pass(model, clips[0], int(SIZE))) <= TOL
    assert rel_err(read_output(out / "b"), single_pass(model, clips[1], int(SIZE))) <= TOL
    lines = [line for line in done.stderr.splitlines() if line.startswith("vda: error:")]
    assert len(lines) == 1 and lines[0].startswith(f"vda: error: {bad}: ") and "cannot be opened as a video" in lines[0]
    assert "vda: 2 of 3 input(s) done" in done.stderr
    assert not (out / "broken").exists()


@pytest.mark.slow
def test_a_video_whose_unit_keeps_failing_fails_alone_with_its_log(tmp_path, clips, checkpoint, model):
    out = tmp_path / "out"
    env = {"VDA_FAIL_AT_UNIT": "b:1", "VDA_FAIL_MODE": "raise"}
    done = depth(clips, out, checkpoint, "--devices", "cpu", "--unit-size", "1", "--retries", "1", env=env, check=False)
    assert done.returncode == 2
    error = next(line for line in done.stderr.splitlines() if line.startswith("vda: error:"))
    assert error.startswith(f"vda: error: {clips[1]}: unit 1 failed 2 time(s)")
    assert error.endswith(f"log: {out / '_run' / 'logs' / 'worker_0.log'}")
    record = results(out)
    assert [v["status"] for v in record["videos"]] == ["merged", "failed", "merged"]
    failed = next(u for u in record["units"] if u["video"] == "b" and u["unit"] == 1)
    assert failed["status"] == "failed" and failed["attempts"] == 2 and "injected fault" in failed["errors"][0]
    assert "unit 1 attempt 2 on cpu: injected fault" in (out / "_run" / "b" / "logs" / "video.log").read_text()
    for k in (0, 2):
        assert rel_err(read_output(out / ("a", "b", "c")[k]), single_pass(model, clips[k], int(SIZE))) <= TOL
    # The same command again resumes: only b's missing units are computed, and b is right.
    again = depth(clips, out, checkpoint, "--devices", "cpu,cpu", "--unit-size", "1")
    assert rel_err(read_output(out / "b"), single_pass(model, clips[1], int(SIZE))) <= TOL
    fresh = [u for u in results(out)["units"] if u["status"] == "done"]
    assert {u["video"] for u in fresh} == {"b"} and "3/3 videos" in again.stderr


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["window", "stream"])
def test_rerun_on_another_device_count_reuses_every_stored_piece_bitwise(tmp_path, checkpoint, mode):
    src = write_video(tmp_path / "v.mp4", synthetic_frames(120, 48, 32))
    size = "2" if mode == "window" else "32"
    flags = ["--mode", mode, "--unit-size", size]
    clean = tmp_path / "clean"
    depth([src], clean, checkpoint, "--devices", "cpu,cpu", *flags)
    out = tmp_path / "out"  # a first run on one device that loses unit 1, then the rest on three
    env = {"VDA_FAIL_AT_UNIT": "1", "VDA_FAIL_MODE": "raise"}
    assert depth([src], out, checkpoint, "--devices", "cpu", "--retries", "0", *flags, env=env, check=False).returncode
    run = RunDir(out / "_run")
    plan = Plan.load(run.path)
    stored = {p: run.piece(mode, p).stat().st_mtime_ns for p in plan.all_pieces() if run.is_stored(mode, p)}
    assert stored and len(stored) < len(plan.all_pieces())
    left = [u.index for u in run.unfinished_units(plan)]
    depth([src], out, checkpoint, "--devices", "cpu,cpu,cpu", *flags)
    assert {p: run.piece(mode, p).stat().st_mtime_ns for p in stored} == stored  # reused, not recomputed
    record = results(out)
    assert [u["unit"] for u in record["units"] if u["status"] == "done"] == left  # only what was missing
    np.testing.assert_array_equal(read_output(out), read_output(clean))


@pytest.mark.slow
def test_host_killed_with_sigkill_leaves_no_worker_and_the_same_command_resumes(tmp_path, checkpoint):
    src = write_video(tmp_path / "v.mp4", synthetic_frames(160, 48, 32))  # 8 windows: 8 units of 1
    flags = ["--devices", "cpu,cpu", "--unit-size", "1"]
    clean = tmp_path / "clean"
    depth([src], clean, checkpoint, *flags)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "vda", *map(str, depth_args([src], out, checkpoint, *flags))]
    env = one_thread_env(VDA_WORKER_DELAY="0:1.5")
    host = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    windows = out / "_run" / "windows"
    wait_for(lambda: len(list(windows.glob("*.done"))) >= 2, 120)
    host.kill()  # kill -9: no cleanup of any kind in the host
    host.wait()
    logs = [(out / "_run" / "logs" / f"worker_{k}.log").read_text() for k in (0, 1)]
    pids = {events.decode(line).pid for log in logs for line in log.splitlines() if '"kind": "ready"' in line}
    assert len(pids) == 2
    # the workers see their stdin close, finish what they hold, and exit
    assert wait_for(lambda: not any(process_alive(pid) for pid in pids), 60, 0.2)
    run = RunDir(out / "_run")
    plan = Plan.load(run.path)
    stored = {p: run.piece("window", p).stat().st_mtime_ns for p in plan.all_pieces() if run.is_stored("window", p)}
    assert 2 <= len(stored)
    depth([src], out, checkpoint, *flags)
    assert {p: run.piece("window", p).stat().st_mtime_ns for p in stored} == stored
    np.testing.assert_array_equal(read_output(out), read_output(clean))


@pytest.mark.slow
def test_a_crash_does_not_charge_the_unit_handed_ahead(tmp_path, checkpoint, model):
    """The worker holds a unit of b ahead while a's unit crashes it: b's unit is not an attempt, and b is done."""
    a = write_video(tmp_path / "a.mp4", synthetic_frames(20, 48, 32, seed=4))  # one window: one unit
    b = write_video(tmp_path / "b.mp4", synthetic_frames(45, 48, 32, seed=5))
    out = tmp_path / "out"
    env = {"VDA_FAIL_AT_UNIT": "a:0", "VDA_FAIL_MODE": "exit"}
    done = depth([a, b], out, checkpoint, "--devices", "cpu", "--retries", "0", env=env, check=False)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("vda: error:")]
    assert len(errors) == 1 and errors[0].startswith(f"vda: error: {a}: unit 0 failed 1 time(s)")
    record = results(out)
    assert [v["status"] for v in record["videos"]] == ["failed", "merged"]
    assert all(u["attempts"] == 1 for u in record["units"] if u["video"] == "b")
    assert record["devices"][0]["worker_starts"] == 2
    assert rel_err(read_output(out / "b"), single_pass(model, b, int(SIZE))) <= TOL
