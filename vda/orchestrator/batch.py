"""`vda depth`: many inputs, one queue, a merge per video as soon as its units are stored.

The inputs are video files, folders of images (one input each) and folders of video files (one input per file).
A single input keeps the layout a single video always had (frames in OUT, its run folder in OUT/_run); several
inputs get OUT/<name>/ each, with their run folders in OUT/_run/<name>/, and the batch's logs and
processing_results.json in OUT/_run. Names come from the file names; a clash is resolved by a suffix, said aloud.

Nothing is lost in a batch: an input that cannot be read, or whose units fail, is reported at the end with its log,
after every other input has been computed and merged; the run then exits non-zero.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vda import logs
from vda.errors import EXIT_ERROR, InputError, VdaError
from vda.io.rundir import RunDir
from vda.io.video import IMAGE_EXTS
from vda.orchestrator.backends.base import Backend, MergeRequest, VideoRun
from vda.orchestrator.launch import WorkerOptions, compile_shape_warning
from vda.orchestrator.planning import check_precision, choose_model, create_plan
from vda.orchestrator.progress import BatchProgress
from vda.orchestrator.queue import QueuedVideo, WorkQueue
from vda.pipeline.merge.first_pass import Follower

# What a folder of videos may hold (anything FFmpeg reads would do; these are the names users give video files).
VIDEO_EXTS = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".mts", ".wmv", ".flv", ".y4m"}
RUN_NAME = "_run"  # OUT/_run: the default run folder (and so no input may be named so)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DepthRequest:
    """What `vda depth` was asked, read once from its flags."""

    inputs: list[str]
    out: Path
    devices: list[str]
    run_dir: Path | None = None
    checkpoint: str | None = None
    encoder: str | None = None
    metric: bool = False
    input_size: int = 518
    max_res: int = 1280
    precision: str | None = None
    mode: str = "window"
    unit_size: int | None = None
    fmt: str = "png16"
    create_video: bool = False
    retries: int = 2
    overwrite: bool = False
    merge_workers: int | None = None
    space_check: bool = True
    clean: bool = False
    options: WorkerOptions = field(default_factory=WorkerOptions)

    @property
    def root(self) -> RunDir:
        return RunDir(self.run_dir or self.out / RUN_NAME)


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


def plan_videos(request: DepthRequest, say) -> tuple[list[QueuedVideo], dict[str, Path], list[Refused]]:
    """Plan every input; an input that cannot be planned is refused alone (raised, when it is the only one)."""
    sources = expand_inputs(request.inputs)
    names = name_inputs(sources, say)
    precision = check_precision(request.precision, request.devices)
    model = choose_model(request.checkpoint, request.encoder, request.metric)
    videos, outs, refused = [], {}, []
    for name, src, out, run in layout(request, sources, names):
        try:
            plan, resumed = create_plan(
                src,
                run.path,
                model,
                input_size=request.input_size,
                max_res=request.max_res,
                precision=precision,
                mode=request.mode,
                unit_size=request.unit_size,
                overwrite=request.overwrite,
            )
        except (VdaError, OSError) as err:  # this input only (an OSError: its run folder could not be written)
            if len(sources) == 1:
                raise
            refused.append(Refused(str(src), str(err).strip(), err))
            say(f"vda: {src}: {str(err).strip()}; the other inputs go on")
            continue
        videos.append(QueuedVideo(VideoRun(name, run, Path(plan.input.path), out), plan))
        outs[name] = out
    return videos, outs, refused


class MergeLine:
    """Merges videos as the queue reports them computed (on spare CPU while the devices compute the others), one
    after the other in a thread, or `backend.merge_slots` at a time where the backend runs merges on several hosts.
    A merge that fails fails its video only."""

    def __init__(self, backend: Backend, request: DepthRequest, outs: dict[str, Path], follower: Follower, progress):
        self.backend, self.request, self.outs, self.follower, self.progress = backend, request, outs, follower, progress
        self.errors: dict[str, Exception] = {}
        self._cancelled = False
        self._queue: queue.Queue = queue.Queue()
        self._threads = [
            threading.Thread(target=self._loop, name=f"vda-merge-{k}", daemon=True)
            for k in range(max(1, backend.merge_slots))
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, video: QueuedVideo) -> None:
        self._queue.put(video)

    def finish(self) -> None:
        """Wait for every merge submitted so far (after `cancel`, only for those running)."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()

    def cancel(self) -> None:
        self._cancelled = True

    def _loop(self) -> None:
        while (video := self._queue.get()) is not None and not self._cancelled:
            self.follower.release(video.run.run.path)
            started, out, r = time.perf_counter(), self.outs[video.name], self.request
            request = MergeRequest(video.run.run, out, r.fmt, r.create_video, r.overwrite, r.merge_workers)
            try:
                video.merge_node = self.backend.merge(request)
            except Exception as err:  # noqa: BLE001 - it fails this video only; the batch reports it at the end
                video.status, video.error, video.log = "failed", f"the merge failed: {err}", str(video.run.run.logs)
                self.errors[video.name] = err
                self.progress.video_failed(0)
                continue
            video.status = "merged"
            if r.clean:  # only after a successful merge: the pieces are what a re-merge or a resume would need
                video.run.run.discard_results()
            seconds = time.perf_counter() - started
            self.progress.video_finished(
                f"vda: {video.name}: merged {video.plan.frame_count} frames into {out} ({r.fmt}) in {seconds:.1f} s"
            )


