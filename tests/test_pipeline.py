"""Split, run and merge: N devices give the single-pass result (issue 3).

Workers run in-process here (the same `run_chunk` a container runs) except where a test says it
uses separate processes through the CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, TOL, rel_err, synthetic_frames, write_images, write_video

from orchestrator.planning import create_plan
from vda import stitch
from vda.inference import infer_video
from vda.merge import merge
from vda.plan import Plan
from vda.synth import synthetic_scene
from vda.video import probe, read_frames
from vda.worker import run_chunk, unit_path
from vda.writers import DepthMeta, read_depth


def pipeline(src, run_dir, out_dir, checkpoint, devices, fmt="npy", input_size=126, mode="window", **kw):
    plan, _ = create_plan(src, run_dir, devices, checkpoint=str(checkpoint), input_size=input_size, mode=mode, **kw)
    for chunk in plan.chunks:
        run_chunk(run_dir, chunk.index, checkpoint=str(checkpoint))
    meta = merge(run_dir, out_dir, fmt, workers=1)
    return plan, np.stack([read_depth(out_dir, i, meta) for i in range(plan.frame_count)])


def single_pass(model, src, input_size, **kw):
    info = probe(src)
    return np.stack(
        list(
            infer_video(model, (f for _, f in read_frames(info, range(info.frame_count))), input_size=input_size, **kw)
        )
    )


@pytest.mark.parametrize("devices", [1, 2, 3])
def test_devices_match_fixture_and_single_pass(tmp_path, checkpoint, model, parity, fixture_frames_dir, devices):
    plan, out = pipeline(fixture_frames_dir, tmp_path / "run", tmp_path / "out", checkpoint, ["cpu"] * devices)
    assert len(plan.chunks) == devices
    assert rel_err(out, parity["window_out"]) <= TOL
    assert rel_err(out, single_pass(model, fixture_frames_dir, 126)) <= TOL


def test_five_devices_on_a_longer_video(tmp_path, checkpoint, model):
    src = write_video(tmp_path / "v.mp4", synthetic_frames(130, 64, 48))
    plan, out = pipeline(src, tmp_path / "run", tmp_path / "out", checkpoint, ["cpu"] * 5, input_size=56)
    sizes = [c.units[1] - c.units[0] for c in plan.chunks]
    assert len(plan.chunks) == 5 and max(sizes) - min(sizes) <= 1
    assert rel_err(out, single_pass(model, src, 56)) <= TOL  # same code; batch sizes may move the last bits


def test_windows_computed_once_across_chunks(tmp_path, checkpoint):
    src = write_video(tmp_path / "v.mp4", synthetic_frames(100, 64, 48))
    plan, _ = create_plan(src, tmp_path / "run", ["cpu"] * 3, checkpoint=str(checkpoint), input_size=28)
    computed = [run_chunk(tmp_path / "run", c.index, checkpoint=str(checkpoint)) for c in plan.chunks]
    assert sum(computed) == stitch.num_windows(100) == plan.num_windows  # each window once, by one chunk
    stored = sorted((tmp_path / "run" / "windows").glob("win_*.npy"))
    assert [p.stem for p in stored] == [f"win_{w:06d}" for w in range(plan.num_windows)]


@pytest.mark.parametrize("n", [1, 2, 21, 22, 23, 31, 32, 33, 100])
@pytest.mark.parametrize("kind", ["video", "images"])
def test_frame_counts_in_equal_out(tmp_path, checkpoint, model, n, kind):
    frames = synthetic_frames(n, 32, 24, seed=n)
    src = write_video(tmp_path / "v.mp4", frames) if kind == "video" else write_images(tmp_path / "imgs", frames)
    plan, out = pipeline(src, tmp_path / "run", tmp_path / "out", checkpoint, ["cpu", "cpu"], input_size=28)
    assert plan.frame_count == n and out.shape == (n, 24, 32)
    assert sorted(p.name for p in (tmp_path / "out").glob("depth_*.npy")) == [f"depth_{i:06d}.npy" for i in range(n)]
    assert rel_err(out, single_pass(model, src, 28)) <= TOL


def test_separate_processes_and_float_formats(tmp_path, checkpoint, parity, fixture_frames_dir):
    """`vda depth` with three worker processes, then the merge again in every float format."""
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "orchestrator.cli",
        "depth",
        str(fixture_frames_dir),
        "-o",
        str(out),
        "--devices",
        "cpu,cpu,cpu",
        "--checkpoint",
        str(checkpoint),
        "--input-size",
        "126",
        "--format",
        "npz",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "_run" / "processing_results.json").read_text())
    assert [c["status"] for c in results["chunks"]] == ["done"] * 3
    assert sum(c["frames"] for c in results["chunks"]) == 70
    for fmt in ("npz", "npy", "exr"):
        target = out if fmt == "npz" else tmp_path / fmt
        if fmt != "npz":
            merge(out / "_run", target, fmt, workers=2)
        meta = DepthMeta.load(target)
        depth = np.stack([read_depth(target, i, meta) for i in range(70)])
        assert rel_err(depth, parity["window_out"]) <= TOL, fmt


@pytest.mark.parametrize(("fmt", "levels"), [("png16", 65535), ("png8", 255)])
def test_png_round_trip_within_quantisation_step(tmp_path, checkpoint, fmt, levels, fixture_frames_dir):
    _, exact = pipeline(fixture_frames_dir, tmp_path / "run", tmp_path / "f", checkpoint, ["cpu"])
    meta = merge(tmp_path / "run", tmp_path / fmt, fmt, workers=1)
    q = meta.quantization
    assert q["levels"] == levels and q["lo"] <= exact.min() and q["hi"] >= exact.max()
    back = np.stack([read_depth(tmp_path / fmt, i, meta) for i in range(70)])
    step = (q["hi"] - q["lo"]) / levels
    assert np.abs(back - exact).max() <= step / 2 + 1e-6 * q["hi"]


def test_plan_json_is_versioned_and_complete(tmp_path, checkpoint, fixture_frames_dir):
    plan, _ = create_plan(fixture_frames_dir, tmp_path / "run", ["cpu", "cpu"], checkpoint=str(checkpoint))
    data = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert data["schema_version"] == 1
    assert data["input"]["frame_count"] == 70 and data["input"]["fps"] == "30"
    assert {"encoder", "metric", "input_size", "precision", "mode"} <= data["settings"].keys()
    assert [c["units"] for c in data["chunks"]] == [[0, 2], [2, 4]]
    assert Plan.load(tmp_path / "run") == plan


def test_worker_rerun_skips_finished_windows(tmp_path, checkpoint, fixture_frames_dir):
    create_plan(fixture_frames_dir, tmp_path / "run", ["cpu"], checkpoint=str(checkpoint), input_size=126)
    assert run_chunk(tmp_path / "run", 0, checkpoint=str(checkpoint)) == 4
    before = unit_path(tmp_path / "run", 0, "window", 2).stat().st_mtime_ns
    assert run_chunk(tmp_path / "run", 0, checkpoint=str(checkpoint)) == 0
    assert unit_path(tmp_path / "run", 0, "window", 2).stat().st_mtime_ns == before


def test_merge_refuses_unfinished_chunks(tmp_path, checkpoint, fixture_frames_dir):
    create_plan(fixture_frames_dir, tmp_path / "run", ["cpu", "cpu"], checkpoint=str(checkpoint), input_size=126)
    run_chunk(tmp_path / "run", 0, checkpoint=str(checkpoint))
    with pytest.raises(Exception, match="unfinished chunks .*chunk 1"):
        merge(tmp_path / "run", tmp_path / "out", "npy")


def test_create_video_at_source_fps(tmp_path, checkpoint):
    from fractions import Fraction

    src = write_video(tmp_path / "v.mp4", synthetic_frames(30, 64, 48), fps=Fraction(25))
    pipeline(src, tmp_path / "run", tmp_path / "out", checkpoint, ["cpu"], input_size=28)
    merge(tmp_path / "run", tmp_path / "out", "png8", create_video=True, workers=2)
    info = probe(tmp_path / "out" / "depth_vis.mp4")
    assert info.frame_count == 30 and info.fps_fraction == Fraction(25)


def test_portrait_phone_video_gives_upright_depth(tmp_path, checkpoint, model):
    from conftest import portrait_phone_video

    src = portrait_phone_video(tmp_path / "portrait.mp4", n=30)
    plan, out = pipeline(src, tmp_path / "run", tmp_path / "out", checkpoint, ["cpu", "cpu"], input_size=56)
    assert out.shape == (30, 64, 48)  # upright: 48 wide, 64 high, as a player shows it
    assert (plan.settings.frame_width, plan.settings.frame_height) == (48, 64)
    assert rel_err(out, single_pass(model, src, 56)) <= TOL  # the single pass reads the same upright frames


def _camera_file(kind: str, folder):
    """Files as cameras and editors write them, with the properties that break naive split readers."""
    if kind == "odd_size":
        return write_video(folder / "odd.mkv", list(synthetic_scene(50, 39, 67)), codec="ffv1")
    frames = list(synthetic_scene(50, 48, 64))
    if kind == "bframes_long_gop":  # one keyframe: the second device decodes from the start
        return write_video(folder / "bf.mp4", frames, gop=250, bframes=3)
    if kind == "audio":
        return write_video(folder / "audio.mp4", frames, gop=12, bframes=2, audio=True)
    pts = np.cumsum(np.random.RandomState(1).choice([20, 33, 50], size=50)).tolist()
    return write_video(folder / "vfr.mkv", frames, pts=[0] + pts[:-1])  # variable frame rate


@pytest.mark.parametrize("kind", ["bframes_long_gop", "odd_size", "audio", "vfr"])
def test_camera_files_split_equals_single_pass(tmp_path, checkpoint, model, kind):
    src = _camera_file(kind, tmp_path)
    info = probe(src)
    plan, out = pipeline(src, tmp_path / "run", tmp_path / "out", checkpoint, ["cpu", "cpu"], input_size=28)
    assert len(plan.chunks) == 2 and out.shape == (50, info.height, info.width)
    assert rel_err(out, single_pass(model, src, 28)) <= TOL
