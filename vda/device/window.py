"""Window mode: 32-frame windows every 22 frames, each launched on the device before the one before it settles.

Memory is bounded by one window whatever the video's length: frames are pulled lazily, and encoder features are kept
only for the frames the next window reuses (frame 0, the keyframe, the 8 overlap frames: 10 of 32 not encoded again).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from vda.core import stitch
from vda.core.preprocess import PATCH, preprocess
from vda.device.clock import StageClock
from vda.device.feed import FrameFeed
from vda.device.guard import PrecisionGuard, as_stored, recompute_exact
from vda.device.networks import as_network
from vda.device.runtime import Network, Runtime
from vda.device.transfer import Uploader, to_host


@dataclass
class PendingWindow:
    """A window launched on the device whose finiteness the host has not read yet.

    The flag (torch.isfinite(depth).all()) is computed on the device and its copy to the host queued right behind the
    window's work (after what `copy_piece` queued: the worker's copy of the depth to the host), so that the host reads
    it only once the next window is launched (WindowRunner.settle): the device never waits for the host in between.
    """

    w: int
    n_frames: int
    inputs: list[int]
    new: list[int]  # the frames first encoded for it, in the order they were (encoded again if the runner goes fp32)
    precision: str
    depth: torch.Tensor  # [32, h, w], rounded as stored, float32, on the device
    flag: torch.Tensor | None  # host bool, filled by the copy that `done` marks; None in fp32 (nothing to check)
    done: object = None  # the CUDA event after the flag's copy; None on CPU
    copied: object = None  # what the caller's `copy_piece` queued for this depth (the worker: its copy to the host)

    def finite(self) -> bool:
        """Whether its depth is finite: waits for the flag's copy on CUDA (one window later than it was queued)."""
        if self.flag is None:
            return True
        if self.done is not None:
            self.done.synchronize()
        return bool(self.flag)


def _next_inputs(w: int, n_frames: int) -> set[int]:
    """The frames window w + 1 reads (those of a longer video too: `n_frames` may be a lower bound)."""
    keep = set(stitch.window_inputs(w + 1, max(n_frames, (w + 1) * stitch.STRIDE + stitch.WINDOW)))
    return keep | {min(i, n_frames - 1) for i in keep}


