"""A simulated device (VDA_SIMULATE_MS_PER_FRAME=MS): the host's whole path, with the model replaced by a wait.

It answers "can this host feed N GPUs at MS ms per frame?" without GPUs: a worker loads no model, and each window
(each frame in stream mode) holds the device for MS ms per output frame it produces, as a sleep, because a GPU leaves
the host's cores free while it computes. Decoding, resizing, batch building, the copies, the store, the merge, the
rendering and the writers all stay real, so what the run costs the host is what a real one would.

The depth it returns is not depth: a cheap, deterministic, finite and positive map of each frame at network
resolution (its green channel, sampled nearest, shifted off zero), so that the chain, the blending and the writers do
their real work on values that vary with the video. A plan made under simulation records it (Settings.simulated), so
its pieces never mix with a real model's: the worker and the planner refuse the other kind.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from vda.core import stitch

OFFSET = (
    0.25  # keeps every value positive, so that no "depth" is zero (the chain divides by nothing, but writers scale)
)


class SimulatedDevice:
    """What a worker holds instead of a model when the device is simulated."""

    def __init__(self, ms_per_frame: float):
        self.ms_per_frame = ms_per_frame

    def hold(self, frames: int) -> None:
        """The device is busy for `frames` output frames: wall time, no CPU."""
        if self.ms_per_frame > 0 and frames > 0:
            time.sleep(self.ms_per_frame * frames / 1000)


def fake_depth(frame: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A frame's simulated depth [h, w] at network resolution: its green channel sampled nearest, in
    [OFFSET, 1 + OFFSET]. Deterministic, finite and positive; far cheaper than a resize of the whole frame."""
    h, w = shape
    rows = (np.arange(h) * frame.shape[0]) // h
    cols = (np.arange(w) * frame.shape[1]) // w
    # rows, then columns, then widened in place: the values of frame[rows[:, None], cols, 1] at half its cost (0.99
    # against 2.1 ms for 1280x720 to 518x924); a real worker does none of this on the host, so it must stay small
    out = frame[:, :, 1].take(rows, axis=0).take(cols, axis=1).astype(np.float32)
    out *= np.float32(1 / 255)
    out += np.float32(OFFSET)
    return out


class SimulatedWindows:
    """Window depths [32, h, w] in window order, as WindowRunner gives them, from each input frame's fake depth.

    Keeps the maps of the frames the next window reads again (frame 0, its keyframe, the overlap) and takes every
    frame from the feed exactly once, as the real runner does, so the decode path is exercised unchanged.
    """

    def __init__(self, device: SimulatedDevice, shape: tuple[int, int]):
        self.device, self.shape = device, shape
        self._maps: dict[int, np.ndarray] = {}
        self.recomputed: list[int] = []  # never: a simulated device has no fp16 to fall back from

    def run(self, w: int, feed, n_frames: int) -> torch.Tensor:
        inputs = stitch.window_inputs(w, n_frames)
        for i in sorted(set(inputs) - self._maps.keys()):
            self._maps[i] = fake_depth(feed.take(i), self.shape)
        depth = torch.from_numpy(np.stack([self._maps[i] for i in inputs]))
        self.device.hold(len(stitch.window_outputs(w, n_frames)))
        keep = set(stitch.window_inputs(w + 1, max(n_frames, (w + 1) * stitch.STRIDE + stitch.WINDOW)))
        keep |= {min(i, n_frames - 1) for i in keep}
        self._maps = {i: m for i, m in self._maps.items() if i in keep}
        return depth


def simulated_stream(
    device: SimulatedDevice, pairs: Iterable[tuple[int, np.ndarray]], shape: tuple[int, int]
) -> Iterator[tuple[int, torch.Tensor]]:
    """(index, depth [h, w]) per frame, as stream_depths gives them; each frame holds the device for one frame
    (warm-up frames too: a real device computes them)."""
    for i, frame in pairs:
        depth = torch.from_numpy(fake_depth(frame, shape))
        device.hold(1)
        yield i, depth
