"""Folders that cannot mix runs (issue 21): the run folder's lock, --overwrite's clean slate, long frame names.

The runs here use the simulated device (VDA_SIMULATE_MS_PER_FRAME=0): what is checked is which files exist, not depth.
"""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
from conftest import run_vda, synthetic_frames, write_video

from vda import config
from vda.config import SIMULATE_ENV, Config
from vda.device.serve import work_runs
from vda.io.rundir import RunDir, RunFolderBusy
from vda.io.writers import DepthMeta, frame_name, read_depth
from vda.merge import merge
from vda.merge.sinks import FrameFiles
from vda.orchestrator.planning import create_plan


def test_a_second_run_on_a_folder_in_use_is_refused_and_removes_nothing(tmp_path, checkpoint):
    src = write_video(tmp_path / "v.mp4", synthetic_frames(30))
    out = tmp_path / "out"
    root = RunDir(out / "_run")
    with root.locked("the first run"):
        before = sorted(p.name for p in root.path.iterdir())
        with pytest.raises(RunFolderBusy):  # in this process too: a second holder, not a re-entry
            with root.locked("again"):
                pass
        done = run_vda("depth", src, "-o", out, "--devices", "cpu", "--checkpoint", checkpoint, check=False)
        assert done.returncode == 2
        line = f"vda: error: {root.path} is in use by pid {os.getpid()} on {socket.gethostname()} (the first run); "
        assert done.stderr.startswith(line) and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert sorted(p.name for p in root.path.iterdir()) == before  # it planned nothing, removed nothing
    with root.locked("the next run"):  # released: the next one takes it
        assert "(the next run)" in (root.path / ".lock").read_text()


def test_overwrite_deletes_the_old_output_first(tmp_path, checkpoint, monkeypatch):
    monkeypatch.setattr(config, "_loaded", Config.from_env({SIMULATE_ENV: "0"}))
    out = tmp_path / "out"
    for n, overwrite in ((50, False), (25, True)):
        src = write_video(tmp_path / f"v{n}.mp4", synthetic_frames(n, seed=n))
        run = RunDir(tmp_path / f"run{n}")
        create_plan(src, run.path, checkpoint=str(checkpoint), input_size=56)
        work_runs([run.path], "cpu")
        merge(run.path, out, "npy", workers=1, create_video=not overwrite, overwrite=overwrite)
        (out / "notes.txt").write_text("mine")
    assert sorted(p.name for p in out.glob("depth_*")) == [frame_name(i, "npy") for i in range(25)] + [
        "depth_meta.json"
    ]
    assert DepthMeta.load(out).frame_count == 25 and (out / "notes.txt").read_text() == "mine"


def test_frame_names_grow_past_six_digits_at_a_million_frames(tmp_path):
    assert frame_name(7, "png16", 999_999) == "depth_000007.png"
    assert frame_name(7, "png16", 1_000_000) == "depth_0000007.png"
    assert frame_name(999_999, "npy", 1_000_000) == "depth_0999999.npy"
    assert sorted(frame_name(i, "npy", 1_000_001) for i in (999_999, 1_000_000)) == [
        "depth_0999999.npy",
        "depth_1000000.npy",
    ]
    meta = DepthMeta("npy", 1_000_000, "30/1", 4, 3, "vits", False)
    assert meta.pattern == "depth_{index:07d}.npy" and DepthMeta("npy", 10, "30/1", 4, 3, "vits", False).pattern == (
        "depth_{index:06d}.npy"
    )
    depth = np.arange(12, dtype=np.float32).reshape(3, 4)
    FrameFiles(tmp_path, "npy", 0.0, 1.0, 1_000_000).write([(999_999, depth)])
    assert (tmp_path / meta.pattern.format(index=999_999)).is_file()
    assert np.array_equal(read_depth(tmp_path, 999_999, meta), depth)