class WindowRunner:
    """Computes raw window depths [32, h, w] (network resolution, float32, rounded as stored) in window order.

    Encoder features are kept per source frame, as compact copies in the compute dtype (a slice would pin its whole
    batch), and evicted once no later window reads them; frames go through one micro-batch at a time, so no window is
    ever held in fp32 at frame resolution.

    fp16/bf16: a window whose depth is not finite is computed again in fp32 (guard.recompute_exact), which heals the
    features later windows reuse; the window launched after it is decoded again from them (`redone`). So the raw
    frames of the two windows not yet settled are kept. `recomputed` lists the windows, `fp32_frames` counts frames.
    """

    def __init__(
        self,
        model,
        runtime: Runtime,
        shape: tuple[int, int],
        guard: PrecisionGuard | None = None,
        clock: StageClock | None = None,
        cuda=torch.cuda,
    ):
        self.net, self.shape = as_network(model, runtime, shape), shape
        self.rt = runtime.fp32() if guard is not None and guard.switched else runtime
        self.guard, self.clock, self.cuda = guard or PrecisionGuard(), clock or StageClock(), cuda
        self.grid = (shape[0] // PATCH, shape[1] // PATCH)
        self._features: dict[int, list[torch.Tensor]] = {}
        self._frames: dict[int, np.ndarray] = {}  # raw frames of the windows not settled, for the fp32 recompute
        self._upload = Uploader(runtime.device, runtime.micro_batch or stitch.WINDOW, cuda)
        self.recomputed: list[int] = []
        self.redone: list[int] = []  # windows launched again because the one before them was not finite
        self.fp32_frames = 0

    def run(self, w: int, feed: FrameFeed, n_frames: int) -> torch.Tensor:
        """Window w, launched and settled at once (the single pass); the worker overlaps them (`launch`, `settle`)."""
        depth, _, _ = self.settle(self.launch(w, feed, n_frames))
        return depth

    @torch.inference_mode()
    def launch(self, w: int, feed: FrameFeed, n_frames: int, copy_piece=None) -> PendingWindow:
        """Queue window w's work on the device, with no host sync: its new frames encoded, the head, the finiteness
        flag, and `copy_piece(depth, precision)` (a copy the caller queues behind it). Windows are launched in order."""
        inputs = stitch.window_inputs(w, n_frames)
        self._features = {i: f for i, f in self._features.items() if i in inputs}  # no later window reads the rest
        new = sorted(set(inputs) - self._features.keys())
        self.clock.start(w)
        self.clock.device_mark(self.rt.device)
        with self.net.autocast(self.rt.precision):
            self._encode_new(feed.take, new)
        pending = self._decode_pending(w, n_frames, inputs, new, copy_piece)
        self.clock.lap("compute")
        self.clock.device_mark(self.rt.device)
        return pending

    @torch.inference_mode()
    def settle(
        self, pending: PendingWindow, after: PendingWindow | None = None, copy_piece=None
    ) -> tuple[torch.Tensor, int, PendingWindow | None]:
        """(depth, 1 if it was recomputed in fp32 else 0, `after` or its redo) for `pending`, once its flag is read.

        The host blocks on the flag's copy only, with `after` (the next window, if launched) queued behind it. Not
        finite: `pending` is recomputed in fp32, which heals the cache, and `after`, launched from the unhealed
        features, is launched again (`copy_piece` its copy): decoded from the healed features, or, if the guard switched
        to fp32 now, its new frames encoded again in fp32, as they would have been had it been launched after."""
        finite = pending.finite()
        self.clock.lap("finite sync")
        depth = pending.depth
        if not finite:
            depth = as_stored(self._recompute_fp32(pending.w, pending.inputs), "fp32").float()
        switch = self.guard.record(not finite, pending.precision, "windows")
        if switch:
            self.rt = self.rt.fp32()
            self._features = {i: [f.float() for f in feats] for i, feats in self._features.items()}
        if not finite and after is not None:
            after = self._redo(after, switch, copy_piece)
        keep = _next_inputs(pending.w, pending.n_frames)  # `after` holds its new frames too: they are in it
        self._frames = {} if self.rt.precision == "fp32" else {i: f for i, f in self._frames.items() if i in keep}
        return depth, int(not finite), after

    def _redo(self, after: PendingWindow, fp32: bool, copy_piece) -> PendingWindow:
        """`after` launched again from the healed cache; its own new frames encoded again only if now in fp32."""
        self.redone.append(after.w)
        if fp32:
            for i in after.new:
                del self._features[i]
            with self.net.autocast(self.rt.precision):
                self._encode_new(self._frames.__getitem__, after.new)
        return self._decode_pending(after.w, after.n_frames, after.inputs, after.new, copy_piece)

    def _encode_new(self, take, new: list[int]) -> None:
        """Encode a window's new frames (`take(i)` gives frame i) one micro-batch at a time, into the cache (in the
        compute dtype). Frames are let go once uploaded, unless the fp32 recompute may need them."""
        step = self.rt.micro_batch or max(1, len(new))
        for start in range(0, len(new), step):
            chunk = new[start : start + step]
            frames = [take(i) for i in chunk]
            self.clock.lap("decode wait")
            if self.rt.precision != "fp32":
                self._frames.update(zip(chunk, frames))
            x = preprocess(self._upload(frames), self.shape)
            self.clock.lap("batch")
            feats = self.net.encode(x, step)
            for k, i in enumerate(chunk):
                self._features[i] = [level[k].to(self.rt.dtype, copy=True) for level in feats]
            self.clock.lap("compute")

    def _decode_pending(self, w: int, n_frames: int, inputs: list[int], new: list[int], copy_piece) -> PendingWindow:
        """The head over the window's cached features (in autocast), then, outside it, the depth as stored, the
        caller's `copy_piece` and the finiteness flag queued behind it."""
        with self.net.autocast(self.rt.precision):
            window = [torch.stack([self._features[i][lv] for i in inputs]) for lv in range(4)]
            raw, _ = self.net.decode(window, self.grid, stitch.WINDOW, micro_batch=self.rt.micro_batch)
        precision = self.rt.precision
        depth = as_stored(raw, precision).float()
        copied = None if copy_piece is None else copy_piece(depth, precision)
        flag = done = None
        if precision != "fp32":  # the flag stays on the device; its copy is read one window later (settle)
            flag, done = to_host(torch.isfinite(raw).all(), self.rt.device, self.cuda)
        return PendingWindow(w, n_frames, inputs, new, precision, depth, flag, done, copied)

    def _recompute_fp32(self, w: int, inputs: list[int]) -> torch.Tensor:
        """The window again in fp32 (recompute_exact); its frames' features replace the cached ones."""
        self.recomputed.append(w)
        unique = sorted(set(inputs))
        step = self.rt.micro_batch or len(unique)

        def compute(net: Network) -> tuple[torch.Tensor, list[torch.Tensor]]:
            levels = []
            for start in range(0, len(unique), step):
                x = preprocess(self._upload([self._frames[i] for i in unique[start : start + step]]), self.shape)
                levels.append(net.encode(x))
            feats = [torch.cat(level) for level in zip(*levels)]  # per level [len(unique), ...]
            row = {i: [level[k] for level in feats] for k, i in enumerate(unique)}
            window = [torch.stack([row[i][lv] for i in inputs]) for lv in range(4)]
            depth, _ = net.decode(window, self.grid, stitch.WINDOW, micro_batch=self.rt.micro_batch)
            return depth, feats

        depth, healed = recompute_exact(self.net, f"window {w}", compute, self.rt.dtype)
        self.fp32_frames += len(unique)
        self._features.update(zip(unique, healed))
        return depth


def launch_settled(
    runner: WindowRunner, windows: Iterable[int], feed: FrameFeed, n_frames: int, copy_piece=None
) -> Iterator[tuple[int, torch.Tensor, int, object]]:
    """(w, depth, recomputed, copied) per window, in order, each window settled only after the next one is launched:
    the host waits for window w's finiteness while w + 1 is queued on the device. `copied` is what
    `copy_piece(depth, precision)` queued for that depth, None where the window was recomputed (its depth is new)."""
    pending = None
    for w in windows:
        launched = runner.launch(w, feed, n_frames, copy_piece)
        if pending is not None:
            depth, fresh, launched = runner.settle(pending, launched, copy_piece)
            yield pending.w, depth, fresh, None if fresh else pending.copied
        pending = launched
    if pending is not None:
        depth, fresh, _ = runner.settle(pending)
        yield pending.w, depth, fresh, None if fresh else pending.copied
