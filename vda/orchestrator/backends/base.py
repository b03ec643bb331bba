"""The backend contract: how the host starts a device worker, talks to it, stops it, and runs a merge.

The queue (vda.orchestrator.queue) and the CLI see only this; the local backend runs processes, the Docker backend runs
containers from one image, and a cluster backend implements the same four steps. A backend is opened for a batch,
so that it can prepare what its workers must see (Docker mounts every input once, for the whole run).

Worker output is read line by line (`LinePump`): every line goes to the worker's log, messages (vda.events) go to the
queue, and the worker's own `vda: error:` line becomes the reason the run reports for it.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from vda import events
from vda.io.rundir import RunDir
from vda.orchestrator.launch import WorkerOptions

ERROR_PREFIX = "vda: error: "
START_FAILED = 125  # a worker that could not start on its device (`docker run`'s own code for it)


class WorkerHandle(Protocol):
    """A started worker. `reason` is its last `vda: error:` line (or why it could not start), for the run's report."""

    reason: str | None

    def send(self, message: events.Message) -> None: ...

    def poll(self) -> int | None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class VideoRun:
    """One input of a batch, as a backend needs it: its run folder and the input on the host."""

    name: str
    folder: RunDir  # its run folder
    input: Path
    out: Path | None = None  # its output folder (a cluster backend checks that its nodes can write there)


@dataclass(frozen=True)
class MergeRequest:
    run: RunDir
    out: Path
    fmt: str = "png16"
    create_video: bool | str = False  # True or "depth": colourised depth; "side-by-side": beside the RGB frames
    overwrite: bool = False
    workers: int | None = None  # merge processes (default: the usable cores)
    output_size: str = "source"  # source, net or WxH (vda.merge.merge)
    png_scale: float | None = None  # metric png at a fixed scale (metres per stored step)
    input: Path | None = None  # the video on the host, for a side-by-side video

    def flags(self, input_path: str | None = None) -> list[str]:
        """The `vda merge` flags beyond RUN_DIR and -o (for a backend that runs the merge as a command)."""
        video = (
            []
            if not self.create_video
            else ["--create-video"] + ([self.create_video] * isinstance(self.create_video, str))
        )
        flags = ["--format", self.fmt, *video] + ["--overwrite"] * self.overwrite
        flags += ["--workers", str(self.workers)] if self.workers else []
        flags += ["--output-size", self.output_size] if self.output_size != "source" else []
        flags += ["--png-scale", repr(self.png_scale)] if self.png_scale is not None else []
        return flags + (["--input", input_path] if input_path and self.create_video == "side-by-side" else [])


class Backend(ABC):
    """Start a device worker, stop it, run a merge, close: what every backend implements."""

    name: str
    gpu_pool = "this host"  # where visible_gpus counts, as the CLI names it
    all_gpus_by_default = False  # no device flag: refused, or (a cluster) every GPU visible_gpus counts
    merges_here = True  # merges read the run folder on this host (so pass 1 may follow the workers here)
    merge_slots = 1  # merges that may run at once (a cluster backend runs them on several nodes)

    def __init__(
        self, devices: list[str], options: WorkerOptions, image: str | None = None, address: str | None = None
    ):
        """`image`: the Docker backend's image; `address`: the cluster a cluster backend joins (--ray-address).
        A backend that has no use for one ignores it."""
        self.devices, self.options, self.image, self.address = devices, options, image, address

    @staticmethod
    def visible_gpus(address: str | None = None) -> int:
        """GPUs this backend's workers can be given (on the cluster at `address`, for a cluster backend), which
        --gpus and --gpu-ids are checked against."""
        import torch

        return torch.cuda.device_count()

    # Whether open() needs every video's plan (Ray ships each plan to the nodes): the batch then plans every input
    # before the first unit, instead of starting on the first planned one.
    plans_first = False

    def open(self, root: RunDir, videos: list[VideoRun]) -> None:
        """Prepare for a batch whose batch-level files go to `root` (check what the workers need, before any work)."""
        self.root, self.videos = root, list(videos)

    @abstractmethod
    def worker_path(self, path: Path) -> str:
        """A host path (an input, a run folder) as the backend's workers see it."""

    @abstractmethod
    def start_worker(self, slot: int, device: str, log_path: Path, on_line: Callable[[str], None]) -> WorkerHandle:
        """Start the long-lived worker of `slot` on `device`; a worker that cannot start exits START_FAILED."""

    @abstractmethod
    def merge(self, request: MergeRequest) -> str | None:
        """Merge one video's stored pieces into its output folder; raises with one line if it fails. Returns where
        it ran, where a backend spans hosts (Ray: a node id, or "driver"), else None."""

    @abstractmethod
    def close(self) -> None:
        """Release everything the batch started (no orphans), whatever state it is in."""


def merge_in_process(request: MergeRequest) -> None:
    """The merge, run in this process: what the local backend does, and the Ray backend where no node can."""
    from vda.merge import merge

    merge(
        request.run.path,
        request.out,
        request.fmt,
        create_video=request.create_video,
        workers=request.workers,
        overwrite=request.overwrite,
        log=lambda text: None,
        output_size=request.output_size,
        png_scale=request.png_scale,
        input_path=request.input,
    )


class LinePump:
    """Reads a worker's output in a thread: log every line, hand each line on, keep its `vda: error:` line."""

    def __init__(self, lines: Iterable[str], log_path: Path, on_line: Callable[[str], None], handle: WorkerHandle):
        self.thread = threading.Thread(target=self._run, args=(lines, log_path, on_line, handle), daemon=True)
        self.thread.start()

    @staticmethod
    def _run(lines: Iterable[str], log_path: Path, on_line, handle: WorkerHandle) -> None:
        with open(log_path, "a", encoding="utf-8", errors="replace") as log:
            for raw in lines:
                log.write(raw if raw.endswith("\n") else raw + "\n")
                log.flush()
                line = raw.rstrip("\n")
                if line.startswith(ERROR_PREFIX):
                    handle.reason = line[len(ERROR_PREFIX) :]
                on_line(line)

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
