"""Copies between the host and a device: frames up (`Uploader`), depth, row extremes and flags down (`to_host`).

On CUDA every copy is queued without the host waiting: pinned host memory, non-blocking copies, and an event the
reader waits on later (one window late for flags, in the store thread for pieces). On a CPU nothing is copied.
`cuda` is torch.cuda; tests pass a fake and replace `pinned_empty` (a CPU build of torch cannot pin).
"""

from __future__ import annotations

import numpy as np
import torch

from vda.device.runtime import store_dtype


def pinned_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Page-locked host memory, which a copy from or to a GPU needs to run asynchronously; tests with a fake
    torch.cuda replace it (a CPU build of torch cannot pin)."""
    return torch.empty(shape, dtype=dtype, pin_memory=True)


def copy_done_event(device: torch.device, cuda=torch.cuda):
    """A blocking CUDA event after the work queued so far on `device`'s current stream.

    A copy from a tensor on cuda:K is queued on cuda:K's current stream, whatever the current device is; an event
    recorded on the current device's stream (cuda:0 unless someone called set_device) could complete before the copy
    lands, and the store thread would read a half-filled buffer: silent garbage on every GPU but the first. Blocking,
    so that waiting for it sleeps instead of spinning a core. `cuda` is torch.cuda; tests pass a fake (no GPU on CI).
    """
    event = cuda.Event(blocking=True)
    event.record(cuda.current_stream(device))
    return event


def to_host(t: torch.Tensor, device: torch.device | None = None, cuda=torch.cuda, done: bool = True):
    """Queue the copy of `t` (on `device`, default its own) to page-locked host memory without waiting: (host tensor,
    blocking event after the copy, or None when not `done`). On a CPU: `t` itself and no event. The one path from the
    device to the host: depth pieces, their row extremes and the finiteness flags all take it."""
    device = device or t.device
    if device.type != "cuda":
        return t, None
    host = pinned_empty(tuple(t.shape), t.dtype)
    host.copy_(t, non_blocking=True)
    return host, copy_done_event(device, cuda) if done else None


# Pinned batches an Uploader cycles through: one being filled by the host while the one before is copied to the
# device, and one spare, so that the host rarely finds the buffer it wants still being read by its copy.
UPLOAD_BUFFERS = 3


class Uploader:
    """Frames to the device, one batch at a time, uint8 [n, H, W, 3], with no batch building in the GPU's way.

    On CUDA each frame is copied once, from the decoder's array into a pre-allocated pinned buffer [rows, H, W, 3] of
    a small pool reused round-robin (no np.stack, no second copy to pin it); the copy to the device is queued on a
    side stream, and the compute stream waits for it on the device (an event), never the host. A buffer is filled
    again only once the copy that last read it has landed: the host waits on that copy's event, which the copy engine
    completes whatever the compute stream is doing. On CPU: one stacked batch, nothing pinned, no stream.
    `cuda` is torch.cuda; tests pass a fake and replace `_transfer` (no GPU on CI).
    """

    def __init__(self, device: torch.device, rows: int, cuda=torch.cuda, buffers: int = UPLOAD_BUFFERS):
        self.device, self.rows, self.cuda = device, rows, cuda
        self._pool: list[list] = [[None, None] for _ in range(buffers)]  # [pinned buffer, event of its last copy]
        self._turn = 0
        self._side = None

    def __call__(self, frames: list[np.ndarray]) -> torch.Tensor:
        if self.device.type != "cuda":
            return torch.from_numpy(np.stack(frames))
        slot = self._pool[self._turn]
        self._turn = (self._turn + 1) % len(self._pool)
        if slot[1] is not None:
            slot[1].synchronize()  # the copy that last read this buffer has landed (a copy, never the compute)
        shape = (max(self.rows, len(frames)), *frames[0].shape)
        if slot[0] is None or tuple(slot[0].shape) != shape:
            slot[0] = pinned_empty(shape, torch.uint8)
        rows = slot[0][: len(frames)]
        view = rows.numpy()
        for k, frame in enumerate(frames):
            view[k] = frame  # the one host copy: decoder's array -> pinned buffer
        self._side = self._side or self.cuda.Stream(self.device)
        compute = self.cuda.current_stream(self.device)
        with self.cuda.stream(self._side):
            batch = self._transfer(rows, compute)
            slot[1] = self.cuda.Event(blocking=True)
            slot[1].record(self._side)
        compute.wait_event(slot[1])  # the compute stream, not the host, waits for the batch
        return batch

    def _transfer(self, rows: torch.Tensor, compute) -> torch.Tensor:
        """The copy to the device, queued on the current (side) stream; the batch is used on `compute`, which the
        caching allocator is told, so that it does not hand the memory out again before compute is done with it."""
        batch = rows.to(self.device, non_blocking=True)
        batch.record_stream(compute)
        return batch


def piece_to_host(depth: torch.Tensor, precision: str) -> tuple[torch.Tensor, torch.Tensor, object]:
    """Queue a piece's copies to the host without waiting: its per-row raw [min, max] ([k, 2]), then the piece in its
    stored dtype (store_dtype), whose event covers both. The runner calls it as it launches a window, before the next
    window is queued.

    The extremes are taken before the cast: rounding is monotone, so the cast of a row's extreme is exactly the
    extreme of the cast row, and the merge's pass 1 reads a window's range from its marker, not from the piece.
    """
    flat = depth.detach().flatten(1)
    rows = torch.stack((flat.amin(dim=1), flat.amax(dim=1)), dim=1).to(store_dtype(precision))
    rows, _ = to_host(rows, done=False)
    host, event = to_host(depth.to(store_dtype(precision)))
    return rows, host, event
