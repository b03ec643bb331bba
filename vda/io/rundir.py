"""RUN_DIR: one type owns every path, marker and cleanup of a run folder.

A video's run folder holds its plan, the raw depth of every stored piece (a window in window mode, a SEGMENT-frame
segment in stream mode), the merge's first pass and the host's notes. A batch's run folder holds one such folder per
video, plus what belongs to the batch: the per-device worker logs and processing_results.json. With a single input
both are the same folder, which is the layout a single video has always had.

    RUN_DIR/plan.json                 the plan (vda.core.plan)
    RUN_DIR/probe.json                the input's probe, keyed by its identity (vda.orchestrator.planning)
    RUN_DIR/windows/win_000012.npy    window 12, raw network-resolution depth; `.done` marker beside it
    RUN_DIR/segments/seg_000416.npy   stream mode: frames 416..447
    RUN_DIR/first_pass.json           the merge's pass 1, kept while it follows the workers
    RUN_DIR/rendered_ahead.json       units whose frames were written while the workers computed the later ones
    RUN_DIR/logs/worker_<slot>.log    one long-lived worker's output (batch level)
    RUN_DIR/logs/video.log            what went wrong with this video's units, with the worker log to read
    RUN_DIR/processing_results.json   per device, per video and per unit (batch level)
    RUN_DIR/.lock                     flock'ed by the `vda depth` running on the folder; it names that process

A piece is finished when its `.npy` and its `.done` marker both exist; the worker writes the array under a temporary
name, renames it, then writes the marker, so a killed worker never leaves a half-written piece that counts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vda.core.plan import Plan, Unit
from vda.errors import RunError

WINDOWS_DIR, SEGMENTS_DIR, LOGS_DIR, FAULTS_DIR = "windows", "segments", "logs", "faults"
FIRST_PASS_NAME = "first_pass.json"
RENDERED_AHEAD_NAME = "rendered_ahead.json"
PROBE_NAME = "probe.json"
LOCK_NAME = ".lock"


class RunFolderBusy(RunError):
    """Another process holds the run folder: its line names that process."""


RESULTS_NAME = "processing_results.json"


_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def piece_marker(path: Path) -> dict | None:
    """The marker of the piece at `path` when the piece is complete (see `RunDir.is_stored`), else None."""
    try:
        marker = json.loads(path.with_suffix(".done").read_text())
        with open(path, "rb") as fh:
            header = _NPY_HEADERS.get(np.lib.format.read_magic(fh))
            if header is None:  # a format numpy's np.save does not write for these arrays
                return None
            shape, _, dtype = header(fh)
            size = os.fstat(fh.fileno()).st_size - fh.tell()
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("shape") != list(shape) or marker.get("dtype") != str(dtype):
        return None
    return marker if size == int(np.prod(shape)) * dtype.itemsize else None


class RunDir:
    """The paths of one run folder (see the module docstring); no state besides the folder itself."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def logs(self) -> Path:
        return self.path / LOGS_DIR

    @property
    def results(self) -> Path:
        return self.path / RESULTS_NAME

    @property
    def probe(self) -> Path:
        return self.path / PROBE_NAME

    @property
    def first_pass(self) -> Path:
        return self.path / FIRST_PASS_NAME

    @property
    def rendered_ahead(self) -> Path:
        return self.path / RENDERED_AHEAD_NAME

    def worker_log(self, slot: int) -> Path:
        return self.logs / f"worker_{slot}.log"

    @property
    def video_log(self) -> Path:
        return self.logs / "video.log"

    @property
    def host_log(self) -> Path:
        """The host's diagnostics (vda.logs): every command run on this folder appends to it."""
        return self.logs / "vda.log"

    @contextlib.contextmanager
    def locked(self, what: str) -> Iterator[None]:
        """Hold the folder for one `vda depth` (an exclusive flock, released when this process ends, even by kill -9):
        a second one is refused in one line naming the holder, before it reads or removes anything. The lock file is
        not inherited by the workers, and stays behind (removing it would race the next holder)."""
        self.path.mkdir(parents=True, exist_ok=True)
        fh = open(self.path / LOCK_NAME, "a+", encoding="utf-8")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise RunFolderBusy(
                f"{self.path} is in use by {holder}; wait for it to finish, stop it, or use another output folder"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} ({what})\n")
        fh.flush()
        try:
            yield
        finally:
            fh.close()

    def fault_counter(self, name: str) -> Path:
        return self.path / FAULTS_DIR / name

    def piece(self, mode: str, index: int) -> Path:
        """Where a piece is stored. Both kinds are keyed by their index alone: units depend on the video and the
        settings only, so a rerun on any devices finds every piece where the first run put it."""
        if mode == "window":
            return self.path / WINDOWS_DIR / f"win_{index:06d}.npy"
        return self.path / SEGMENTS_DIR / f"seg_{index:06d}.npy"

    def is_stored(self, mode: str, index: int) -> bool:
        """Whether a piece is finished: its marker, and an array whose header and size are what the marker says.

        A piece damaged after its marker was written (a crash that lost written data, a truncated copy of a run
        folder) then counts as missing and is recomputed, instead of failing the merge as a bug.
        """
        return piece_marker(self.piece(mode, index)) is not None

    def marker(self, mode: str, index: int) -> dict | None:
        """A stored piece's `.done` marker (vda.device.worker.write_piece), or None when it is not stored."""
        return piece_marker(self.piece(mode, index))

    def unfinished_pieces(self, plan: Plan, unit: Unit) -> list[int]:
        return [p for p in plan.pieces(unit) if not self.is_stored(plan.settings.mode, p)]

    def unfinished_units(self, plan: Plan) -> list[Unit]:
        return [u for u in plan.units if self.unfinished_pieces(plan, u)]

    def missing_pieces(self, plan: Plan) -> list[int]:
        return [p for p in plan.all_pieces() if not self.is_stored(plan.settings.mode, p)]

    def discard_results(self) -> None:
        """Delete what the workers and pass 1 stored (not the plan or the logs): the run starts over, or is done."""
        shutil.rmtree(self.path / WINDOWS_DIR, ignore_errors=True)
        shutil.rmtree(self.path / SEGMENTS_DIR, ignore_errors=True)
        shutil.rmtree(self.path / FAULTS_DIR, ignore_errors=True)
        self.first_pass.unlink(missing_ok=True)
        self.rendered_ahead.unlink(missing_ok=True)
