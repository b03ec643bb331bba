"""A run's records read into typed rows: what the report shows, and nothing it has to compute from files later.

`load_run(folder)` takes OUT (the `vda depth -o` folder, whose run folder is OUT/_run) or a run folder itself, and
reads its processing_results.json, each video's plan.json and, for a record that is not final, the run folder's lock
(is the run still going?). A folder without a record raises `NotARun`, whose one line names the problem and the fix.
Times are seconds since the run began; an attempt still running ends at the record's time.
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from vda.core.plan import Plan, PlanError
from vda.core.video_info import VideoInfo
from vda.errors import InputError
from vda.io.rundir import LOCK_NAME, RESULTS_NAME

RUN_NAME = "_run"  # OUT/_run: where `vda depth` keeps its run folder unless --run-dir says otherwise
# What became of an attempt: the timeline's legend, in the order it lists them.
OUTCOMES = ("done", "retried", "failed", "dropped", "running")


class ReportError(InputError):
    """A report that cannot be made; the message says why and what to do."""


class NotARun(ReportError):
    """The folder holds no run record."""


@dataclass(frozen=True)
class Attempt:
    """One unit's attempt on one device: the timeline's bar."""

    video: str
    unit: int
    slot: int
    node: str | None
    start: float
    end: float
    outcome: str  # one of OUTCOMES


@dataclass(frozen=True)
class DeviceRow:
    slot: int
    device: str
    log: str
    units: int
    frames: int
    failures: int
    worker_starts: int
    busy_s: float  # summed attempt times on it (compute, store, and the failed attempts)
    retired: str | None
    nodes: tuple[str, ...]  # where a backend spans hosts (Ray node ids)


@dataclass(frozen=True)
class VideoRow:
    name: str
    input: str
    status: str  # pending, computed, merged, failed, refused
    frames: int
    units: int
    units_done: int
    out: Path | None
    error: str | None
    log: str | None
    info: VideoInfo | None  # the planned input (size, fps, where its frames are); None when it was never planned
    device_s: float  # summed attempt times of its units
    merge: tuple[float, float] | None
    merge_node: str | None


@dataclass(frozen=True)
class RunRecord:
    run_dir: Path
    out: Path
    state: str  # "finished", "in progress" (a process holds the run folder) or "stopped" (ended before its end)
    started: float | None  # epoch seconds, None in a record of an older vda
    wall_s: float
    host_cpu_s: float | None
    backend: str
    devices: list[DeviceRow]
    videos: list[VideoRow]
    attempts: list[Attempt]
    settings: dict = field(default_factory=dict)  # the model's and the output's (from the plans and the record)

    @property
    def frames_done(self) -> int:
        return sum(v.frames for v in self.videos if v.status == "merged")

    @property
    def device_s(self) -> float:
        return sum(v.device_s for v in self.videos)


def locate(folder: Path) -> tuple[Path, Path]:
    """(run folder, output folder) of OUT or of a run folder; NotARun when neither holds a record."""
    folder = Path(folder)
    if (folder / RESULTS_NAME).is_file():
        return folder, folder.parent if folder.name == RUN_NAME else folder
    if (folder / RUN_NAME / RESULTS_NAME).is_file():
        return folder / RUN_NAME, folder
    if (folder / RUN_NAME).is_dir():
        raise NotARun(
            f"{folder} holds no run record yet ({RUN_NAME}/{RESULTS_NAME}): its run has not reached its queue; "
            "run `vda report` again once it has"
        )
    why = "not a folder" if not folder.is_dir() else f"no {RUN_NAME}/{RESULTS_NAME} in it"
    raise NotARun(f"{folder} is not the output of a `vda depth` run ({why}); give the -o folder of `vda depth`")


def load_run(folder: Path, finished: bool | None = None) -> RunRecord:
    """The run in `folder` (see the module docstring). `finished`: the caller knows the record is final."""
    run_dir, out = locate(folder)
    try:
        doc = json.loads((run_dir / RESULTS_NAME).read_text())
    except (OSError, ValueError) as err:
        raise ReportError(f"{run_dir / RESULTS_NAME} cannot be read ({err}); run the same `vda depth` again") from None
    run = doc.get("run") or {}
    if run.get("out"):
        out = Path(run["out"])
    started, updated = run.get("started"), run.get("updated")
    wall = max(0.0, updated - started) if started is not None and updated is not None else 0.0
    attempts = _attempts(doc.get("units", []), wall)
    videos = [_video(v, run_dir, attempts) for v in doc.get("videos", [])]
    state = "finished" if finished or run.get("finished") else "in progress" if _held(run_dir) else "stopped"
    if state == "finished" and any(v.status in ("pending", "computed") for v in videos):
        state = "stopped"  # it ended before every video was settled: interrupted, or out of devices
    return RunRecord(
        run_dir=run_dir,
        out=out,
        state=state,
        started=started,
        wall_s=wall,
        host_cpu_s=run.get("host_cpu_s"),
        backend=run.get("backend", "?"),
        devices=[_device(d, attempts) for d in doc.get("devices", [])],
        videos=videos,
        attempts=attempts,
        settings=_settings(run, doc.get("videos", []), doc.get("computed_over_produced")),
    )


def _attempts(units: list[dict], wall: float) -> list[Attempt]:
    out = []
    for u in units:
        spans = u.get("spans") or []
        for i, s in enumerate(spans):
            last = i == len(spans) - 1
            end = s.get("end")
            if not last:
                outcome = "retried"
            elif u["status"] in ("done", "failed", "dropped"):
                outcome = u["status"]
            else:
                outcome = "running" if end is None else "retried"
            stop = end if end is not None else max(wall, s["start"])
            out.append(Attempt(u["video"], u["unit"], s["slot"], s.get("node"), s["start"], stop, outcome))
    return out


def _device(d: dict, attempts: list[Attempt]) -> DeviceRow:
    mine = [a for a in attempts if a.slot == d["slot"]]
    nodes = tuple(sorted({a.node for a in mine if a.node}))
    busy = sum(a.end - a.start for a in mine)
    return DeviceRow(
        d["slot"], d["device"], d["log"], d["units"], d["frames"], d["failures"], d["worker_starts"], busy,
        d.get("retired"), nodes,
    )  # fmt: skip


def _video(v: dict, run_dir: Path, attempts: list[Attempt]) -> VideoRow:
    name = v.get("name") or Path(v["input"]).stem
    info = None
    if v.get("run_dir"):
        try:
            info = Plan.load(Path(v["run_dir"])).input
        except (PlanError, OSError):  # a plan removed since: the row shows what the record has
            info = None
    mine = [a for a in attempts if a.video == name]
    units_done = len({a.unit for a in mine if a.outcome == "done"})
    merge = tuple(v["merge"]) if v.get("merge") else None
    return VideoRow(
        name=name,
        input=v["input"],
        status=v["status"],
        frames=v.get("frames", 0),
        units=v.get("units", 0),
        units_done=units_done,
        out=Path(v["out"]) if v.get("out") else None,
        error=v.get("error"),
        log=v.get("log") or (str(run_dir / "logs" / "vda.log") if v["status"] == "refused" else None),
        info=info,
        device_s=sum(a.end - a.start for a in mine),
        merge=merge,
        merge_node=v.get("merge_node"),
    )


def _settings(run: dict, videos: list[dict], ratio: float | None) -> dict:
    """The settings a reader checks first: the model's (from the first plan), the output's (from the record)."""
    out = {"devices": ", ".join(run.get("devices", [])), "format": run.get("format")}
    out["output size"] = run.get("output_size")
    for v in videos:
        try:
            s = Plan.load(Path(v["run_dir"])).settings if v.get("run_dir") else None
        except (PlanError, OSError):
            continue
        if s is not None:
            out.update(model=f"{'metric-' if s.metric else ''}{s.encoder} ({s.checkpoint})", precision=s.precision)
            out.update({"input size": s.input_size, "max res": s.max_res, "mode": s.mode, "unit size": s.unit_size})
            out["simulated device"] = "yes" if s.simulated else None
            break
    if ratio is not None:
        out["frames computed / produced"] = ratio
    return {k: v for k, v in out.items() if v not in (None, "")}


def _held(run_dir: Path) -> bool:
    """Whether the process named in the run folder's lock still runs here (the lock stays behind after a run; a
    holder on another host cannot be checked, and is taken as running). Reading, never taking, the lock: a `vda
    depth` starting meanwhile must not find it held by the report."""
    try:
        text = (run_dir / LOCK_NAME).read_text()
    except OSError:
        return False
    found = re.match(r"pid (\d+) on (\S+)", text)
    if not found:
        return False
    if found.group(2) != socket.gethostname():
        return True
    try:
        os.kill(int(found.group(1)), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True
