"""What the run report (vda.report, OUT/report.html) costs: the time to write it, what it weighs, its share of a run.

    python bench/bench_report.py [--videos 200] [--frames 40] [--real 6] [--ms-per-frame 7.5]

(a) A batch of --videos records at the record level: processing_results.json, one plan.json and one merged output per
    video (hard links to the outputs of one real run), on 4 devices, with a failure every 20th video and a retry every
    7th; the report is written through the real path (vda.report.write_report: reading the records and plans,
    decoding the input's frames, reading the depth, the timeline, the page). Prints seconds and KB per 100 videos.
(b) A real `vda depth` of --real short videos on two simulated devices (VDA_SIMULATE_MS_PER_FRAME, a GPU's speed: the
    model is a wait, every host stage is real), whose report is written at its end: prints the report's seconds
    against the run's wall time.

Everything uses the synthetic vits weights (`vda.model.synth`) and synthetic x264 clips (tests/media.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from media import synthetic_frames, write_video  # noqa: E402

from vda.files import write_json  # noqa: E402
from vda.io.rundir import RESULTS_NAME  # noqa: E402

DEVICES = 4


def real_run(folder: Path, videos: int, frames: int, env: dict | None = None) -> tuple[Path, float, str]:
    """`vda depth` of `videos` synthetic clips into folder/out, two CPU workers: (OUT, wall seconds, its stderr)."""
    import torch

    from vda.model.synth import synth_state_dict

    ckpt = folder / "video_depth_anything_vits.pth"
    torch.save(synth_state_dict("vits", 0), ckpt)
    clips = [write_video(folder / f"c{i:02d}.mp4", synthetic_frames(frames, 64, 48, seed=i)) for i in range(videos)]
    out = folder / "out"
    cmd = [sys.executable, "-m", "vda", "-v", "depth", *map(str, clips), "-o", str(out), "--devices", "cpu,cpu"]
    cmd += ["--checkpoint", str(ckpt), "--input-size", "56", "--unit-size", "1"]
    began = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "VDA_THREADS": "1", **(env or {})})
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"vda depth failed:\n{done.stderr[-3000:]}")
    return out, wall, done.stderr


def synthetic_batch(dest: Path, n: int, video: Path, plan_dir: Path, depth_out: Path) -> Path:
    """OUT of a batch of `n` videos written at the record level (see the module docstring); returns OUT."""
    runs, units, videos = dest / "_run", [], []
    frames = json.loads((plan_dir / "plan.json").read_text())["input"]["frame_count"]
    for i in range(n):
        name = f"v{i:04d}"
        run_dir, out = runs / name, dest / name
        run_dir.mkdir(parents=True)
        shutil.copy(plan_dir / "plan.json", run_dir / "plan.json")
        failed = i % 20 == 19
        if not failed:
            shutil.copytree(depth_out, out, copy_function=os.link)
        t0, slot = 0.5 + (i // DEVICES) * 1.2, i % DEVICES
        spans = [{"slot": slot, "node": None, "start": t0, "end": t0 + 1.0}]
        if i % 7 == 3:  # a retry: a first attempt that failed elsewhere
            spans.insert(0, {"slot": (slot + 1) % DEVICES, "node": None, "start": t0 - 0.4, "end": t0 - 0.1})
        units.append({"video": name, "unit": 0, "status": "failed" if failed else "done", "spans": spans})
        error = "unit 0 failed 3 time(s), last on cuda:1: injected fault" if failed else None
        videos.append({"name": name, "input": str(video), "run_dir": str(run_dir), "status": "failed" if failed else
                       "merged", "units": 1, "frames": frames, "error": error, "log": str(runs / "logs/worker_1.log")
                       if failed else None, "merge_node": None, "out": None if failed else str(out),
                       "merge": None if failed else [t0 + 1.0, t0 + 1.1]})  # fmt: skip
    end = 1.0 + (n // DEVICES + 1) * 1.2
    per = {"units": n // DEVICES, "frames": frames * n // DEVICES, "failures": 0, "worker_starts": 1}
    devices = [{"slot": s, "device": f"cuda:{s}", "log": f"logs/worker_{s}.log", **per} for s in range(DEVICES)]
    now = time.time()
    run = {"started": now - end, "updated": now, "finished": True, "host_cpu_s": 0.4 * n, "backend": "local",
           "devices": [d["device"] for d in devices], "format": "png16", "output_size": "source", "inputs": n,
           "out": str(dest)}  # fmt: skip
    write_json(runs / RESULTS_NAME, {"schema_version": 1, "run": run, "devices": devices, "videos": videos,
                                     "units": units})  # fmt: skip
    return dest


def bench_synthetic(folder: Path, out: Path, n: int) -> tuple[float, int]:
    """(seconds to write the report of an n-video synthetic batch, its bytes)."""
    from vda.report import write_report

    src = json.loads((out / "_run" / RESULTS_NAME).read_text())["videos"][0]
    batch = synthetic_batch(folder / f"batch{n}", n, Path(src["input"]), Path(src["run_dir"]), Path(src["out"]))
    began = time.perf_counter()
    path = write_report(batch)
    return time.perf_counter() - began, path.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--videos", type=int, default=200)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--real", type=int, default=6, help="videos of the real (simulated-device) run")
    ap.add_argument("--ms-per-frame", type=float, default=7.5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_report_") as tmp:
        env = {"VDA_SIMULATE_MS_PER_FRAME": str(args.ms_per_frame)}
        out, wall, log = real_run(Path(tmp), args.real, args.frames, env)
        took = float(re.search(r"vda.report: report: .* in ([0-9.]+) s", log).group(1))
        size = (out / "report.html").stat().st_size
        print(f"(b) real run: {args.real} videos x {args.frames} frames, 2 simulated devices at {args.ms_per_frame} "
              f"ms/frame: wall {wall:.1f} s, report {took:.2f} s ({100 * took / wall:.1f}% of the run), "
              f"{size / 1e3:.0f} KB")  # fmt: skip
        for n in (args.videos, 1000) if args.videos < 1000 else (args.videos,):
            seconds, size = bench_synthetic(Path(tmp), out, n)
            print(f"(a) {n} videos: report written in {seconds:.2f} s ({1000 * seconds / n:.1f} ms per video), "
                  f"{size / 1e6:.2f} MB, {size / 1e6 * 100 / n:.2f} MB per 100 videos")  # fmt: skip


if __name__ == "__main__":
    main()
