"""Stream mode: one frame at a time after the authors' cache of earlier frames, with no host sync per frame."""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from vda.core import stitch
from vda.core.preprocess import PATCH, preprocess
from vda.device.guard import PrecisionGuard, as_stored, recompute_exact
from vda.device.networks import as_network
from vda.device.runtime import Network, Runtime
from vda.device.transfer import Uploader, to_host

STREAM_CACHE = 2 * stitch.STRIDE - stitch.ALIGN  # 42 cached frames: frame 0, then a sliding 41-frame reach


class StreamCache:
    """The authors' streaming context: frame 0 plus a sliding reach of 41 frames, per temporal layer.

    At start the list is filled with copies of frame 0's entry, as if a window of it had been seen.
    """

    def __init__(self):
        self.entries: list[list[torch.Tensor]] = []

    def context(self) -> list[torch.Tensor] | None:
        if not self.entries:
            return None
        picked = self.entries[: stitch.ALIGN] + self.entries[-(stitch.WINDOW - 1 - stitch.ALIGN) :]  # 31 frames
        return [torch.cat([e[k] for e in picked], dim=1) for k in range(len(picked[0]))]

    def push(self, fresh: list[torch.Tensor]) -> None:
        self.entries = self.entries + [fresh] if self.entries else [fresh] * stitch.WINDOW
        if len(self.entries) > STREAM_CACHE:
            del self.entries[1]


# Stream mode's finiteness flags are copied to the host in groups of STREAM_CHECK frames, and a group is read only once
# the next one is launched: one wait per 4 frames, never with the device idle. A fault found late redoes
# the frames launched after it (decoded again, at most 2 x 4 - 1), so 4 keeps that cheap and what is held small.
STREAM_CHECK = 4


class _Flags:
    """The finiteness flags of a group of frames, in one copy to the host; the host waits for it once, when read."""

    def __init__(self, flags: list[torch.Tensor], device: torch.device, cuda):
        self._host, self._done = to_host(torch.stack(flags), device, cuda)
        self._values: list[bool] | None = None

    def read(self, k: int) -> bool:
        if self._values is None:
            if self._done is not None:
                self._done.synchronize()
            self._values = self._host.tolist()
        return self._values[k]


@dataclass
class _Launched:
    """A frame of stream mode launched on the device and not yet settled: what redoing it needs."""

    i: int
    x: torch.Tensor  # its preprocessed input (encoded again if the runner switches to fp32)
    feats: list[torch.Tensor]  # its encoder features
    before: list  # the cache entries it was decoded after
    depth: torch.Tensor
    fresh: list[torch.Tensor]
    precision: str
    flag: torch.Tensor | None  # on the device; None in fp32
    copied: tuple[_Flags, int] | None = None  # its group's flags on the host, and its place in them


