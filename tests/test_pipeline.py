"""Plan, compute the units, merge: any cut of the work into units, on any workers, gives the single-pass result.

Units are computed in-process here (`work_runs`, what `vda work RUN_DIR --device cpu` runs, or `DeviceWorker.serve`,
the worker's stdin protocol) except where a test says it runs separate worker processes through the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, TOL, read_output, rel_err, single_pass, synthetic_frames, write_images, write_video

from vda import events
from vda.core import stitch
from vda.core.plan import Plan
from vda.device.serve import work_runs
from vda.device.worker import DeviceWorker
from vda.io.probe import probe
from vda.io.rundir import RunDir
from vda.io.writers import DepthMeta, read_depth
from vda.merge import merge
from vda.model.synth import synthetic_scene
from vda.orchestrator.planning import create_plan


def pipeline(src, run_dir, out_dir, checkpoint, unit_size=None, fmt="npy", input_size=126, **kw):
    plan, _ = create_plan(src, run_dir, checkpoint=str(checkpoint), input_size=input_size, unit_size=unit_size, **kw)
    assert work_runs([run_dir], "cpu", checkpoint=str(checkpoint)) == len(plan.units)
    merge(run_dir, out_dir, fmt, workers=1)
    return plan, read_output(out_dir)


def serve(worker: DeviceWorker, run_dir, units) -> None:
    """Hand `units` of one run to a worker over its stdin protocol, then Stop."""
    plan = Plan.load(run_dir)
    lines = [events.encode(events.Assign("v", str(run_dir), plan.input.path, u)) for u in units]
    worker.serve([*lines, events.encode(events.Stop())])


@pytest.fixture(scope="module")
def fixture_single_pass(model, fixture_frames_dir):
    return single_pass(model, fixture_frames_dir, 126)


@pytest.mark.slow
@pytest.mark.parametrize("unit_size", [1, 3, 8])
def test_unit_sizes_match_fixture_and_single_pass(
    tmp_path, checkpoint, parity, fixture_frames_dir, fixture_single_pass, unit_size
):
    plan, out = pipeline(fixture_frames_dir, tmp_path / "run", tmp_path / "out", checkpoint, unit_size)
    assert len(plan.units) == -(-4 // unit_size)  # 70 frames: 4 windows
    assert rel_err(out, parity["window_out"]) <= TOL
    assert rel_err(out, fixture_single_pass) <= TOL


@pytest.mark.slow
def test_units_dealt_to_several_workers_store_the_same_bits(tmp_path, checkpoint):
    """Three workers, each with its own model, take the units round-robin and backwards: every stored window has
    the bits one worker computing them in order stores, since a unit never depends on the units before it."""
    src = write_video(tmp_path / "v.mp4", synthetic_frames(70, 32, 24))
    one, many = RunDir(tmp_path / "one"), RunDir(tmp_path / "many")
    for run in (one, many):
        plan, _ = create_plan(src, run.path, checkpoint=str(checkpoint), input_size=28, unit_size=1)
    work_runs([one.path], "cpu", checkpoint=str(checkpoint))
    seen = []
    workers = [DeviceWorker("cpu", seen.append, checkpoint=str(checkpoint), slot=s) for s in range(3)]
    backwards = [u.index for u in reversed(plan.units)]
    for slot, worker in enumerate(workers):
        serve(worker, many.path, backwards[slot::3])
    assert sorted(m.unit for m in seen if isinstance(m, events.Done)) == [0, 1, 2, 3]
    assert not [m for m in seen if isinstance(m, events.Failed)]
    for w in plan.all_pieces():
        assert np.array_equal(np.load(one.piece("window", w)), np.load(many.piece("window", w))), w
    merge(one.path, tmp_path / "out_one", "npy", workers=1)
    merge(many.path, tmp_path / "out_many", "npy", workers=1)
    for i in range(plan.frame_count):
        name = f"depth_{i:06d}.npy"
        assert np.array_equal(np.load(tmp_path / "out_one" / name), np.load(tmp_path / "out_many" / name)), i


@pytest.mark.slow
def test_small_units_on_a_longer_video(tmp_path, checkpoint, model):
    src = write_video(tmp_path / "v.mp4", synthetic_frames(130, 64, 48))
    plan, out = pipeline(src, tmp_path / "run", tmp_path / "out", checkpoint, 2, input_size=56)
    assert [u.span for u in plan.units] == [(0, 2), (2, 4), (4, 6)]  # 130 frames: 6 windows, fixed-size units
    assert [f for u in plan.units for f in range(*u.produces)] == list(range(130))
    assert rel_err(out, single_pass(model, src, 56)) <= TOL  # same code; batch sizes may move the last bits


@pytest.mark.slow
def test_windows_computed_once_across_units(tmp_path, checkpoint):
    src = write_video(tmp_path / "v.mp4", synthetic_frames(100, 64, 48))
    run = RunDir(tmp_path / "run")
    plan, _ = create_plan(src, run.path, checkpoint=str(checkpoint), input_size=28, unit_size=2)
    pieces = [plan.pieces(u) for u in plan.units]
    assert pieces == [[0, 1], [2, 3], [4]]  # each window in one unit
    assert work_runs([run.path], "cpu", checkpoint=str(checkpoint)) == 3
    stored = sorted((run.path / "windows").glob("win_*.npy"))
    assert [p.stem for p in stored] == [f"win_{w:06d}" for w in range(stitch.num_windows(100))]
    assert run.unfinished_units(plan) == [] and run.missing_pieces(plan) == []


@pytest.mark.parametrize("n", [1, 23, *(pytest.param(n, marks=pytest.mark.slow) for n in (2, 21, 22, 31, 32, 33, 100))])
@pytest.mark.parametrize("kind", ["video", "images"])
def test_frame_counts_in_equal_out(tmp_path, checkpoint, model, n, kind):
    frames = synthetic_frames(n, 32, 24, seed=n)
    src = write_video(tmp_path / "v.mp4", frames) if kind == "video" else write_images(tmp_path / "imgs", frames)
    plan, out = pipeline(src, tmp_path / "run", tmp_path / "out", checkpoint, 1, input_size=28)
    assert plan.frame_count == n and out.shape == (n, 24, 32)
    assert len(plan.units) == stitch.num_windows(n)  # one window per unit: every cut between windows is crossed
    assert sorted(p.name for p in (tmp_path / "out").glob("depth_*.npy")) == [f"depth_{i:06d}.npy" for i in range(n)]
    assert rel_err(out, single_pass(model, src, 28)) <= TOL


@pytest.mark.slow
def test_separate_processes_and_float_formats(tmp_path, checkpoint, parity, fixture_frames_dir):
    """`vda depth` with three worker processes sharing four units, then the merge again in every float format."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "vda", "depth", str(fixture_frames_dir), "-o", str(out)]
    cmd += ["--devices", "cpu,cpu,cpu", "--checkpoint", str(checkpoint), "--input-size", "126"]
    cmd += ["--unit-size", "1", "--format", "npz"]
    env = {**os.environ, "VDA_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "_run" / "processing_results.json").read_text())
    assert [(u["unit"], u["status"]) for u in results["units"]] == [(u, "done") for u in range(4)]
    assert sum(u["frames"] for u in results["units"]) == 70
    assert sum(d["units"] for d in results["devices"]) == 4 and len(results["devices"]) == 3
    assert [v["status"] for v in results["videos"]] == ["merged"]
    for fmt in ("npz", "npy", "exr"):
        target = out if fmt == "npz" else tmp_path / fmt
        if fmt != "npz":
            merge(out / "_run", target, fmt, workers=2)
        meta = DepthMeta.load(target)
        depth = np.stack([read_depth(target, i, meta) for i in range(70)])
        assert rel_err(depth, parity["window_out"]) <= TOL, fmt


@pytest.fixture(scope="module")
def float_run(tmp_path_factory, checkpoint, fixture_frames_dir):
    """The fixture's frames computed once and merged to float frames: (run folder, depth)."""
    tmp = tmp_path_factory.mktemp("float_run")
    _, exact = pipeline(fixture_frames_dir, tmp / "run", tmp / "f", checkpoint, input_size=28)
    return tmp / "run", exact


@pytest.mark.parametrize(("fmt", "levels"), [("png16", 65535), ("png8", 255)])
def test_png_round_trip_within_quantisation_step(tmp_path, fmt, levels, float_run):
    run, exact = float_run
    meta = merge(run, tmp_path / fmt, fmt, workers=1)
    q = meta.quantization
    assert q["levels"] == levels and q["lo"] <= exact.min() and q["hi"] >= exact.max()
    back = np.stack([read_depth(tmp_path / fmt, i, meta) for i in range(70)])
    step = (q["hi"] - q["lo"]) / levels
    assert np.abs(back - exact).max() <= step / 2 + 1e-6 * q["hi"]


def test_plan_json_is_versioned_and_complete(tmp_path, checkpoint, fixture_frames_dir):
    plan, resumed = create_plan(fixture_frames_dir, tmp_path / "run", checkpoint=str(checkpoint), unit_size=3)
    data = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert data["schema_version"] == 2 and not resumed
    assert data["input"]["frame_count"] == 70 and data["input"]["fps"] == "30"
    assert {"encoder", "metric", "input_size", "precision", "mode", "unit_size", "stream_warmup"} <= data[
        "settings"
    ].keys()
    assert data["settings"]["unit_size"] == 3 and "devices" not in data and "chunks" not in data
    assert [u["span"] for u in data["units"]] == [[0, 3], [3, 4]]
    assert [u["produces"] for u in data["units"]] == [[0, 68], [68, 70]]
    assert data["units"][1]["decode"] == [[0, 1], [56, 57], [68, 70]]  # window 3: its two key frames, its new frames
    assert Plan.load(tmp_path / "run") == plan
    # Units depend on the video and the settings only: planning again (for any devices) finds the same plan.
    again, resumed = create_plan(fixture_frames_dir, tmp_path / "run", checkpoint=str(checkpoint), unit_size=3)
    assert resumed and again == plan


@pytest.mark.slow
def test_worker_rerun_skips_finished_windows(tmp_path, checkpoint, fixture_frames_dir):
    run = RunDir(tmp_path / "run")
    create_plan(fixture_frames_dir, run.path, checkpoint=str(checkpoint), input_size=28, unit_size=2)
    assert work_runs([run.path], "cpu", checkpoint=str(checkpoint)) == 2
    before = run.piece("window", 2).stat().st_mtime_ns
    assert work_runs([run.path], "cpu", checkpoint=str(checkpoint)) == 0
    assert run.piece("window", 2).stat().st_mtime_ns == before
    # A unit assigned again (a retry whose first attempt had stored it) is reported done, with nothing computed.
    seen = []
    serve(DeviceWorker("cpu", seen.append, checkpoint=str(checkpoint)), run.path, [1])
    (done,) = [m for m in seen if isinstance(m, events.Done)]
    assert (done.unit, done.frames, done.computed) == (1, 24, 0)
    assert run.piece("window", 2).stat().st_mtime_ns == before


@pytest.mark.slow
def test_merge_refuses_unfinished_units(tmp_path, checkpoint, fixture_frames_dir):
    run = RunDir(tmp_path / "run")
    create_plan(fixture_frames_dir, run.path, checkpoint=str(checkpoint), input_size=28, unit_size=2)
    serve(DeviceWorker("cpu", lambda m: None, checkpoint=str(checkpoint)), run.path, [0])
    with pytest.raises(Exception, match=r"2 window\(s\) not computed yet, from window 2; compute them"):
        merge(run.path, tmp_path / "out", "npy")
    assert not (tmp_path / "out").exists()


def test_create_video_at_source_fps(tmp_path, checkpoint):
    from fractions import Fraction

    src = write_video(tmp_path / "v.mp4", synthetic_frames(30, 64, 48), fps=Fraction(25))
    pipeline(src, tmp_path / "run", tmp_path / "out", checkpoint, input_size=28)
    merge(tmp_path / "run", tmp_path / "out", "png8", create_video=True, workers=2)
    info = probe(tmp_path / "out" / "depth_vis.mp4")
    assert info.frame_count == 30 and info.fps_fraction == Fraction(25)


@pytest.mark.slow
def test_portrait_phone_video_gives_upright_depth(tmp_path, checkpoint, model):
    from conftest import portrait_phone_video

    src = portrait_phone_video(tmp_path / "portrait.mp4", n=30)
    plan, out = pipeline(src, tmp_path / "run", tmp_path / "out", checkpoint, 1, input_size=56)
    assert out.shape == (30, 64, 48)  # upright: 48 wide, 64 high, as a player shows it
    assert (plan.settings.frame_width, plan.settings.frame_height) == (48, 64)
    assert rel_err(out, single_pass(model, src, 56)) <= TOL  # the single pass reads the same upright frames


def _camera_file(kind: str, folder):
    """Files as cameras and editors write them, with the properties that break naive split readers."""
    if kind == "odd_size":
        return write_video(folder / "odd.mkv", list(synthetic_scene(50, 39, 67)), codec="ffv1")
    frames = list(synthetic_scene(50, 48, 64))
    if kind == "bframes_long_gop":  # one keyframe: the later units decode from the start
        return write_video(folder / "bf.mp4", frames, gop=250, bframes=3)
    if kind == "audio":
        return write_video(folder / "audio.mp4", frames, gop=12, bframes=2, audio=True)
    pts = np.cumsum(np.random.RandomState(1).choice([20, 33, 50], size=50)).tolist()
    return write_video(folder / "vfr.mkv", frames, pts=[0] + pts[:-1])  # variable frame rate


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bframes_long_gop", "odd_size", "audio", "vfr"])
def test_camera_files_split_equals_single_pass(tmp_path, checkpoint, model, kind):
    src = _camera_file(kind, tmp_path)
    info = probe(src)
    plan, out = pipeline(src, tmp_path / "run", tmp_path / "out", checkpoint, 1, input_size=28)
    assert len(plan.units) == 3 and out.shape == (50, info.height, info.width)  # 50 frames: 3 windows
    assert rel_err(out, single_pass(model, src, 28)) <= TOL
