"""Shared fixtures: synthetic checkpoints, the reference outputs in tests/data, real encoded videos.

Everything here comes from the repository itself. `../shared` (our build machines' material) feeds only the tests
marked `shared`; where it is absent they are deselected, never skipped or failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
SHARED = ROOT.parent / "shared"
TOL = 1e-4  # max |ours - ref| <= TOL * max |ref|

sys.path.insert(0, str(ROOT / "tests"))
from media import (  # noqa: E402  (re-exported for the test modules)
    numbered_frames,
    portrait_phone_video,
    synthetic_frames,
    write_images,
    write_video,
)

__all__ = ["numbered_frames", "portrait_phone_video", "synthetic_frames", "write_images", "write_video"]


@pytest.fixture(autouse=True)
def _settings_from_each_tests_environment(monkeypatch):
    """Each test reads the VDA_* settings of its own environment: a command run in this process (`cli.main`) loads
    them once (vda.config.load), and they would otherwise outlive it into the next test."""
    from vda import config

    monkeypatch.setattr(config, "_loaded", None)


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(np.asarray(ours, np.float64) - ref).max() / np.abs(ref).max())


def one_thread_env(**extra: str) -> dict[str, str]:
    """This environment with VDA_THREADS=1 (results comparable bit for bit, and two workers share 2 cores)."""
    return {**os.environ, "VDA_THREADS": "1", **extra}


def run_vda(*args, env: dict[str, str] | None = None, timeout: float = 600, check: bool = True):
    """The real `vda` CLI in a subprocess at one thread; with `check`, a non-zero exit fails with its output."""
    cmd = [sys.executable, "-m", "vda", *map(str, args)]
    done = subprocess.run(
        cmd, capture_output=True, text=True, cwd=ROOT, env=one_thread_env(**(env or {})), timeout=timeout
    )
    if check and done.returncode != 0:
        raise AssertionError(f"exit {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


def process_alive(pid: int) -> bool:
    """Whether a process runs (a zombie, dead but not yet reaped by init, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(what, timeout: float, step: float = 0.1) -> bool:
    """Poll `what()` until it is true or `timeout` seconds pass; its last answer."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if what():
            return True
        time.sleep(step)
    return bool(what())


def read_output(out: Path) -> np.ndarray:
    """Every frame of a merged output folder, as float32, through its depth_meta.json."""
    from vda.io.writers import DepthMeta, read_depth

    meta = DepthMeta.load(out)
    return np.stack([read_depth(out, i, meta) for i in range(meta.frame_count)])


def single_pass(model, src: Path, input_size: int, **kw) -> np.ndarray:
    """The whole of `src` through vda's own single-pass inference: what a split run must equal."""
    from vda.device.single_pass import infer_video
    from vda.io.decode import read_frames
    from vda.io.probe import probe

    info = probe(src)
    frames = (f for _, f in read_frames(info, range(info.frame_count)))
    return np.stack(list(infer_video(model, frames, input_size=input_size, **kw)))


def pytest_collection_modifyitems(config, items):
    """Tests marked `shared` need ../shared: without it they are deselected, so a clone alone has no skips."""
    if SHARED.is_dir():
        return
    keep = [item for item in items if item.get_closest_marker("shared") is None]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in keep])
        items[:] = keep


@pytest.fixture(scope="session")
def layout() -> dict:
    """The published checkpoints' tensor names and shapes per encoder, and their head config (facts, as data)."""
    return json.loads((DATA / "checkpoint_layout.json").read_text())


@pytest.fixture(scope="session")
def parity() -> dict:
    """The authors' implementation on our synthetic frames and weights (see tests/data/README.md)."""
    return dict(np.load(DATA / "reference_vits_seed0.npz"))


@pytest.fixture(scope="session")
def vits_state() -> dict[str, torch.Tensor]:
    from vda.model.synth import synth_state_dict

    return synth_state_dict("vits", 0)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, vits_state) -> Path:
    """A synthetic checkpoint file in the published layout and name."""
    path = tmp_path_factory.mktemp("ckpt") / "video_depth_anything_vits.pth"
    torch.save(vits_state, path)
    return path


@pytest.fixture(scope="session")
def model(vits_state):
    from vda.model.network import load_model

    return load_model(vits_state)


@pytest.fixture(scope="session")
def fixture_frames_dir(tmp_path_factory, parity) -> Path:
    """The reference's 70 frames as a folder of lossless PNGs (an image-sequence input)."""
    folder = tmp_path_factory.mktemp("fixture_frames")
    for i, frame in enumerate(parity["frames"]):
        cv2.imwrite(str(folder / f"frame_{i:04d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    return folder
