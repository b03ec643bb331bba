"""`vda depth`: many inputs, one queue, a merge per video as soon as its units are stored.

Nothing is lost in a batch: an input that cannot be read, or whose units fail, is reported at the end with its log,
after every other input has been computed and merged; the run then exits non-zero. Inputs and their plans are in
vda.orchestrator.inputs, the merges in vda.orchestrator.merge_line.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import replace
from pathlib import Path

from vda import logs
from vda.core.plan import PlanError
from vda.errors import VdaError
from vda.merge.early import EarlyMerge
from vda.orchestrator.backends.base import Backend
from vda.orchestrator.inputs import Planner, Refused
from vda.orchestrator.launch import compile_shape_warning
from vda.orchestrator.merge_line import MergeLine
from vda.orchestrator.progress import BatchProgress
from vda.orchestrator.queue import QueuedVideo, WorkQueue
from vda.orchestrator.request import DepthRequest, RunResult, VideoResult
from vda.orchestrator.space import SpaceLedger, human_size
from vda.system import host_threads

__all__ = ["DepthRequest", "RunResult", "VideoResult", "run_batch", "run_depth"]
log = logging.getLogger(__name__)


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
        followed = [v.run.folder.path for v in videos] if backend.merges_here else []  # else pass 1 is in the merge
        with EarlyMerge(followed, outputs={v.run.folder.path: request.output(outs[v.name]) for v in videos}) as early:
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
            _describe(work, request, backend, planner)
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
                progress.close()
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


def _describe(work: WorkQueue, request: DepthRequest, backend: Backend, planner: Planner) -> None:
    """What the run's record says beyond the queue: the refused inputs, the run's start (planning included), its
    settings."""
    record = work.run_record
    record.refused, record.started = _refused(planner), planner.started
    record.context = _context(request, backend, planner)


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
            early.follow(video.run.folder.path, planner.request.output(out))
    work.progress.planned(planner.planned)
    work.run_record.refused = _refused(planner)
    return [v for v, _ in new]


def _fits(space: SpaceLedger | None, video: QueuedVideo, out: Path, planner: Planner, say) -> bool:
    """Whether the disks hold this input too (with those before it); if not it is refused, or raised when alone."""
    if space is None:
        return True
    try:
        space.add(video.plan, video.run.folder, out)
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
            error, log_path = v.error or "not computed", str(v.log or v.run.folder.video_log)
            say(f"vda: error: {v.run.input}: {error}; log: {log_path}")
        results.append(
            VideoResult(v.name, str(v.run.input), v.status, outs[v.name], v.plan.frame_count, error, log_path)
        )
    results += [VideoResult(Path(r.source).stem, r.source, "refused", None, 0, r.error) for r in refused]
    if refused or failed:
        total = len(videos) + len(refused)
        say(f"vda: {total - len(refused) - len(failed)} of {total} input(s) done; the others are listed above")
    return RunResult(results, root)
