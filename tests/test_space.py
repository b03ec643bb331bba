"""The disk-space check before a run: the estimate against the bytes a real run writes, and the refusal."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, synthetic_frames, write_images

from vda.device.serve import work_runs
from vda.io.rundir import RunDir
from vda.merge import merge
from vda.orchestrator.planning import create_plan
from vda.orchestrator.space import (
    NPY_HEADER,
    check_space,
    estimate,
    marker_bytes,
    piece_frames,
    unit_bytes,
    written_bytes,
)

CPU = ["cpu"]


def vda(*args, env=None):
    """The real CLI in a subprocess, one thread per worker: exit code, stdout, stderr."""
    full_env = {**os.environ, "VDA_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-m", "vda", *map(str, args)]
    proc = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True, timeout=600, env=full_env)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module", params=["window", "stream"])
def finished_run(request, tmp_path_factory, checkpoint):
    """A computed and merged run; stream units of 40 frames end in segments shorter than 32 frames."""
    mode = request.param
    tmp = tmp_path_factory.mktemp(f"space_{mode}")
    src = write_images(tmp / "imgs", synthetic_frames(50, 64, 48))
    run = RunDir(tmp / "run")
    unit_size = 2 if mode == "window" else 40
    common = dict(checkpoint=str(checkpoint), input_size=56, mode=mode, unit_size=unit_size, stream_warmup=4)
    plan, _ = create_plan(src, run.path, **common)
    work_runs([run.path], "cpu", checkpoint=str(checkpoint))
    merge(run.path, tmp / "out", "npy", workers=1)
    return tmp, plan, run


def test_the_estimate_covers_the_stored_pieces_and_frames(finished_run):
    tmp, plan, run = finished_run
    need = estimate(plan, "npy", plan.all_pieces(), plan.frame_count, CPU)
    folder = "windows" if plan.settings.mode == "window" else "segments"
    stored = sum(p.stat().st_size for p in (run.path / folder).iterdir())  # .npy and .done
    assert stored <= need.run_bytes <= stored * 1.01
    written = sum(p.stat().st_size for p in (tmp / "out").glob("depth_*.npy"))
    assert need.out_bytes == written  # npy frames: the estimate is exact


def test_frames_written_are_counted_from_one_listing(finished_run):
    """A rerun replaces the frames in place: what is there already is not needed again, and only those frames count
    (not depth_meta.json, another width of name, or a frame past the video's end)."""
    tmp, plan, _ = finished_run
    out = tmp / "out"
    frames = sum(p.stat().st_size for p in out.glob("depth_*.npy"))
    assert written_bytes(out, "npy", plan.frame_count) == frames > 0
    (out / "depth_0000000.npy").write_bytes(b"x" * 10)  # 7 digits: not a name of this video
    (out / f"depth_{plan.frame_count:06d}.npy").write_bytes(b"x" * 10)
    try:
        assert written_bytes(out, "npy", plan.frame_count) == frames
        assert written_bytes(out, "png16", plan.frame_count) == written_bytes(tmp / "nowhere", "npy", 5) == 0
    finally:
        (out / "depth_0000000.npy").unlink()
        (out / f"depth_{plan.frame_count:06d}.npy").unlink()


def test_piece_sizes_come_from_one_pass_over_the_units(finished_run):
    _, plan, run = finished_run
    frames = piece_frames(plan)
    assert list(frames) == plan.all_pieces()
    for piece, n in frames.items():  # each as stored: the .npy's first axis
        assert np.load(run.piece(plan.settings.mode, piece), mmap_mode="r").shape[0] == n


def test_frames_are_counted_at_the_size_written(finished_run):
    """--output-size: the frames take the bytes of the size they are written at, not the frame's."""
    _, plan, _ = finished_run
    s, pieces = plan.settings, plan.all_pieces()
    source = estimate(plan, "npy", pieces, 10, CPU)
    net = estimate(plan, "npy", pieces, 10, CPU, "net")
    big = estimate(plan, "npy", pieces, 10, CPU, "640x480")
    assert source.run_bytes == net.run_bytes == big.run_bytes  # the pieces do not depend on it
    assert source.out_bytes == 10 * (4 * s.frame_width * s.frame_height + NPY_HEADER)
    assert net.out_bytes == 10 * (4 * s.net_width * s.net_height + NPY_HEADER)
    assert big.out_bytes == 10 * (4 * 640 * 480 + NPY_HEADER)


def test_half_precision_pieces_take_half(finished_run):
    """fp16 stores float16; auto computes fp16 on a GPU and fp32 on a CPU, and a piece may go to either device."""
    _, plan, _ = finished_run
    assert plan.settings.precision == "auto"
    full = unit_bytes(plan, 0, CPU)
    half = unit_bytes(plan, 0, ["cuda:0"])
    assert 2 * half - full == NPY_HEADER + marker_bytes(32)  # the data halves; header and marker do not
    assert unit_bytes(plan, 0, ["cuda:0", "cpu"]) == full  # the largest over the devices
    plan.settings.precision = "fp16"
    try:
        assert unit_bytes(plan, 0, ["cuda:0", "cuda:1"]) == half
    finally:
        plan.settings.precision = "auto"


def test_a_finished_run_needs_no_more_space(finished_run):
    tmp, plan, run = finished_run
    need = check_space([(plan, run, tmp / "out")], "npy", CPU)
    assert (need.run_bytes, need.out_bytes) == (0, 0)


def test_a_batch_needs_the_sum_of_its_videos(finished_run, tmp_path, checkpoint):
    tmp, plan, run = finished_run
    s = plan.settings
    fresh, _ = create_plan(plan.input.path, tmp_path / "run", checkpoint=str(checkpoint), input_size=s.input_size)
    alone = check_space([(fresh, RunDir(tmp_path / "run"), tmp_path / "out")], "npy", CPU)
    assert alone == estimate(fresh, "npy", fresh.all_pieces(), fresh.frame_count, CPU)
    runs = [(plan, run, tmp / "out"), (fresh, RunDir(tmp_path / "run"), tmp_path / "out")]
    assert check_space(runs, "npy", CPU) == alone  # the finished video adds nothing


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="mounting a tmpfs needs root")
def test_too_small_a_disk_is_refused_before_any_work(tmp_path, checkpoint):
    src = write_images(tmp_path / "imgs", synthetic_frames(120, 320, 240))
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    try:
        common = [src, "-o", small / "out", "--devices", "cpu", "--checkpoint", checkpoint, "--format", "npy"]
        code, _, err = vda("depth", *common)
        assert code == 2
        (line,) = err.strip().splitlines()
        assert line.startswith("vda: error: not enough disk space:") and "--no-space-check" in line
        assert f"{small}" in line and "MB free, this run needs about" in line and "MB of npy frames" in line
        assert not list((small / "out" / "_run").glob("windows/win_*"))  # nothing computed
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_the_estimate_scales_with_the_format(finished_run):
    _, plan, _ = finished_run
    sizes = {fmt: estimate(plan, fmt, [], 10, CPU).out_bytes for fmt in ("png8", "png16", "npy", "exr")}
    assert sizes["png8"] < sizes["png16"] < sizes["npy"] < sizes["exr"]
    assert np.isclose(sizes["npy"], 10 * (64 * 48 * 4 + 128))


def test_clean_deletes_the_windows_only_after_the_merge(tmp_path, checkpoint):
    src = write_images(tmp_path / "imgs", synthetic_frames(30, 64, 48))
    common = [src, "-o", tmp_path / "out", "--devices", "cpu", "--checkpoint", checkpoint, "--input-size", "56"]
    common += ["--unit-size", "1", "--format", "npy", "--clean"]
    code, out, err = vda("depth", *common)
    assert code == 0, err
    assert "needs about" in err and "MB of disk" in err
    assert len(list((tmp_path / "out").glob("depth_*.npy"))) == 30
    run = tmp_path / "out" / "_run"
    assert (run / "plan.json").is_file() and not (run / "windows").exists() and not (run / "first_pass.json").exists()
    code, _, err = vda("depth", *common, "--retries", "0", env={"VDA_FAIL_AT_UNIT": "1"})
    assert code == 2, err  # a failed run keeps the windows it finished, for the resume
    assert [p.name for p in (run / "windows").rglob("win_*.npy")] == ["win_000000.npy"]
