"""A run you can look at: OUT/report.html, one self-contained page per `vda depth` run.

`write_report(folder)` reads the run's records (vda.report.data: OUT or its run folder, finished or still going),
draws the timeline (vda.report.charts, matplotlib), makes a strip of frames and depth per video (vda.report.thumbs)
and writes the page (vda.report.html) atomically to OUT/report.html, whose path it returns. A folder that holds no
run raises `NotARun` (one line: the problem and the fix). The batch calls it at the end of every run; `vda report`
calls it on any run, also one in progress.

This package reads files only: it imports vda.core, vda.io and vda.errors, never the orchestrator or the devices.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from vda.files import write_atomic
from vda.report.data import NotARun, ReportError, RunRecord, load_run

REPORT_NAME = "report.html"
log = logging.getLogger(__name__)

__all__ = ["REPORT_NAME", "NotARun", "ReportError", "RunRecord", "load_run", "write_report", "write_run_report"]


def write_report(folder: str | Path, out: str | Path | None = None, *, finished: bool | None = None) -> Path:
    """Write the report of the run in `folder` (OUT or a run folder) to `out`/report.html (default: the run's
    OUT) and return its path. `finished`: the caller knows the record is final (the run itself, at its end)."""
    return write_run_report(load_run(Path(folder), finished=finished), out)


def write_run_report(run: RunRecord, out: str | Path | None = None) -> Path:
    """`write_report` of a run already read."""
    from vda.report import charts, html, thumbs  # matplotlib is imported when a report is made, not with vda

    began = time.perf_counter()
    target = Path(out or run.out) / REPORT_NAME
    text = html.page(run, charts.timeline(run), thumbs.strips(run.videos))
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, text.encode())
    took = time.perf_counter() - began
    log.info("report: %s, %d videos, %.0f KB in %.2f s", target, len(run.videos), len(text) / 1e3, took)
    return target
