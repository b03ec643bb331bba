"""Alignment shared by the single pass and the merge: raw windows to final frames with the chain's scale and shift."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from vda.core import stitch
from vda.system import one_blas_thread


def upsample(depth: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[k, h, w] -> [k, H, W], bilinear with aligned corners as the authors do; at its own size, no resampling
    (what bilinear with aligned corners gives there anyway: the maps as they are, as --output-size net writes them)."""
    if tuple(depth.shape[-2:]) == tuple(size):
        return depth.float()
    return F.interpolate(depth.float()[:, None], size=size, mode="bilinear", align_corners=True)[:, 0]


CHAIN_OUTPUTS = [0, 1, stitch.KEYFRAME]  # the outputs of a window the alignment chain reads


def chain_maps(picked: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """A window's outputs CHAIN_OUTPUTS ([3, h, w], network resolution) at full resolution: [3, H, W]."""
    return upsample(picked, size).cpu().numpy()


def chain_step(
    chain: stitch.AlignmentChain, picked: torch.Tensor, size: tuple[int, int]
) -> tuple[np.float32, np.float32]:
    """Scale and shift of the next window from its outputs CHAIN_OUTPUTS ([3, h, w], network resolution), fitted at
    one BLAS thread, as the merge's pass 1 fits it: the same sums on any host."""
    first, second, key = chain_maps(picked, size)
    with one_blas_thread():
        return chain.step(first, second, key)


class WindowAligner:
    """Turns raw windows and their scale/shift into final full-resolution frames (the authors' stitching).

    Holds the last two windows only, at network resolution. `host=False` keeps the frames as tensors where the
    windows are (on the device), for a caller that goes on computing there. On the host, each frame is aligned and
    blended in place in its freshly upsampled array (the same bits as the reference's expressions, without their
    full-size temporaries).
    """

    def __init__(self, size: tuple[int, int], host: bool = True):
        self.size, self.host = size, host
        self._windows: dict[int, tuple[torch.Tensor, np.float32, np.float32, dict[int, int] | None]] = {}

    def add(
        self, w: int, depth: torch.Tensor, scale: np.float32, shift: np.float32, rows: list[int] | None = None
    ) -> None:
        """Window w's raw depth [k, h, w]: all 32 outputs, or only the outputs `rows` (in order), as the merge reads
        them (the 8 rows of w-1 that w's frames blend with, not the whole window)."""
        at = None if rows is None else {r: k for k, r in enumerate(rows)}
        self._windows[w] = (depth, scale, shift, at)
        self._windows.pop(w - 2, None)

    def aligned(self, w: int, i: int) -> np.ndarray:
        depth, scale, shift, at = self._windows[w]
        k = i if at is None else at[i]
        up = upsample(depth[k : k + 1], self.size)[0]
        if not self.host:
            return stitch.apply_scale_shift(up, scale, shift)
        if up.device.type == "cpu" and tuple(depth.shape[-2:]) == tuple(self.size):
            up = up.clone()  # not resampled: `up` may be the window's own memory, which stays as it is
        return stitch.apply_scale_shift(up.cpu().numpy(), scale, shift, inplace=True)

    def frames(self, w: int, n_frames: int) -> Iterator[tuple[int, np.ndarray]]:
        """(frame index, depth) for the frames window w makes final."""
        for f in stitch.window_outputs(w, n_frames):
            src = stitch.frame_source(f, n_frames)
            newer = self.aligned(src.w, src.i)
            if src.weight == 1.0:
                yield f, newer
            else:
                older = self.aligned(src.w - 1, src.i + stitch.STRIDE)
                yield f, stitch.blend(older, newer, src.weight, inplace=self.host)
