"""Frames of a probed input: `open_decoder` picks the `Decoder` for it, `read_frames` reads any set of indices."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from vda.core.video_info import VideoInfo, spans
from vda.io.decode_images import ImageDecoder
from vda.io.decode_pyav import PyAVDecoder
from vda.io.decoder import Decoder


def open_decoder(info: VideoInfo, size: tuple[int, int] | None = None, threads: int | None = None) -> Decoder:
    """The decoder of `info` at `size` (w, h; None: as stored): an image folder's, else PyAV's."""
    if info.kind == "images":
        return ImageDecoder(info, size)
    return PyAVDecoder(info, size, threads)


def read_frames(
    info: VideoInfo, indices: Iterable[int], size: tuple[int, int] | None = None, threads: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """(index, RGB uint8 frame) for the given indices, in increasing order, resized to `size` (w, h) if given."""
    decoder = open_decoder(info, size, threads)
    try:
        for a, b in spans(indices):
            yield from decoder.span(a, b)
    finally:
        decoder.close()
