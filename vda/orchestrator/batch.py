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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from vda import logs
from vda.core.plan import PlanError
from vda.errors import EXIT_ERROR, InputError, VdaError
from vda.io.probe import IMAGE_EXTS
from vda.io.rundir import RunDir
from vda.merge.early import EarlyMerge
from vda.merge.output import Output
from vda.orchestrator.backends.base import Backend, MergeRequest, VideoRun
from vda.orchestrator.launch import WorkerOptions, compile_shape_warning
from vda.orchestrator.planning import check_precision, choose_model, create_plan
from vda.orchestrator.progress import BatchProgress
from vda.orchestrator.queue import QueuedVideo, WorkQueue
from vda.orchestrator.space import SpaceLedger, human_size
from vda.system import host_threads

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
    create_video: bool | str = False  # True or "depth", or "side-by-side" (vda.merge.merge)
    retries: int = 2
    overwrite: bool = False
    merge_workers: int | None = None
    space_check: bool = True
    clean: bool = False
    options: WorkerOptions = field(default_factory=WorkerOptions)
    output_size: str = "source"  # source, net or WxH: the merge's, not the plan's (the pieces do not depend on it)
    png_scale: float | None = None  # metric png at a fixed scale

    @property
    def root(self) -> RunDir:
        return RunDir(self.run_dir or self.out / RUN_NAME)

    @property
    def merge(self) -> dict:
        """The merge settings beyond the format, as MergeRequest takes them."""
        return {"output_size": self.output_size, "png_scale": self.png_scale}

    def output(self, out: Path) -> Output:
        """What the merge of a video writes into `out`: what its frames rendered ahead must match."""
        r = self
        return Output(out, r.fmt, r.output_size, r.png_scale, r.create_video, r.overwrite, r.merge_workers)


@dataclass(frozen=True)
class VideoResult:
    """What became of one input: status "merged" (its output is complete in `out`), "failed" (planned, but a unit or
    its merge failed: `error`, and `log`) or "refused" (never planned: unreadable, or another run in its folder)."""

    name: str
    input: str
    status: str
    out: Path | None
    frames: int
    error: str | None = None
    log: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "merged"


@dataclass(frozen=True)
class RunResult:
    """A batch's outcome: a VideoResult per planned input, in order, then one per refused input; `exit_code` is what
    `vda depth` exits with."""

    videos: list[VideoResult]
    run_dir: Path
    report: Path | None = None  # OUT/report.html, written at the run's end (None: it could not be written)

    @property
    def ok(self) -> bool:
        return all(v.ok for v in self.videos)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else EXIT_ERROR

    def __len__(self) -> int:
        return len(self.videos)

    def __iter__(self):
        return iter(self.videos)

    def __getitem__(self, key: int | str) -> VideoResult:
        """By position, or by name (a video's output folder name)."""
        if isinstance(key, str):
            return next(v for v in self.videos if v.name == key)
        return self.videos[key]


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


class MergeLine:
    """Merges videos as the queue reports them computed (on spare CPU while the devices compute the others), one
    after the other in a thread, or `backend.merge_slots` at a time where the backend runs merges on several hosts.
    A merge that fails fails its video only."""

    def __init__(self, backend: Backend, request: DepthRequest, outs: dict[str, Path], early: EarlyMerge, progress):
        self.backend, self.request, self.outs, self.early, self.progress = backend, request, outs, early, progress
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
            self.early.release(video.run.run.path)
            started, out, r = time.perf_counter(), self.outs[video.name], self.request
            began = time.time()
            request = MergeRequest(
                video.run.run,
                out,
                r.fmt,
                r.create_video,
                r.overwrite,
                r.merge_workers,
                input=video.run.input,
                **r.merge,
            )
            try:
                video.merge_node = self.backend.merge(request)
            except Exception as err:  # noqa: BLE001 - it fails this video only; the batch reports it at the end
                video.status, video.error, video.log = "failed", f"the merge failed: {err}", str(video.run.run.logs)
                video.merge_times = (began, time.time())
                self.errors[video.name] = err
                self.progress.video_failed(0)
                continue
            video.status, video.merge_times = "merged", (began, time.time())
            if r.clean:  # only after a successful merge: the pieces are what a re-merge or a resume would need
                video.run.run.discard_results()
            seconds = time.perf_counter() - started
            self.progress.video_finished(
                f"vda: {video.name}: merged {video.plan.frame_count} frames into {out} ({r.fmt}) in {seconds:.1f} s"
            )


