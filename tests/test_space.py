"""The disk-space check before a run: the estimate against the bytes a real run writes, and the refusal."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest
from conftest import synthetic_frames, write_images
from test_faults import vda

from orchestrator.planning import create_plan
from orchestrator.space import check_space, estimate, unit_bytes
from vda.merge import merge
from vda.worker import run_chunk, units_of


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, checkpoint):
    tmp = tmp_path_factory.mktemp("space")
    src = write_images(tmp / "imgs", synthetic_frames(50, 64, 48))
    plan, _ = create_plan(src, tmp / "run", ["cpu", "cpu"], checkpoint=str(checkpoint), input_size=56)
    for chunk in plan.chunks:
        run_chunk(tmp / "run", chunk.index, checkpoint=str(checkpoint))
    merge(tmp / "run", tmp / "out", "npy", workers=1)
    return tmp, plan


def test_the_estimate_covers_the_stored_windows_and_frames(finished_run):
    tmp, plan = finished_run
    units = [u for c in plan.chunks for u in units_of(plan, c.index)]
    need = estimate(plan, "npy", units, plan.frame_count)
    stored = sum(p.stat().st_size for p in (tmp / "run" / "windows").rglob("win_*"))  # .npy and .done
    assert stored <= need.run_bytes <= stored * 1.01
    written = sum(p.stat().st_size for p in (tmp / "out").glob("depth_*.npy"))
    assert need.out_bytes == written  # npy frames: the estimate is exact


def test_fp16_units_take_half(finished_run):
    _, plan = finished_run
    plan.settings.precision = "fp16"
    try:
        half = unit_bytes(plan, 0)
    finally:
        plan.settings.precision = "fp32"
    assert abs(2 * half - unit_bytes(plan, 0)) < 1024


def test_a_finished_run_needs_no_more_space(finished_run):
    tmp, plan = finished_run
    need = check_space(plan, tmp / "run", tmp / "out", "npy")
    assert (need.run_bytes, need.out_bytes) == (0, 0)


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
    _, plan = finished_run
    sizes = {fmt: estimate(plan, fmt, [], 10).out_bytes for fmt in ("png8", "png16", "npy", "exr")}
    assert sizes["png8"] < sizes["png16"] < sizes["npy"] < sizes["exr"]
    assert np.isclose(sizes["npy"], 10 * (64 * 48 * 4 + 128))


def test_clean_deletes_the_windows_only_after_the_merge(tmp_path, checkpoint):
    src = write_images(tmp_path / "imgs", synthetic_frames(30, 64, 48))
    common = [src, "-o", tmp_path / "out", "--devices", "cpu", "--checkpoint", checkpoint, "--input-size", "56"]
    code, out, err = vda("depth", *common, "--format", "npy", "--clean")
    assert code == 0, err
    assert "needs about" in err and "MB of disk" in err
    assert len(list((tmp_path / "out").glob("depth_*.npy"))) == 30
    run = tmp_path / "out" / "_run"
    assert (run / "plan.json").is_file() and not (run / "windows").exists() and not (run / "first_pass.json").exists()
    code, _, err = vda("depth", *common, "--format", "npy", "--clean", env={"VDA_FAIL_AT_UNIT": "1"})
    assert code == 2  # a failed run keeps the windows it finished, for the resume
    assert [p.name for p in (run / "windows").rglob("win_*.npy")] == ["win_000000.npy"]