def run_depth(request: DepthRequest, backend: Backend, stream=sys.stderr) -> int:
    """Plan, compute every unit on the devices, merge each video; 0 when every input got its output."""
    with logs.run_log(request.root.host_log):
        return _run_batch(request, backend, stream)


def _run_batch(request: DepthRequest, backend: Backend, stream) -> int:
    say = lambda line: print(line, file=stream, flush=True)  # noqa: E731
    videos, outs, refused = plan_videos(request, say)
    root = request.root
    log.info("vda depth: %d input(s) on %s (%s backend)", len(videos), ", ".join(request.devices), backend.name)
    need = ""
    if request.space_check and videos:
        from vda.orchestrator.space import check_space, human_size

        space = check_space([(v.plan, v.run.run, outs[v.name]) for v in videos], request.fmt, request.devices)
        need = f", needs about {human_size(space.run_bytes + space.out_bytes)} of disk"
    frames, units = sum(v.plan.frame_count for v in videos), sum(len(v.plan.units) for v in videos)
    what = f"{len(videos)} videos, " if len(videos) != 1 else ""
    say(
        f"vda: {what}{frames} frames in {units} units on {', '.join(request.devices)} ({backend.name}); "
        f"run folder {root.path}{need}"
    )
    if backend.options.compile:
        from vda.pipeline.compat import dynamo_recompile_limit

        shapes = {(v.plan.settings.net_height, v.plan.settings.net_width) for v in videos}
        warning = compile_shape_warning(shapes, dynamo_recompile_limit())
        if warning:
            say(warning)
    progress = BatchProgress([v.plan for v in videos], stream=stream)
    work = None
    try:
        if videos:  # every input refused: nothing for the backend to prepare (nor to fail at)
            backend.open(root, [v.run for v in videos])
        followed = [v.run.run.path for v in videos] if backend.merges_here else []  # else pass 1 is in the merge
        with Follower(followed) as follower:
            merges = MergeLine(backend, request, outs, follower, progress)
            work = WorkQueue(
                videos,
                backend,
                request.devices,
                root,
                retries=request.retries,
                progress=progress,
                on_computed=merges.submit,
                stream=stream,
            )
            work.refused = [{"input": r.source, "status": "refused", "error": r.error} for r in refused]
            try:
                work.run()
            except KeyboardInterrupt:  # stop now: no merge waits for another, and a running merge container goes
                merges.cancel()
                backend.close()
                raise
            finally:
                merges.finish()
    finally:
        backend.close()
        if work is not None:
            work.save()
    return _report(videos, refused, merges.errors, say)


def _report(videos: list[QueuedVideo], refused: list[Refused], merge_errors: dict, say) -> int:
    """One line per input without an output, with its log; the exit code."""
    failed = [v for v in videos if v.status != "merged"]
    if len(videos) + len(refused) == 1 and failed and failed[0].name in merge_errors:
        raise merge_errors[failed[0].name]  # a single input: its own error, as `vda merge` would give it
    for r in refused:
        say(f"vda: error: {r.source}: {r.error}")
    for v in failed:
        say(f"vda: error: {v.run.input}: {v.error or 'not computed'}; log: {v.log or v.run.run.video_log}")
    if refused or failed:
        total = len(videos) + len(refused)
        say(f"vda: {total - len(refused) - len(failed)} of {total} input(s) done; the others are listed above")
        return EXIT_ERROR
    return 0
