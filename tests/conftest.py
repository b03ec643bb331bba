"""Shared fixtures: synthetic checkpoints, the reference outputs in tests/data, real encoded videos.

Everything here comes from the repository itself. `../shared` (our build machines' material) feeds only the tests
marked `shared`; where it is absent they are deselected, never skipped or failed.
"""

from __future__ import annotations

import json
import sys
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


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(np.asarray(ours, np.float64) - ref).max() / np.abs(ref).max())


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