class _Stream:
    """stream_depths' state: the authors' cache, and the frames launched but not settled (their finiteness unread).

    A frame found not finite is recomputed in fp32 from the cache it was decoded after, and the frames launched after
    it are decoded again after its healed entries (their features kept: only the cache changed), or encoded again in
    fp32 if the guard switched now: each depth is then exactly what computing frame by frame gives."""

    def __init__(self, model, runtime: Runtime, shape, recomputed: list[int] | None, guard: PrecisionGuard, cuda):
        self.net, self.guard, self.cuda = as_network(model, runtime, shape), guard, cuda
        self.rt = runtime.fp32() if guard.switched else runtime
        self.grid, self.recomputed = (shape[0] // PATCH, shape[1] // PATCH), recomputed
        self.cache, self.pending = StreamCache(), collections.deque()

    def launch(self, i: int, x: torch.Tensor, feats: list[torch.Tensor] | None = None) -> None:
        """Queue frame i (no host sync): encoded (unless `feats`), decoded after the cache, flagged, pushed."""
        before, context = self.cache.entries, self.cache.context()
        with self.net.autocast(self.rt.precision):
            feats = self.net.encode(x) if feats is None else feats
            depth, fresh = self.net.decode(feats, self.grid, 1, cache=context)
        flag = None if self.rt.precision == "fp32" else torch.isfinite(depth).all()
        self.pending.append(_Launched(i, x, feats, before, depth, fresh, self.rt.precision, flag))
        self.cache.push(fresh)
        unread = [f for f in self.pending if f.flag is not None and f.copied is None]
        if len(unread) >= STREAM_CHECK:
            self.copy_flags(unread)

    def copy_flags(self, unread: list[_Launched]) -> None:
        flags = _Flags([f.flag for f in unread], self.rt.device, self.cuda)
        for k, f in enumerate(unread):
            f.copied = (flags, k)

    def settle(self, count: int) -> Iterator[tuple[int, torch.Tensor]]:
        """(index, depth) of the oldest `count` launched frames (fewer if fewer are launched), once their flags are
        read; a frame not finite is recomputed and the frames after it launched again."""
        for _ in range(min(count, len(self.pending))):
            f = self.pending.popleft()
            if f.flag is not None and f.copied is None:
                self.copy_flags([f, *(g for g in self.pending if g.flag is not None and g.copied is None)])
            bad = f.copied is not None and not f.copied[0].read(f.copied[1])
            depth, healed = self._recompute(f) if bad else (f.depth, None)
            if self.guard.record(bad, f.precision, "frames"):
                self.rt = self.rt.fp32()
                self.cache.entries = [[t.float() for t in entry] for entry in self.cache.entries]
            if healed is not None:
                self._redo(healed)
            yield f.i, as_stored(depth[0], f.precision, bad).float()

    def _recompute(self, f: _Launched) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Frame f in fp32, after the cache it was decoded after (upcast); the cache goes back to that, plus its
        fresh entries cast down where that stays finite (one fault costs one frame)."""
        self.cache.entries = f.before
        context = self.cache.context()
        upcast = None if context is None else [c.float() for c in context]

        def compute(net: Network) -> tuple[torch.Tensor, list[torch.Tensor]]:
            depth, fresh = net.decode(net.encode(f.x), self.grid, 1, cache=upcast)
            return depth, [t[None] for t in fresh]  # one "frame"

        depth, healed = recompute_exact(self.net, f"frame {f.i}", compute, f.fresh[0].dtype)
        if self.recomputed is not None:
            self.recomputed.append(f.i)
        return depth, healed[0]

    def _redo(self, healed: list[torch.Tensor]) -> None:
        """Push the healed entries (fp32 if the runner switched), then launch again every frame launched after."""
        fp32 = self.rt.precision == "fp32"
        self.cache.push([t.float() for t in healed] if fp32 else healed)
        later, self.pending = list(self.pending), collections.deque()
        for f in later:
            self.launch(f.i, f.x, None if fp32 else f.feats)


@torch.inference_mode()
def stream_depths(
    model,
    runtime: Runtime,
    pairs: Iterable[tuple[int, np.ndarray]],
    shape: tuple[int, int],
    recomputed: list[int] | None = None,
    guard: PrecisionGuard | None = None,
    cuda=torch.cuda,
) -> Iterator[tuple[int, torch.Tensor]]:
    """(index, depth [h, w]) per frame, in network resolution, carrying the cache through `pairs`; each depth is
    rounded as a worker stores it (as_stored), so the single pass and the workers agree in every precision.

    A frame whose depth is not finite in fp16/bf16 is recomputed once in fp32 (with the same cache, upcast) and its
    index appended to `recomputed`; its fresh cache entries are cast down where that stays finite (else kept in
    fp32), so one fault costs one frame. NonFiniteDepth if fp32 does not help either. After `guard.after` frames in
    a row needed it, the rest is computed in fp32. No host sync per frame: finiteness is read per group
    of STREAM_CHECK frames, a group after the next is launched, so depths come out up to 2 x 4 - 1 frames late.
    """
    stream = _Stream(model, runtime, shape, recomputed, guard or PrecisionGuard(), cuda)
    upload = Uploader(runtime.device, 1, cuda)
    for i, frame in pairs:
        stream.launch(i, preprocess(upload([frame]), shape))
        if stream.rt.precision == "fp32":  # nothing to read: each depth is final at once
            yield from stream.settle(len(stream.pending))
        elif len(stream.pending) >= 2 * STREAM_CHECK:
            yield from stream.settle(STREAM_CHECK)
    yield from stream.settle(len(stream.pending))
