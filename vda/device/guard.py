"""The fp16/bf16 fallback: a window (stream mode: a frame) whose depth is not finite is computed again in fp32.

`recompute_exact` is the one recompute, for windows and frames alike: true fp32, eager, and the features it makes
cast back down where that stays finite, so that they heal the cache and one fault costs one window. `PrecisionGuard`
counts faults in a row; after FP32_AFTER the worker computes in fp32 for the rest of its run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from vda.device.runtime import Network, store_dtype
from vda.errors import RunError

# Windows (stream mode: frames) in a row that need an fp32 recompute before a worker computes in fp32 for the rest of
# its run: one bad window is a fluke worth a recompute; three in a row is a card that overflows on everything (GTX 16xx
# in fp16), where computing twice costs more than fp32 once.
FP32_AFTER = 3


class NonFiniteDepth(RunError):
    """Depth that is NaN or infinite even in fp32: never written; the message names the window."""


@dataclass
class PrecisionGuard:
    """Counts the windows (stream mode: frames) in a row that needed an fp32 recompute, across every unit a worker
    computes; after FP32_AFTER of them the worker computes in fp32 for the rest of its run (`switched`)."""

    after: int = FP32_AFTER
    streak: int = 0
    switched: str = ""  # why it switched, one line naming --precision fp32; empty while it has not

    def record(self, recomputed: bool, precision: str, what: str) -> bool:
        """Count one window; True when the device must switch to fp32 now (once)."""
        self.streak = self.streak + 1 if recomputed else 0
        if self.switched or self.streak < self.after:
            return False
        self.switched = (
            f"depth was not finite in {precision} for {self.streak} {what} in a row; computing in fp32 from here on "
            "(this GPU overflows in reduced precision: run it with --precision fp32)"
        )
        return True


def as_stored(depth: torch.Tensor, precision: str, recomputed: bool = False) -> torch.Tensor:
    """A window's raw depth rounded as a worker stores it (store_dtype; a recomputed window is fp32), so that the
    single pass, which rounds the same way, equals N devices in every precision."""
    return depth.to(store_dtype("fp32" if recomputed else precision))


def _reduced(feats: list[torch.Tensor], dtype: torch.dtype) -> list[list[torch.Tensor]]:
    """Per frame, fp32 features cast to `dtype` where every value stays finite, else kept in fp32 (fp16 overflows
    past 65504): feats are per level [n, ...]; one sync per level, on the recompute path only."""
    out: list[list[torch.Tensor]] = [[] for _ in range(feats[0].shape[0])]
    for level in feats:
        cast = level.to(dtype)
        finite = torch.isfinite(cast.flatten(1)).all(1).tolist()
        for k, ok in enumerate(finite):
            out[k].append((cast[k] if ok else level[k]).clone())
    return out


def recompute_exact(
    net: Network, what: str, compute: Callable[[Network], tuple[torch.Tensor, list[torch.Tensor]]], dtype: torch.dtype
) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
    """`compute(net)` again in true fp32, eager: (depth, its features per frame, cast to `dtype` where finite).

    `compute` returns depth and features per level ([n, ...] each). NonFiniteDepth names `what` when even fp32 gives
    NaN or infinity: such depth is never handed on.
    """
    with net.autocast("fp32"):
        depth, feats = compute(net.exact())
    if not bool(torch.isfinite(depth).all()):
        raise NonFiniteDepth(
            f"{what} gives non-finite depth even in fp32; the checkpoint or the frames are broken "
            "(check the checkpoint file and the input)"
        )
    return depth, _reduced(feats, dtype)
