"""An iterator run ahead in a background thread: decoding overlaps the model, and the next unit's decoder seeks
while the current unit computes."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator

_END = object()
CLOSE_WAIT_S = 5.0  # at most one item's wait: a seek to a keyframe, or one image read


class Prefetch:
    """`items` run in a background thread from now on, into a queue of `maxsize`; its exceptions re-raise here.

    `close()` stops the producer at its next item.
    """

    def __init__(self, items: Iterable, maxsize: int = 8):
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._produce, args=(iter(items),), name="vda-decode", daemon=True)
        self._thread.start()

    def _produce(self, items: Iterator) -> None:
        try:
            for item in items:
                while not self._stop.is_set():
                    try:
                        self._queue.put((None, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._put((None, _END))
        except BaseException as err:  # handed to the consumer, which re-raises it
            self._put((err, None))
        finally:  # a generator stopped early runs its cleanup now, in this thread (a FrameSource parks its decoder)
            close = getattr(items, "close", None)
            if close is not None:
                close()

    def _put(self, entry) -> None:
        """Hand on the end or an error, unless the consumer has gone (then the queue may stay full forever)."""
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Prefetch:
        return self

    def __next__(self):
        if self._finished:
            raise StopIteration
        err, item = self._queue.get()
        if err is not None:
            self.close()
            raise err
        if item is _END:
            self._finished = True
            raise StopIteration
        return item

    def close(self) -> None:
        """Stop the producer and wait for it to leave its current item, so that no decode outlives its unit (a native
        decoder still running at interpreter exit aborts the process)."""
        self._finished = True
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(CLOSE_WAIT_S)

    def __del__(self) -> None:
        self._stop.set()
