"""The piece file format (an .npy array, then its `.done` marker) and the store thread that writes them."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vda.files import atomic_file, write_json


def row_range(array: np.ndarray) -> np.ndarray:
    """Per-row [min, max] of a piece ([k, h, w]) as [k, 2]: what a store without the device's extremes records."""
    flat = array.reshape(len(array), -1)
    return np.stack((flat.min(axis=1), flat.max(axis=1)), axis=1)


def write_piece(path: Path, array: np.ndarray, piece: int, seconds: float, rows: np.ndarray | None = None) -> None:
    """Store one piece in its run folder: the array under a temporary name, fsynced and renamed, then its `.done`
    marker, which records the shape, the dtype and each row's raw [min, max] (`rows`, computed here when not given).

    The array goes from its buffer to the file (numpy writes a contiguous array with one write, no copy). The fsync
    before the marker means a marker never vouches for data a crash lost; a piece that is damaged all the same
    (its size or header not the marker's) counts as not stored and is recomputed (RunDir.is_stored).
    The one writer of pieces: a worker's default store, and the Ray driver's for pieces that came back through the
    object store (vda.orchestrator.backends.ray), so both leave the same files.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, durable=True) as fh:
        np.lib.format.write_array(fh, np.ascontiguousarray(array), allow_pickle=False)
    rows = row_range(array) if rows is None else rows
    write_json(
        path.with_suffix(".done"),
        {
            "piece": piece,
            "seconds": seconds,
            "shape": list(array.shape),
            "dtype": str(array.dtype),
            "rows": [[float(lo), float(hi)] for lo, hi in np.asarray(rows)],
        },
    )


# Where a worker's pieces go: (path in the run folder, array, piece index, seconds since the unit began, per-row raw
# [min, max]).
PieceStore = Callable[[Path, np.ndarray, int, float, np.ndarray | None], None]


class UnitStore:
    """Stores units in a background thread, in submission order, so the device never waits on the disk.

    At most `depth` units wait in host memory. An error in the thread (a full disk) re-raises in the caller
    at its next submit or at exit. Units submitted before an error or interrupt are still written on exit:
    they are finished work a rerun would otherwise redo.
    """

    def __init__(self, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None  # stays set: no unit after a failed one is written
        self._reported = False
        self._thread = threading.Thread(target=self._drain, name="vda-store", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while (job := self._queue.get()) is not None:
            if self._error is None:
                try:
                    job()
                except BaseException as err:  # handed to the caller, which re-raises it
                    self._error = err

    def raise_pending(self) -> None:
        if self._error is not None and not self._reported:
            self._reported = True
            raise self._error

    def submit(self, job) -> None:
        self.raise_pending()
        self._queue.put(job)

    def __enter__(self) -> UnitStore:
        return self

    def __exit__(self, *exc) -> None:
        self._queue.put(None)
        self._thread.join()
        if exc[0] is None:
            self.raise_pending()