def run_depth(request: DepthRequest, backend: Backend, stream=sys.stderr) -> int:
    """Plan, compute every unit on the devices, merge each video; 0 when every input got its output."""
    return run_batch(request, backend, stream).exit_code


def run_batch(request: DepthRequest, backend: Backend, stream=sys.stderr) -> RunResult:
    """`run_depth`, with what became of each input; the lines it says go to `stream`."""
    root = request.root
    with (
        root.locked(f"vda depth {' '.join(request.inputs)} -o {request.out}"),
        logs.run_log(root.host_log),
        host_threads(),
    ):
        try:
            result = _run_batch(request, backend, stream)
        except VdaError:  # a run that could not go on: what it did is still worth a look (not after Ctrl-C)
            _write_report(request, stream)
            raise
        return replace(result, report=_write_report(request, stream))


def _write_report(request: DepthRequest, stream) -> Path | None:
    """OUT/report.html from the run's record; a report that cannot be written costs the run one line, not its exit."""
    from vda.report import write_report
    from vda.report.data import ReportError

    if not request.root.results.is_file():  # the run stopped before its queue began: nothing to show
        return None
    try:
        return write_report(request.root.path, request.out, finished=True)
    except (ReportError, OSError) as err:
        print(f"vda: the report could not be written ({err})", file=stream, flush=True)
        return None


def _run_batch(request: DepthRequest, backend: Backend, stream) -> RunResult:
    say = lambda line: print(line, file=stream, flush=True)  # noqa: E731
    planner = Planner(request, say)
    try:
        return _run_planned(request, backend, planner, say, stream)
    finally:
        planner.close()


def _run_planned(request: DepthRequest, backend: Backend, planner: Planner, say, stream) -> RunResult:
    """The batch, from its first planned input on: later inputs join the queue as they are planned (all of them first
    for a backend that needs every plan when it opens, Ray)."""
    root, outs = request.root, {}
    first = planner.take(wait=True)
    while backend.plans_first and not planner.finished:
        first += planner.take(wait=True)
    space = SpaceLedger(request.fmt, request.devices, request.output_size) if request.space_check else None
    first = [(v, out) for v, out in first if _fits(space, v, out, planner, say)]
    videos = [v for v, _ in first]
    outs.update((v.name, out) for v, out in first)
    _say_start(request, backend, planner, videos, space, say)
    shapes = _CompileShapes(backend.options.compile, say)
    shapes.add(videos)
    log.info(
        "vda depth: %d input(s) on %s (%s backend)", len(planner.entries), ", ".join(request.devices), backend.name
    )
    progress = BatchProgress([v.plan for v in videos], stream=stream, inputs=len(planner.entries))
    progress.planned(planner.planned)
    work = merges = None
    try:
        # The planned inputs and those still being planned (Docker mounts them all now); a refused one is no input.
        later = [r for r in planner.runs[planner.planned :] if r.input.exists()]
        if videos or later:  # every input refused: nothing for the backend to prepare (nor to fail at)
            backend.open(root, [v.run for v in videos] + later)
        followed = [v.run.run.path for v in videos] if backend.merges_here else []  # else pass 1 is in the merge
        with EarlyMerge(followed, outputs={v.run.run.path: request.output(outs[v.name]) for v in videos}) as early:
            merges = MergeLine(backend, request, outs, early, progress)
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
            record = work.run_record
            record.refused, record.started = _refused(planner), planner.started
            record.context = _context(request, backend, planner)
            following = early if backend.merges_here else None
            work.incoming = lambda: shapes.add(_arrivals(planner, space, outs, following, work, say))
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
            work.run_record.finished = True
            work.save()
    return _report(
        work.videos if work else videos, planner.refused, merges.errors if merges else {}, outs, say, root.path
    )


