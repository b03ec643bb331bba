"""Rendering ahead (issue 22): a video's frames written as pass 1 reaches them, while its later units still compute.

The pieces come from the simulated device (issue 21): these tests check where and when frames are written and that
they are the merge's own frames, bit for bit, not depth.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import read_output, run_vda, synthetic_frames, write_video

from vda import config
from vda.config import SIMULATE_ENV, Config
from vda.core import stitch
from vda.device.serve import work_runs
from vda.io.rundir import RunDir
from vda.merge import merge
from vda.merge.early import EarlyMerge
from vda.merge.output import Output, prepare_output, record_rendered, rendered_ahead
from vda.orchestrator.planning import create_plan

FRAMES = 130  # 6 windows
NPY = ("--format", "npy", "--input-size", 28, "--unit-size", 1)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("ahead") / "clip.mp4", synthetic_frames(FRAMES, 64, 48))


@pytest.fixture
def computed(tmp_path, video, checkpoint, monkeypatch):
    """A run with every window stored by the simulated device (1 ms per frame), in this process."""
    monkeypatch.setattr(config, "_loaded", Config.from_env({SIMULATE_ENV: "1"}))
    run = RunDir(tmp_path / "run")
    plan, _ = create_plan(video, run.path, checkpoint=str(checkpoint), input_size=28, unit_size=1)
    assert len(plan.units) == 6
    work_runs([run.path], "cpu", checkpoint=str(checkpoint))
    return run, plan


def _frame_files(out):
    return sorted(p.name for p in out.glob("depth_*.npy"))


def _wait(condition, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_units_are_written_as_pass_1_passes_them_and_the_merge_goes_on_after(tmp_path, computed):
    run, plan = computed
    out = tmp_path / "out"
    output = Output(out, "npy", workers=2)
    hidden = [run.path / "windows" / f"win_{w:06d}.done" for w in (4, 5)]  # as if windows 4 and 5 were computing
    for marker in hidden:
        marker.rename(marker.with_suffix(".later"))
    with EarlyMerge([run.path], poll_s=0.01, outputs={run.path: output}) as early:
        _wait(lambda: rendered_ahead(run.path, plan, output) == 4)  # windows 0-3: pass 1 has passed them
        time.sleep(0.3)  # and no further, however long it waits
        assert rendered_ahead(run.path, plan, output) == 4
        expected = [f"depth_{f:06d}.npy" for w in range(4) for f in stitch.window_outputs(w, FRAMES)]
        assert _frame_files(out) == expected
        for marker in hidden:
            marker.with_suffix(".later").rename(marker)
        _wait(lambda: rendered_ahead(run.path, plan, output) == 6)
        early.release(run.path)
    said = []
    merge(run.path, out, "npy", workers=2, log=said.append)
    assert "and 6 were rendered ahead" in said[0]
    assert not run.rendered_ahead.exists()  # complete: a later merge writes every frame again
    merge(run.path, tmp_path / "whole", "npy", workers=1)  # no frame written ahead for this folder
    assert _frame_files(out) == _frame_files(tmp_path / "whole") and len(_frame_files(out)) == FRAMES
    assert np.array_equal(read_output(out), read_output(tmp_path / "whole"))


def test_the_record_counts_only_for_its_own_output_and_overwrite_keeps_it(tmp_path, computed):
    run, plan = computed
    out = tmp_path / "out"
    npy = Output(out, "npy", workers=2)
    assert npy.renders_ahead and Output(out, "png16", png_scale=0.001).renders_ahead
    assert not Output(out, "png16").renders_ahead  # its quantisation needs every unit's range
    assert not Output(out, "npy", create_video=True).renders_ahead  # the video is encoded in order, in colours
    record_rendered(run.path, plan, npy, 2)
    assert rendered_ahead(run.path, plan, npy) == 2
    for other in (Output(tmp_path / "else", "npy"), Output(out, "npz"), Output(out, "npy", output_size="net")):
        assert rendered_ahead(run.path, plan, other) == 0
    (out / "depth_000000.npy").parent.mkdir(parents=True)
    (out / "depth_000000.npy").write_bytes(b"a frame this run wrote ahead")
    assert prepare_output(run.path, plan, Output(out, "npy", overwrite=True)) == 2
    assert (out / "depth_000000.npy").exists()  # kept: --overwrite deletes other runs' frames, not these
    assert prepare_output(run.path, plan, Output(out, "npz", overwrite=True)) == 0
    assert not (out / "depth_000000.npy").exists() and not run.rendered_ahead.exists()


@pytest.mark.slow
def test_vda_depth_writes_frames_before_its_last_unit_is_stored(tmp_path, video, checkpoint):
    """`vda depth` on the simulated device at 80 ms per frame: about 2 s per window, while pass 1 polls every 0.5 s
    (and the render pool takes seconds to start: each process imports torch)."""
    out = tmp_path / "out"
    run_vda(
        "depth",
        video,
        "-o",
        out,
        "--devices",
        "cpu",
        "--checkpoint",
        checkpoint,
        *NPY,
        "--merge-workers",
        2,
        env={SIMULATE_ENV: "80"},
    )
    last_stored = max(p.stat().st_mtime for p in (out / "_run" / "windows").glob("*.done"))
    first_frame = min(p.stat().st_mtime for p in out.glob("depth_*.npy"))
    assert first_frame < last_stored
    assert len(_frame_files(out)) == FRAMES
