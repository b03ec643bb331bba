"""Shared fixtures: the parity fixtures from ../shared, synthetic checkpoints, real encoded videos."""

from __future__ import annotations

import importlib.util
import sys
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PARITY = SHARED / "fixtures" / "vda_parity"
VIDEOS = SHARED / "videos"
TOL = 1e-4  # max |ours - ref| <= TOL * max |ref|


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(np.asarray(ours, np.float64) - ref).max() / np.abs(ref).max())


def _synth():
    if not PARITY.is_dir():
        pytest.skip(f"parity fixtures not found at {PARITY}")
    spec = importlib.util.spec_from_file_location("synth_weights", PARITY / "synth_weights.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["synth_weights"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def synth():
    return _synth()


@pytest.fixture(scope="session")
def parity():
    return dict(np.load(PARITY / "public_vits_seed0.npz"))


@pytest.fixture(scope="session")
def vits_state(synth):
    return synth.synth_state_dict("vits", 0)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, vits_state) -> Path:
    """A synthetic checkpoint file in the published layout and name."""
    path = tmp_path_factory.mktemp("ckpt") / "video_depth_anything_vits.pth"
    torch.save(vits_state, path)
    return path


@pytest.fixture(scope="session")
def model(vits_state):
    from vda.model import load_model

    return load_model(vits_state)


@pytest.fixture(scope="session")
def fixture_frames_dir(tmp_path_factory, parity) -> Path:
    """The parity fixture's 70 frames as a folder of lossless PNGs (an image-sequence input)."""
    folder = tmp_path_factory.mktemp("fixture_frames")
    for i, frame in enumerate(parity["frames"]):
        cv2.imwrite(str(folder / f"frame_{i:04d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    return folder


def synthetic_frames(n: int, width: int = 64, height: int = 48, seed: int = 0) -> list[np.ndarray]:
    """Moving gradients with noise: enough structure for the model to give varied depth."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    frames = []
    for t in range(n):
        r = (xx * 4 + t * 3) % 256
        g = (yy * 5 + t * 2) % 256
        b = ((xx + yy) * 2 + t * 7) % 256
        img = np.stack([r, g, b], -1) + rng.randint(0, 20, (height, width, 3))
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return frames


def write_video(path: Path, frames: list[np.ndarray], fps: Fraction = Fraction(24)) -> Path:
    """Encode with a real encoder (x264 through PyAV); decoding it back is what the tests exercise."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": "10"}  # keyframes every 10 frames, so chunk workers really seek
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_images(folder: Path, frames: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"img_{i:05d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    return folder
