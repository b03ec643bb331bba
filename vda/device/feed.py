"""Frames pulled lazily from a source and handed out by index: only frames asked for and not yet taken are held."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from vda.errors import InputError


class FrameError(InputError, ValueError):
    """A frame that cannot be processed; the message names the frame and the fix."""


def check_frame(index: int, frame, size: tuple[int, int] | None) -> np.ndarray:
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        got = f"shape {getattr(frame, 'shape', None)} dtype {getattr(frame, 'dtype', type(frame).__name__)}"
        raise FrameError(f"frame {index}: expected an HxWx3 uint8 RGB array, got {got}; convert frames to RGB uint8")
    if size is not None and frame.shape[:2] != size:
        raise FrameError(
            f"frame {index} is {frame.shape[1]}x{frame.shape[0]} but frame 0 is {size[1]}x{size[0]}; "
            "all frames of a video must have one size (resize them first)"
        )
    return frame


class FrameFeed:
    """Lazily pulls (index, frame) pairs, in increasing index order, and hands out frames by index.

    Only frames asked for but not yet consumed are held. `total` is the frame count when the caller
    knows it (a planned unit); otherwise it is learnt when the source runs dry.
    """

    def __init__(self, pairs: Iterable[tuple[int, np.ndarray]], total: int | None = None):
        self._pairs = iter(pairs)
        self._held: dict[int, np.ndarray] = {}
        self._last = -1
        self.size: tuple[int, int] | None = None
        self.total = total
        self._exhausted = False

    def _pull_until(self, index: int) -> None:
        while self._last < index and not self._exhausted:
            try:
                i, frame = next(self._pairs)
            except StopIteration:
                self._exhausted = True
                if self.total is None:
                    self.total = self._last + 1
                elif self._last + 1 < self.total and index < self.total:
                    raise FrameError(
                        f"the video ended before frame {index} of {self.total}; it may be truncated"
                    ) from None
                return
            if i <= self._last:
                raise FrameError(f"frames out of order: {i} after {self._last}")
            self._held[i] = check_frame(i, frame, self.size)
            self.size = self.size or frame.shape[:2]
            self._last = i

    def frame_count_hint(self, upto: int) -> int:
        """The frame count if known, else a lower bound after making frames up to `upto` available."""
        self._pull_until(upto)
        return self.total if self.total is not None else self._last + 1

    def first(self) -> np.ndarray:
        self._pull_until(0)
        if 0 not in self._held:
            raise FrameError("no frames: the video (or iterable) is empty")
        return self._held[0]

    def take(self, index: int) -> np.ndarray:
        """The frame at `index` (consumed: asking again is an error)."""
        self._pull_until(index)
        if index not in self._held:
            raise FrameError(f"frame {index} is not available from the source")
        return self._held.pop(index)

    def indexed(self) -> Iterator[tuple[int, np.ndarray]]:
        """All frames in order (for stream mode)."""
        i = 0
        while True:
            self._pull_until(i)
            if i not in self._held:
                return
            yield i, self._held.pop(i)
            i += 1
