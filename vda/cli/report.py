"""`vda report OUT`: write OUT/report.html from a run's records (vda.report), finished or still going.

vda.cli.main adds the subparser with `add_parser(sub)` and dispatches to `cmd_report`. A folder that holds no run is
refused in one line (vda.report.NotARun, exit 2).
"""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "report",
        help="write OUT/report.html: a run's videos, devices and timeline in one page (also while it runs)",
    )
    p.add_argument("out", type=Path, metavar="OUT", help="the -o folder of `vda depth` (or its run folder)")
    p.add_argument("-o", "--output", type=Path, help="folder to write report.html into (default: OUT)")


def cmd_report(args) -> int:
    from vda.report import write_run_report
    from vda.report.data import load_run

    run = load_run(args.out)
    path = write_run_report(run, args.output)
    failed = sum(v.status in ("failed", "refused") for v in run.videos)
    print(f"wrote {path}: {len(run.videos)} videos ({failed} failed), run {run.state}")
    return 0
