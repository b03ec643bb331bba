"""The simulated device (issue 21, VDA_SIMULATE_MS_PER_FRAME): the host's real path with the model replaced by a wait.

What it returns is not depth and nothing here checks depth: these tests check that a simulated worker loads no model,
holds its device for the time asked without using the CPU, stores pieces as a GPU run would (float16 at auto, with
each row's extremes) that the merge turns into finite positive frames, gives the same bits on any split, and that
simulated and real pieces never mix.
"""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
from conftest import read_output, run_vda, synthetic_frames, write_video

from vda import config
from vda.config import SIMULATE_ENV, Config
from vda.core.plan import PlanError
from vda.device.serve import work_runs
from vda.device.simulate import fake_depth
from vda.errors import UsageError
from vda.io.pieces import row_range
from vda.io.rundir import RunDir
from vda.merge import merge
from vda.orchestrator.launch import WorkerOptions, worker_env
from vda.orchestrator.planning import create_plan

MS = 20.0
FRAMES = 90


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("sim") / "clip.mp4", synthetic_frames(FRAMES, 64, 48))


@pytest.fixture
def simulated(monkeypatch):
    """This process's settings with the simulated device on, as `vda` reads them from its environment."""
    monkeypatch.setattr(config, "_loaded", Config.from_env({SIMULATE_ENV: str(MS)}))


def test_the_setting_is_read_checked_and_handed_to_every_worker(monkeypatch):
    settings = Config.from_env({SIMULATE_ENV: "7.5"})
    assert settings.faults.simulate_ms == 7.5
    assert settings.faults.env() == {SIMULATE_ENV: "7.5"}  # what local, Docker and Ray workers are given
    assert worker_env(["cpu"], "cpu", WorkerOptions(threads=1), settings)[SIMULATE_ENV] == "7.5"
    assert Config.from_env({}).faults.simulate_ms is None
    for bad in ("fast", "-1", "nan", "inf"):
        with pytest.raises(UsageError, match=re.escape(f"{SIMULATE_ENV}={bad!r} is not a number of milliseconds")):
            Config.from_env({SIMULATE_ENV: bad})


def test_fake_depth_is_a_finite_positive_function_of_the_frame():
    a, b = synthetic_frames(2, 64, 48)
    depth = fake_depth(a, (28, 42))
    assert depth.shape == (28, 42) and depth.dtype == np.float32
    assert np.isfinite(depth).all() and depth.min() > 0
    assert np.array_equal(depth, fake_depth(a.copy(), (28, 42)))
    assert not np.array_equal(depth, fake_depth(b, (28, 42)))
    half = fake_depth(a, (28, 42), np.float16)  # built from its bits: the same values, exactly
    assert half.dtype == np.float16 and np.array_equal(half.astype(np.float32), depth)


def test_a_simulated_worker_loads_no_model_and_waits_without_cpu(tmp_path, video, checkpoint, simulated):
    """The worker is given a checkpoint that does not exist: a real worker would fail to load it."""
    run = RunDir(tmp_path / "run")
    plan, _ = create_plan(video, run.path, checkpoint=str(checkpoint), input_size=56, unit_size=2)
    assert plan.settings.simulated
    wall, cpu = time.perf_counter(), time.process_time()
    assert work_runs([run.path], "cpu", checkpoint=str(tmp_path / "missing.pth")) == len(plan.units)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert wall >= FRAMES * MS / 1000  # every output frame held the device MS ms
    assert cpu < 0.5 * wall, (cpu, wall)  # as a sleep: the host's cores stay free
    for w in plan.all_pieces():  # as a GPU run at auto stores them; the extremes the simulated device gave are exact
        piece = np.load(run.piece("window", w))
        marker = json.loads(run.piece("window", w).with_suffix(".done").read_text())
        assert piece.dtype == np.float16 and marker["dtype"] == "float16"
        assert np.array_equal(np.array(marker["rows"]), row_range(piece).astype(np.float64))
    merge(run.path, tmp_path / "out", "npy", workers=1)
    depth = read_output(tmp_path / "out")
    assert depth.shape == (FRAMES, 48, 64) and np.isfinite(depth).all() and depth.min() > 0


def test_simulated_and_real_pieces_never_mix(tmp_path, video, checkpoint, simulated, monkeypatch):
    run = RunDir(tmp_path / "run")
    create_plan(video, run.path, checkpoint=str(checkpoint), input_size=56, unit_size=2)
    monkeypatch.setattr(config, "_loaded", Config.from_env({}))
    with pytest.raises(PlanError, match=f"planned with {SIMULATE_ENV} and this worker runs without it"):
        work_runs([run.path], "cpu", checkpoint=str(checkpoint))
    with pytest.raises(PlanError, match="holds a different run \\(different simulated\\)"):
        create_plan(video, run.path, checkpoint=str(checkpoint), input_size=56, unit_size=2)


def test_vda_depth_on_simulated_devices_gives_the_same_bits_on_any_split(tmp_path, video, checkpoint, simulated):
    """The real CLI with the variable in its environment (the local backend hands it to each worker process), on two
    workers, against one worker in this process."""
    args = ["--checkpoint", checkpoint, "--input-size", 56, "--unit-size", 2, "--format", "npy"]
    done = run_vda("depth", video, "-o", tmp_path / "two", "--devices", "cpu,cpu", *args, env={SIMULATE_ENV: str(MS)})
    assert "error" not in done.stderr
    run = RunDir(tmp_path / "one")
    create_plan(video, run.path, checkpoint=str(checkpoint), input_size=56, unit_size=2)
    work_runs([run.path], "cpu")
    merge(run.path, tmp_path / "one_out", "npy", workers=1)
    assert np.array_equal(read_output(tmp_path / "two"), read_output(tmp_path / "one_out"))
