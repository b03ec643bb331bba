"""A worker's frames from one decoder per video, kept from unit to unit so a unit continues the last one's decode."""

from __future__ import annotations

import threading
from collections.abc import Iterable

import numpy as np

from vda.core.video_info import VideoInfo, spans
from vda.io.decode import open_decoder, read_frames
from vda.io.decoder import Decoder


class FrameSource:
    """The frames of a worker's units, from one decoder per video kept from unit to unit.

    A unit that begins where the previous unit of the same video ended (the next unit of a video, on one worker)
    continues that unit's decode instead of seeking back and decoding up to a GOP again: the frames it reads again,
    frame 0 and the last `keep` decoded (a window's keyframe and overlap), are kept from the previous unit, by
    reference (nothing writes to a decoded frame). The next unit's decode, started while the current unit computes,
    waits for the current one's to finish (its decoder is busy); both decoding at once would only share the same
    cores. So a thread must not hold a `read` of a video unfinished while it starts another of the same video.
    `threads`: decoder threads (None: VDA_THREADS).
    """

    PARKED = 2  # videos whose decoder stays open: the current one and one more (a batch alternating two videos)

    def __init__(self, threads: int | None = None, keep: int = 0):
        self.threads, self.keep = threads, keep
        self._free = threading.Condition()
        self._parked: dict[tuple, tuple[Decoder, dict[int, np.ndarray]]] = {}  # oldest first
        self._busy: set[tuple] = set()

    def read(self, info: VideoInfo, indices: Iterable[int], size: tuple[int, int] | None = None):
        """read_frames(info, indices, size), from this source's decoder of `info` when one is parked."""
        if info.kind == "images":
            yield from read_frames(info, indices, size)
            return
        key = (info.path, info.head_sha256, size)
        reader, kept = self._take(key, info, size)
        try:
            for a, b in spans(indices):
                yield from self._span(reader, kept, a, b)
        except GeneratorExit:  # stopped early (the unit ended): the decoder is still good where it stands
            raise
        except BaseException:  # a decoding error: that decoder is not reused
            reader.close()
            reader = None
            raise
        finally:
            self._park(key, reader, kept)

    def _span(self, reader: Decoder, kept: dict[int, np.ndarray], a: int, b: int):
        for i in range(a, b):
            if i in kept:
                yield i, kept[i]
                continue
            for j, frame in reader.span(i, b):
                kept[j] = frame
                for old in [k for k in kept if 0 < k <= j - self.keep]:
                    del kept[old]
                yield j, frame
            return

    def _take(self, key: tuple, info: VideoInfo, size) -> tuple[Decoder, dict[int, np.ndarray]]:
        with self._free:
            while key in self._busy:
                self._free.wait()
            self._busy.add(key)
            parked = self._parked.pop(key, None)
        return parked or (open_decoder(info, size, self.threads), {})

    def _park(self, key: tuple, reader: Decoder | None, kept: dict[int, np.ndarray]) -> None:
        with self._free:
            self._busy.discard(key)
            if reader is not None:
                self._parked[key] = (reader, kept)
                while len(self._parked) > self.PARKED:
                    old = next(iter(self._parked))
                    self._parked.pop(old)[0].close()
            self._free.notify_all()

    def close(self) -> None:
        with self._free:
            for reader, _ in self._parked.values():
                reader.close()
            self._parked.clear()
