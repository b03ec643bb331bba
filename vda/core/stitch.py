"""Window schedule, scale/shift alignment and blending of the authors' long-video inference.

Pure functions over integers and arrays; no IO and no model. The single-pass generator in
`vda.device` and the multi-device merge in `vda.merge` both call these, which is why the two
agree: there is only one definition of which frames a window reads and writes, and how they blend.

The schedule (32-frame windows, stride 22):
- window 0 reads frames 0..31;
- window w >= 1 reads frame 0, frame (w-1)*22+12 (both keyframes) and frames w*22+2 .. w*22+31;
- indices past the end repeat the last frame;
- window w >= 1 is aligned to the previous one by a least-squares scale/shift fitted on its first two
  outputs (frame 0, and the keyframe) against frame 0 of window 0 and the aligned keyframe of w-1;
- its outputs 2..9 overlap outputs 24..31 of window w-1 and are blended linearly over those 8 frames.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from vda.errors import InputError

WINDOW = 32
OVERLAP = 10
BLEND = 8
STRIDE = WINDOW - OVERLAP  # 22 new frames per window
KEYFRAME = 12  # index in window w-1 whose frame becomes input 1 of window w
ALIGN = OVERLAP - BLEND  # 2 outputs per window are used only to fit the alignment
assert (WINDOW, OVERLAP, BLEND, STRIDE, ALIGN) == (32, 10, 8, 22, 2), "the published models were trained so"


def num_windows(n_frames: int) -> int:
    if n_frames < 1:
        raise InputError("a video needs at least one frame; check that the input decodes (vda doctor --video)")
    return math.ceil(n_frames / STRIDE)


def window_inputs(w: int, n_frames: int) -> list[int]:
    """The 32 source frame indices window w reads, in input order."""
    last = n_frames - 1
    if w == 0:
        return [min(i, last) for i in range(WINDOW)]
    keyframes = [0, min((w - 1) * STRIDE + KEYFRAME, last)]
    return keyframes + [min(w * STRIDE + i, last) for i in range(ALIGN, WINDOW)]


def window_outputs(w: int, n_frames: int) -> range:
    """Output frames that become final once windows w-1 and w are known (each frame has one owner)."""
    start = 0 if w == 0 else w * STRIDE + ALIGN
    last_window = w == num_windows(n_frames) - 1
    stop = w * STRIDE + (WINDOW if last_window else STRIDE + ALIGN)
    return range(start, min(stop, n_frames))


@dataclass(frozen=True)
class Source:
    """How output frame f is made: window `w`, output index `i`, blended with window w-1 if weight < 1."""

    w: int
    i: int
    weight: float = 1.0  # weight of (w, i); the rest comes from (w-1, i + STRIDE)


def blend_weights(n: int = BLEND) -> list[float]:
    """Weights of the newer window across the overlap: 0, 1/7, ..., 1 (python floats, as the reference)."""
    step = 1.0 / (n - 1)
    return [0.0] + [i * step for i in range(1, n - 1)] + [1.0]


def frame_source(f: int, n_frames: int) -> Source:
    if not 0 <= f < n_frames:
        raise IndexError(f"frame {f} outside 0..{n_frames - 1}")
    if f < STRIDE + ALIGN:
        return Source(0, f)
    w, r = divmod(f - ALIGN, STRIDE)
    if w >= num_windows(n_frames):  # tail of the last window, nothing newer to blend with
        return Source(w - 1, r + STRIDE + ALIGN)
    return Source(w, r + ALIGN, blend_weights()[r] if r < BLEND else 1.0)


def rows_of(frames: Iterable[int], n_frames: int) -> dict[int, set[int]]:
    """Window -> its outputs that the given final frames read: each frame's own row, and the row of the previous
    window it blends with. The rest of a window only feeds the alignment, or is padding."""
    rows: dict[int, set[int]] = {}
    for f in frames:
        src = frame_source(f, n_frames)
        rows.setdefault(src.w, set()).add(src.i)
        if src.weight < 1.0:
            rows.setdefault(src.w - 1, set()).add(src.i + STRIDE)
    return rows


def fit_scale_shift(pred, target, scratch: list[np.ndarray] | None = None) -> tuple[np.float32, np.float32]:
    """Least-squares s, t minimising |s * pred + t - target|^2 over all pixels.

    Sums are accumulated in float64 (the reference uses float32 sums; the results agree to float32
    precision). A degenerate system keeps the identity, as the reference does. `pred` and `target` are arrays, or
    lists of maps taken as one (stacked); `scratch` is a list the caller keeps from call to call, where the float64
    copies are made: a full-resolution pair is 15 MB each, which a fresh array faults in anew every window.
    """
    p, t = (_as_float64(x, scratch, k) for k, x in enumerate((pred, target)))
    a00, a01, a11 = p @ p, p.sum(), float(p.size)
    b0, b1 = p @ t, t.sum()
    det = a00 * a11 - a01 * a01
    if det == 0:
        return np.float32(1.0), np.float32(0.0)
    return np.float32((a11 * b0 - a01 * b1) / det), np.float32((-a01 * b0 + a00 * b1) / det)


def _as_float64(maps, scratch: list[np.ndarray] | None, k: int) -> np.ndarray:
    """`maps` (an array, or a list of maps taken as stacked) as one flat float64 vector: the same values in the same
    order as np.stack(maps).astype(np.float64).ravel(), in scratch[k] when given (grown to fit, kept there)."""
    parts = [maps] if isinstance(maps, np.ndarray) else list(maps)
    size = sum(m.size for m in parts)
    if scratch is None:
        out = np.empty(size)
    else:
        while len(scratch) <= k:
            scratch.append(np.empty(0))
        if scratch[k].size != size:
            scratch[k] = np.empty(size)
        out = scratch[k]
    at = 0
    for m in parts:
        out[at : at + m.size] = m.ravel()
        at += m.size
    return out


def apply_scale_shift(depth: np.ndarray, scale: np.float32, shift: np.float32, inplace: bool = False) -> np.ndarray:
    """depth * scale + shift in float32, as the reference, negatives set to 0. `inplace` writes into `depth` (a numpy
    array the caller owns): the same bits, without two full-size temporaries per frame."""
    if inplace:
        out = np.multiply(depth, scale, out=depth)
        np.add(out, shift, out=out)
    else:
        out = depth * scale + shift
    out[out < 0] = 0
    return out


def blend(older: np.ndarray, newer: np.ndarray, weight: float, inplace: bool = False) -> np.ndarray:
    """older * (1 - weight) + newer * weight; `inplace` overwrites both numpy arrays (the result is `older`), with the
    same bits."""
    if not inplace:
        return older * (1 - weight) + newer * weight
    np.multiply(older, 1 - weight, out=older)
    np.multiply(newer, weight, out=newer)
    return np.add(older, newer, out=older)


@dataclass
class AlignmentChain:
    """Replays the sequential part of the schedule: one (scale, shift) per window.

    It keeps two full-resolution maps whatever the video length: window 0's first output, and the
    aligned keyframe of the last window. `metric` models are already in metres: identity alignment.
    """

    metric: bool = False
    _ref0: np.ndarray | None = None
    _ref_key: np.ndarray | None = None
    windows_seen: int = 0
    _scratch: list[np.ndarray] = field(default_factory=list, repr=False, compare=False)  # fit_scale_shift's copies

    def step(self, first: np.ndarray, second: np.ndarray, keyframe: np.ndarray) -> tuple[np.float32, np.float32]:
        """Outputs 0, 1 and KEYFRAME of the next window (full resolution, raw) -> its scale and shift."""
        if self.windows_seen == 0:
            scale, shift = np.float32(1.0), np.float32(0.0)
            self._ref0 = first
        elif self.metric:
            scale, shift = np.float32(1.0), np.float32(0.0)
        else:
            scale, shift = fit_scale_shift([first, second], [self._ref0, self._ref_key], self._scratch)
        self._ref_key = apply_scale_shift(keyframe, scale, shift)
        self.windows_seen += 1
        return scale, shift

    def restore(self, first0: np.ndarray, keyframe: np.ndarray, scale, shift, windows_seen: int) -> None:
        """Continue a chain whose (scale, shift) up to window `windows_seen - 1` are known, without replaying it.

        Its whole state is window 0's first output and the last window's keyframe aligned with its scale
        and shift, so a resumed chain steps exactly as the uninterrupted one.
        """
        self._ref0, self._ref_key = first0, apply_scale_shift(keyframe, np.float32(scale), np.float32(shift))
        self.windows_seen = windows_seen
