"""A batch's inputs: which files and folders are inputs, their names and folders, and their plans, made ahead.

The inputs are video files, folders of images (one input each) and folders of video files (one input per file).
A single input keeps the layout a single video always had (frames in OUT, its run folder in OUT/_run); several
inputs get OUT/<name>/ each, with their run folders in OUT/_run/<name>/. Names come from the file names; a clash is
resolved by a suffix, said aloud.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from vda.errors import InputError, VdaError
from vda.io.probe import IMAGE_EXTS
from vda.io.rundir import RunDir
from vda.orchestrator.backends.base import VideoRun
from vda.orchestrator.planning import check_precision, choose_model, create_plan
from vda.orchestrator.records import QueuedVideo
from vda.orchestrator.request import RUN_NAME, DepthRequest

# What a folder of videos may hold (anything FFmpeg reads would do; these are the names users give video files).
VIDEO_EXTS = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".mts", ".wmv", ".flv", ".y4m"}


@dataclass
class Refused:
    """An input that never reached the queue (unreadable, or its run folder holds another run)."""

    source: str
    error: str
    exception: Exception


def expand_inputs(paths: list[str]) -> list[Path]:
    """Files stay as they are (a missing or unreadable one fails alone, later); a folder of images is one input; a
    folder of video files is one input per file; any other folder is refused in one line."""
    out: list[Path] = []
    for text in paths:
        path = Path(text)
        if not path.is_dir():
            out.append(path)
            continue
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        images = [p for p in files if p.suffix.lower() in IMAGE_EXTS]
        videos = [p for p in files if p.suffix.lower() in VIDEO_EXTS]
        if images and not videos:
            out.append(path)
        elif videos and not images:
            out.extend(videos)
        else:
            what = "both images and video files" if images else "no images and no video files"
            raise InputError(
                f"{path} holds {what}; give a folder of images (one input) or a folder of video files (one input each)"
            )
    if not out:
        raise InputError("no input given; name video files, folders of images or folders of videos")
    return out


def name_inputs(sources: list[Path], say: Callable[[str], None]) -> list[str]:
    """One folder name per input: the file's stem, or the folder's name; a clash gets a suffix, and is said."""
    names: list[str] = []
    taken = {RUN_NAME}
    for src in sources:
        base = (src.stem if src.suffix.lower() in VIDEO_EXTS else src.name) or "input"
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        if name != base:
            say(f"vda: {src} would be named {base}, which is taken; its output goes to {name}/")
        taken.add(name)
        names.append(name)
    return names


def layout(request: DepthRequest, sources: list[Path], names: list[str]) -> list[tuple[str, Path, Path, RunDir]]:
    """(name, input, output folder, run folder) per input: OUT and OUT/_run for one, OUT/<name> and
    OUT/_run/<name> for several."""
    root = request.root
    if len(sources) == 1:
        return [(names[0], sources[0], request.out, root)]
    return [(n, s, request.out / n, RunDir(root.path / n)) for n, s in zip(names, sources)]


# Inputs planned at once. Planning is mostly demuxing (vda.io.probe.packet_count: one core, and the disk), so a few at
# a time keep a batch's planning ahead of the devices (bench_scale.py: 10 minutes of 720p plan in about a second)
# without taking the cores the workers decode on.
PLAN_WORKERS = 2


class Planner:
    """Plans a batch's inputs in a background pool, from the moment it is made, and hands them out in input order as
    they are planned, so that the queue starts on the first while the later ones are still being probed.

    An input that cannot be planned is refused alone (said at once, listed at the end); when it is the only input,
    its error is raised instead, as a single video's always was.
    """

    def __init__(self, request: DepthRequest, say):
        sources = expand_inputs(request.inputs)
        self.entries = layout(request, sources, name_inputs(sources, say))
        self.request, self.say, self.refused = request, say, []
        self.started = time.time()  # the run's start, for its record (planning is part of its time)
        precision = check_precision(request.precision, request.devices)
        model = choose_model(request.checkpoint, request.encoder, request.metric)
        # What a backend needs before the plans: each input's run folder and file (Docker mounts every input).
        self.runs = [VideoRun(name, run, src.resolve(), folder) for name, src, folder, run in self.entries]
        kwargs = dict(input_size=request.input_size, max_res=request.max_res, precision=precision)
        kwargs.update(mode=request.mode, unit_size=request.unit_size, overwrite=request.overwrite)
        self._pool = ThreadPoolExecutor(min(PLAN_WORKERS, len(self.entries)), thread_name_prefix="vda-plan")
        self._futures = [
            self._pool.submit(create_plan, src, run.path, model, **kwargs) for _, src, _, run in self.entries
        ]
        self._next = 0

    @property
    def finished(self) -> bool:
        """Every input handed out or refused."""
        return self._next == len(self.entries)

    @property
    def planned(self) -> int:
        return self._next

    def take(self, wait: bool = False) -> list[tuple[QueuedVideo, Path]]:
        """The inputs planned since the last call, in input order, with their output folders (`wait`: at least the
        next one, unless every input is taken)."""
        out = []
        while not self.finished and (self._futures[self._next].done() or (wait and not out)):
            name, src, folder, run = self.entries[self._next]
            future = self._futures[self._next]
            self._next += 1
            try:
                plan, _ = future.result()
            except (VdaError, OSError) as err:  # this input only (an OSError: its run folder could not be written)
                if len(self.entries) == 1:
                    raise
                self.refused.append(Refused(str(src), str(err).strip(), err))
                self.say(f"vda: {src}: {str(err).strip()}; the other inputs go on")
                continue
            out.append((QueuedVideo(VideoRun(name, run, Path(plan.input.path), folder), plan), folder))
        return out

    def close(self) -> None:
        """Stop planning what has not started (a run that ends early plans nothing more)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
