"""Peak memory of `vda depth` against video length, and windows computed across queue units.

    python bench/bench_memory.py [--lengths 200 2000] [--devices cpu,cpu] [--unit-size N] [--record]

Runs the real CLI (local backend) on synthetic x264 videos of each length and reports the largest peak
RSS of any process of the run (orchestrator, each worker, the merge), read from the kernel's
accounting of waited-for children. Memory must not grow with the length: the ratio of the longest to
the shortest should stay at or below 1.2. It also checks that the windows stored across all units
equal the windows of one single pass (ratio exactly 1.0), prints the queue's frames computed over frames
produced (processing_results.json: a unit's first window encodes all 32 of its frames), and the merge's
seconds after the workers (its `vda: NAME: merged ...` line). Frames are small and the input size low so
that 2,000 frames finish in minutes on a CPU; what is measured is growth with length, not the level.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_infer import depth_cmd, synthetic_checkpoint, synthetic_video

from vda.core import stitch
from vda.core.plan import UNIT_WINDOWS
from vda.io.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]


def peak_of_run(cmd: list[str]) -> tuple[float, float, str]:
    """(largest peak RSS in MB among the processes of cmd, seconds, the merge's line `vda: NAME: merged ...`).

    Run in a fresh child to isolate it.
    """
    probe = (
        "import resource, subprocess, sys, time; t = time.time(); "
        "r = subprocess.run(sys.argv[1:], check=True, capture_output=True, text=True); "
        "merged = [x for x in r.stderr.splitlines() if ': merged ' in x] or ['']; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, time.time() - t); print(merged[-1])"
    )
    out = subprocess.run([sys.executable, "-c", probe, *cmd], check=True, capture_output=True, text=True).stdout
    figures, merged = out.split("\n", 1)
    rss, seconds = map(float, figures.split())
    return rss, seconds, merged.strip()


def merge_seconds(line: str) -> float:
    """The merge's seconds from `vda: NAME: merged N frames into OUT (FMT) in S s` (it starts once the video's last
    unit is stored, so this is the time the merge adds after the workers)."""
    match = re.search(r": merged [0-9]+ frames into .* in ([0-9.]+) s$", line)
    return float(match[1]) if match else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[200, 2000])
    ap.add_argument("--devices", default="cpu,cpu")
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--input-size", type=int, default=56)
    ap.add_argument("--format", default="png16")
    ap.add_argument("--unit-size", type=int, help="windows per queue unit (default: vda's, 8)")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    width, height = map(int, args.size.split("x"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = synthetic_checkpoint(tmp)
        for n in args.lengths:
            video = synthetic_video(tmp / f"v{n}.mp4", n, width, height)
            out = tmp / f"out{n}"
            cmd = depth_cmd(
                video,
                out,
                ckpt,
                args.devices,
                "--input-size",
                str(args.input_size),
                "--max-res",
                "0",
                "--format",
                args.format,
                *(["--unit-size", str(args.unit_size)] if args.unit_size else []),
            )
            rss, seconds, merged = peak_of_run(cmd)
            merge_s = merge_seconds(merged)
            stored = len(list(RunDir(out / "_run").piece("window", 0).parent.glob("win_*.npy")))
            written = len(list(out.glob("depth_[0-9]*")))
            ratio = stored / stitch.num_windows(n)
            results = json.loads(RunDir(out / "_run").results.read_text())
            units, over = len(results["units"]), results["computed_over_produced"]
            rows.append((n, rss, seconds, stored, ratio, units, over, written, merge_s))
            print(
                f"{n:5d} frames: peak RSS {rss:7.0f} MB, {seconds:6.1f} s, {stored} windows stored "
                f"(single pass {stitch.num_windows(n)}, ratio {ratio:.3f}) by {units} unit(s), frames computed / "
                f"produced {over:.3f}, {written} frames written; merge {merge_s:.1f} s after the workers",
                flush=True,
            )
    growth = rows[-1][1] / rows[0][1]
    print(f"peak RSS {rows[-1][0]} / {rows[0][0]} frames: {growth:.3f} (goal <= 1.2)")
    if args.record:
        lines = [
            f"\n## bench_memory.py, {datetime.date.today()}, commit {_commit()}\n",
            f"`vda depth` local backend, devices {args.devices}, {width}x{height} x264, input size "
            f"{args.input_size}, {args.format}, unit size {args.unit_size or UNIT_WINDOWS} windows.\n",
            "| frames | peak RSS (MB) | seconds | windows stored | / single pass | units | computed / produced | "
            "frames written | merge s |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {n} | {r:.0f} | {s:.1f} | {w} | {q:.3f} | {u} | {c:.3f} | {f} | {m:.1f} |"
            for n, r, s, w, q, u, c, f, m in rows
        ]
        lines.append(f"\nPeak RSS ratio {rows[-1][0]} / {rows[0][0]} frames: **{growth:.3f}** (goal <= 1.2).")
        with open(ROOT / "bench" / "RESULTS.md", "a") as fh:
            fh.write("\n".join(lines) + "\n")


def _commit() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    t0 = time.time()
    main()
    print(f"({time.time() - t0:.0f} s)")
