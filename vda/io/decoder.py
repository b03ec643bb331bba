"""The decoder seam: what hands a worker a video's frames, and the one place that picks an implementation.

A `Decoder` yields spans of frames in increasing order, upright, RGB uint8 at the asked size. `decode_pyav` (PyAV on
the host's cores) and `decode_images` (a folder of images) implement it; a GPU decoder handing out frames already on
the device (NVDEC) is one more module registered in `open_decoder`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

import numpy as np


class Decoder(ABC):
    """Spans of one input's frames, in increasing order: (index, HxWx3 uint8 RGB), resized to the asked size."""

    next_index: int = 0  # the frame the running decode yields next

    @abstractmethod
    def span(self, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        """Frames start..stop-1; seeks when that skips frames, never backwards without need."""

    @abstractmethod
    def close(self) -> None:
        """Release the file and any decoder state."""
