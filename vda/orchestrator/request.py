"""What `vda depth` is asked (`DepthRequest`) and what became of each input (`RunResult`, `VideoResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vda.errors import EXIT_ERROR
from vda.io.rundir import RunDir
from vda.merge.output import Output
from vda.orchestrator.launch import WorkerOptions

RUN_NAME = "_run"  # OUT/_run: the default run folder (and so no input may be named so)


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