class _CompileShapes:
    """With --compile: the batch's network shapes so far, and one line when they pass dynamo's recompile limit (each
    new shape past it would run uncompiled)."""

    def __init__(self, compile: bool, say):
        self.on, self.say, self.shapes = compile, say, set()

    def add(self, videos: list[QueuedVideo] | None) -> list[QueuedVideo] | None:
        """Count `videos`' shapes (warning once); `videos` is handed back, so this can wrap a call."""
        if self.on and videos:
            from vda.device.compat import dynamo_recompile_limit

            self.shapes |= {(v.plan.settings.net_height, v.plan.settings.net_width) for v in videos}
            warning = compile_shape_warning(self.shapes, dynamo_recompile_limit())
            if warning:
                self.say(warning)
                self.on = False
        return videos


def _context(request: DepthRequest, backend: Backend, planner: Planner) -> dict:
    """What the run's record says of the run beyond the queue (vda.report reads it)."""
    r = request
    return {"backend": backend.name, "devices": list(r.devices), "format": r.fmt, "output_size": r.output_size,
            "inputs": len(planner.entries), "out": str(r.out)}  # fmt: skip


def _refused(planner: Planner) -> list[dict]:
    return [{"input": r.source, "status": "refused", "error": r.error} for r in planner.refused]


def _arrivals(planner: Planner, space, outs: dict, early: EarlyMerge | None, work: WorkQueue, say) -> list | None:
    """The inputs planned since the last call, for the queue (None once every input is planned or refused)."""
    if planner.finished:
        return None
    new = [(v, out) for v, out in planner.take() if _fits(space, v, out, planner, say)]
    for video, out in new:
        outs[video.name] = out
        if early is not None:
            early.follow(video.run.run.path, planner.request.output(out))
    work.progress.planned(planner.planned)
    work.run_record.refused = _refused(planner)
    return [v for v, _ in new]


def _fits(space: SpaceLedger | None, video: QueuedVideo, out: Path, planner: Planner, say) -> bool:
    """Whether the disks hold this input too (with those before it); if not it is refused, or raised when alone."""
    if space is None:
        return True
    try:
        space.add(video.plan, video.run.run, out)
        return True
    except PlanError as err:
        if len(planner.entries) == 1:
            raise
        planner.refused.append(Refused(str(video.run.input), str(err).strip(), err))
        say(f"vda: {video.run.input}: {str(err).strip()}; the other inputs go on")
        return False


def _say_start(request: DepthRequest, backend: Backend, planner: Planner, videos, space, say) -> None:
    """The run's first line: what is planned so far (the whole batch, once every input is planned)."""
    frames, units = sum(v.plan.frame_count for v in videos), sum(len(v.plan.units) for v in videos)
    total = len(planner.entries)
    what = f"{len(videos)} videos, " if len(videos) != 1 else ""
    if not planner.finished:
        what = f"{planner.planned}/{total} inputs planned so far, "
    need = f", needs about {human_size(space.total)} of disk" if space is not None and videos else ""
    say(
        f"vda: {what}{frames} frames in {units} units on {', '.join(request.devices)} ({backend.name}); "
        f"run folder {request.root.path}{need}"
    )


def _report(videos: list[QueuedVideo], refused: list[Refused], merge_errors: dict, outs, say, root: Path) -> RunResult:
    """One line per input without an output, with its log; what became of each input."""
    failed = [v for v in videos if v.status != "merged"]
    if len(videos) + len(refused) == 1 and failed and failed[0].name in merge_errors:
        raise merge_errors[failed[0].name]  # a single input: its own error, as `vda merge` would give it
    for r in refused:
        say(f"vda: error: {r.source}: {r.error}")
    results = []
    for v in videos:
        error, log_path = None, None
        if v.status != "merged":
            error, log_path = v.error or "not computed", str(v.log or v.run.run.video_log)
            say(f"vda: error: {v.run.input}: {error}; log: {log_path}")
        results.append(
            VideoResult(v.name, str(v.run.input), v.status, outs[v.name], v.plan.frame_count, error, log_path)
        )
    results += [VideoResult(Path(r.source).stem, r.source, "refused", None, 0, r.error) for r in refused]
    if refused or failed:
        total = len(videos) + len(refused)
        say(f"vda: {total - len(refused) - len(failed)} of {total} input(s) done; the others are listed above")
    return RunResult(results, root)
