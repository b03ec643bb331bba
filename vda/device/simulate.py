"""A simulated device (VDA_SIMULATE_MS_PER_FRAME=MS): the host's whole path, with the model replaced by a wait.

It answers "can this host feed N GPUs at MS ms per frame?" without GPUs: a worker loads no model, and each window
(each frame in stream mode) holds the device for MS ms per output frame it produces, as a sleep, because a GPU leaves
the host's cores free while it computes. Decoding, resizing, batch building, the copies, the store, the merge, the
rendering and the writers all stay real, so what the run costs the host is what a real one would.

It stands for a GPU: at the default precision (auto) its pieces are stored in float16, as a GPU run's are, so the
store, pass 1 and rendering read and write what they would behind a GPU. What a GPU does on the device, the simulated
device keeps cheap on the host: the per-frame map, the window's array and each row's [min, max] (vda.device.worker
reads them from the device and copies them to the host while the next window computes).

The depth it returns is not depth: a cheap, deterministic, finite and positive map of each frame at network
resolution (its green channel sampled nearest, as 1 + green / 256), so that the chain, the blending and the writers
do their real work on values that vary with the video. A plan made under simulation records it (Settings.simulated),
so its pieces never mix with a real model's: the worker and the planner refuse the other kind.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from vda.core import stitch

# The fake depth's dtypes, as the worker stores a piece (vda.device.store_dtype)
NUMPY_DTYPE = {torch.float16: np.float16, torch.float32: np.float32}


class SimulatedDevice:
    """What a worker holds instead of a model when the device is simulated."""

    def __init__(self, ms_per_frame: float):
        self.ms_per_frame = ms_per_frame

    def hold(self, frames: int) -> None:
        """The device is busy for `frames` output frames: wall time, no CPU."""
        if self.ms_per_frame > 0 and frames > 0:
            time.sleep(self.ms_per_frame * frames / 1000)


def green_sample(frame: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A frame's green channel sampled nearest at network resolution `shape` (h, w): uint8 [h, w].

    Rows, then columns: the values of frame[rows[:, None], cols, 1] at half its cost (0.79 against 2.1 ms for
    1280x720 to 518x924, 2-core build machine).
    """
    h, w = shape
    rows = (np.arange(h) * frame.shape[0]) // h
    cols = (np.arange(w) * frame.shape[1]) // w
    return frame[:, :, 1].take(rows, axis=0).take(cols, axis=1)


def as_depth(green: np.ndarray, dtype=np.float32) -> np.ndarray:
    """The simulated depth of green values (uint8, any shape): 1 + green / 256, in [1, 2), exact in float16 and
    float32, so that both dtypes hold the same values.

    float16 is built from its bits (sign 0, the exponent of 1.0, green as the mantissa's top 8 bits): numpy converts
    float32 to float16 element by element, 1.7 ms per 518x924 map here, and a GPU run casts on the device.
    """
    if dtype == np.float16:
        bits = green.astype(np.uint16)
        bits <<= 2
        bits |= 0x3C00  # 1.0
        return bits.view(np.float16)
    depth = green.astype(np.float32)
    depth *= np.float32(1 / 256)
    depth += np.float32(1)
    return depth.astype(dtype, copy=False)


def fake_depth(frame: np.ndarray, shape: tuple[int, int], dtype=np.float32) -> np.ndarray:
    """A frame's simulated depth [h, w] at network resolution: deterministic, finite and positive, a function of the
    frame, and far cheaper than a resize of the whole frame (as_depth of its green_sample)."""
    return as_depth(green_sample(frame, shape), dtype)


class SimulatedWindows:
    """Window depths [32, h, w] in window order, as WindowRunner gives them, from each input frame's fake depth.

    Keeps the maps of the frames the next window reads again (frame 0, its keyframe, the overlap) and takes every
    frame from the feed exactly once, as the real runner does, so the decode path is exercised unchanged. Each frame's
    map and its [min, max] are made once, in the stored dtype, as a GPU's output is cast and reduced on the device.
    """

    def __init__(self, device: SimulatedDevice, shape: tuple[int, int], dtype: torch.dtype = torch.float32):
        self.device, self.shape, self.dtype = device, shape, NUMPY_DTYPE[dtype]
        self._maps: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # frame -> (depth [h, w], its [min, max])
        self._upload = np.empty(0, np.uint8)
        self.recomputed: list[int] = []  # never: a simulated device has no fp16 to fall back from

    def _fake(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        np.copyto(self._upload, frame)  # the host's one copy of a frame on a GPU run (Uploader), into a reused buffer
        green = green_sample(self._upload, self.shape)
        extremes = np.array([green.min(), green.max()], np.uint8)
        return as_depth(green, self.dtype), as_depth(extremes, self.dtype)  # as_depth is monotone: exact extremes

    def run(self, w: int, feed, n_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(window w's depth [32, h, w], each row's raw [min, max] [32, 2]): what the worker stages for its store."""
        inputs = stitch.window_inputs(w, n_frames)
        for i in sorted(set(inputs) - self._maps.keys()):
            frame = feed.take(i)
            if self._upload.shape != frame.shape:
                self._upload = np.empty_like(frame)
            self._maps[i] = self._fake(frame)
        depth = torch.from_numpy(np.stack([self._maps[i][0] for i in inputs]))
        rows = torch.from_numpy(np.stack([self._maps[i][1] for i in inputs]))
        self.device.hold(len(stitch.window_outputs(w, n_frames)))
        keep = set(stitch.window_inputs(w + 1, max(n_frames, (w + 1) * stitch.STRIDE + stitch.WINDOW)))
        keep |= {min(i, n_frames - 1) for i in keep}
        self._maps = {i: m for i, m in self._maps.items() if i in keep}
        return depth, rows

    def settled(self, windows: Iterable[int], feed, n_frames: int) -> Iterator[tuple[int, torch.Tensor, int, tuple]]:
        """(w, depth, recomputed, copied) per window, as launch_settled gives them: copied is (rows, piece, no copy
        event), what a GPU's runner has queued to the host by then."""
        for w in windows:
            depth, rows = self.run(w, feed, n_frames)
            yield w, depth, 0, (rows, depth, None)


def simulated_stream(
    device: SimulatedDevice,
    pairs: Iterable[tuple[int, np.ndarray]],
    shape: tuple[int, int],
    dtype: torch.dtype = torch.float32,
) -> Iterator[tuple[int, torch.Tensor]]:
    """(index, depth [h, w]) per frame in the stored dtype, as stream_depths gives them; each frame holds the device
    for one frame (warm-up frames too: a real device computes them)."""
    for i, frame in pairs:
        depth = torch.from_numpy(fake_depth(frame, shape, NUMPY_DTYPE[dtype]))
        device.hold(1)
        yield i, depth
