"""What `gpu_check.py` found: one row per check, a JSON of every figure rewritten after each section, the log.

The JSON (`<out>/gpu-check.json`) is written to a temporary name and renamed, so a run cut short (a killed job, a
lost lease) leaves the figures of every finished section and never a half-written file. The log
(`<out>/gpu-check.log`) gets everything the script prints; each command it runs (`vda depth`) logs to
`<out>/logs/<name>.log`.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

STATUSES = ("PASS", "FAIL", "SKIP", "INFO")


@dataclass
class Row:
    section: str
    check: str
    status: str  # one of STATUSES
    detail: str
    figures: dict = field(default_factory=dict)


@dataclass
class Report:
    """Rows as they come, each printed at once; section times; the JSON after each section."""

    out: Path
    meta: dict = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    sections: dict[str, dict] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def say(self, section: str, text: str) -> None:
        print(f"gpu-check: {section}: {text}", flush=True)

    def add(self, section: str, check: str, status: str, detail: str, **figures) -> None:
        assert status in STATUSES, status
        self.rows.append(Row(section, check, status, detail, figures))
        self.say(section, f"{check}: {status} {detail}")

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def section_done(self, name: str, seconds: float, expected: float, skipped: str = "") -> None:
        """Record a section's time (or why it was skipped) and rewrite the JSON."""
        self.sections[name] = {"seconds": round(seconds, 2), "expected_s": expected, "skipped": skipped}
        self.write_json(finished=False)

    @property
    def failed(self) -> int:
        return sum(r.status == "FAIL" for r in self.rows)

    def write_json(self, finished: bool) -> Path:
        path = self.out / "gpu-check.json"
        doc = {
            "written": datetime.datetime.now().isoformat(timespec="seconds"),
            "finished": finished,
            "elapsed_s": round(self.elapsed(), 1),
            "failed": self.failed,
            **self.meta,
            "sections": self.sections,
            "checks": [asdict(r) for r in self.rows],
        }
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
        os.replace(tmp, path)
        return path

    def table(self) -> list[str]:
        """The one summary table: a row per check, markdown, pipes in details escaped."""
        lines = ["| section | check | status | result |", "|---|---|---|---|"]
        for r in self.rows:
            lines.append(f"| {r.section} | {r.check} | {r.status} | {r.detail.replace('|', '/')} |")
        return lines

    def verdict(self) -> str:
        n = self.failed
        return f"gpu-check: FAIL ({n} check(s) failed)" if n else "gpu-check: PASS"


class Tee:
    """A text stream that writes to several: the terminal and the log."""

    def __init__(self, *streams: TextIO):
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()

    def isatty(self) -> bool:
        return False


class Logged:
    """`with Logged(path):` copies stdout and stderr to `path` until the block ends."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> Logged:
        self.fh = open(self.path, "a", buffering=1)
        self.saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = Tee(sys.stdout, self.fh), Tee(sys.stderr, self.fh)
        return self

    def __exit__(self, *exc) -> None:
        sys.stdout, sys.stderr = self.saved
        self.fh.close()
