"""Scale of the host side (issue 21): planning against video length, the queue at thousands of units, resume.

Prints figures and ratios (bench/RESULTS.md keeps them); absolute times on a shared machine are noisy, so each claim
is a ratio within one run or a bound with a wide margin.

- planning: `probe` (packets demuxed, vda.io.video.packet_count) against the full-decode probe (decode_count), on
  x264 videos of 1,000 to 100,000 frames at 64x48 (cheap to encode; a demux costs per packet, not per pixel), and
  `create_plan` of a 10-minute 720p30 video (18,000 frames, about 4.5 Mbit/s; the goal: under 3 s).
- resume planning: `create_plan` again on the same run folder (the probe is read back from RUN_DIR/probe.json).
- the queue: wall and host CPU time per unit through the real WorkQueue and local worker processes on the simulated
  device (VDA_SIMULATE_MS_PER_FRAME), at 1,000 and 10,000 units (one video at --unit-size 1); the goal: the wall
  time per unit at 10,000 units at most 1.3x that at 1,000.
- time to first unit stored for a 1-hour 1080p video: measured on a 1-minute 1080p clip with the simulated device
  (from the start of `vda depth` to the first .done marker), with its planning replaced by the planning of a
  1-hour video (the packet count of 108,000 frames, timed at 64x48, plus the sample decode timed at 1080p).

Run from the repository root: `python bench/bench_scale.py [--only planning,queue,first] [--work DIR]`.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vda import config  # noqa: E402
from vda.config import SIMULATE_ENV  # noqa: E402
from vda.io.probe import decode_count, probe  # noqa: E402
from vda.io.rundir import RunDir  # noqa: E402
from vda.model.synth import synth_state_dict  # noqa: E402
from vda.orchestrator.backends.base import VideoRun  # noqa: E402
from vda.orchestrator.backends.local import LocalBackend  # noqa: E402
from vda.orchestrator.launch import WorkerOptions  # noqa: E402
from vda.orchestrator.planning import choose_model, create_plan  # noqa: E402
from vda.orchestrator.queue import QueuedVideo, WorkQueue  # noqa: E402


def row(figure: str, value: str, note: str = "") -> None:
    print(f"| {figure} | {value} | {note} |", flush=True)


def encode(path: Path, n: int, width: int, height: int, fps: int = 30, gop: int = 250) -> Path:
    """x264 (ultrafast, B-frames, `gop`-frame GOPs) of 8 frames in turn: a gradient that moves and a noisy block,
    about 4.5 Mbit/s at 720p30. Kept in the work folder: encoding 18,000 720p frames takes minutes."""
    if path.is_file():
        return path
    partial = path.with_suffix(".part" + path.suffix)
    with av.open(str(partial), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": str(gop), "keyint_min": str(gop), "bf": "2", "crf": "23"}
        yy, xx = np.mgrid[0:height, 0:width]
        base = np.stack([(xx // 4) % 256, (yy // 3) % 256, ((xx + yy) // 5) % 256], -1).astype(np.uint8)
        rng, frames = np.random.RandomState(0), []
        block = max(8, min(128, height // 4))
        for k in range(8):
            img = np.roll(base, 8 * k, axis=1).copy()
            x = min(width - block, block // 2 + 2 * k)
            img[:block, x : x + block] = rng.randint(0, 255, (block, block, 3))
            frames.append(av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p"))
        for i in range(n):
            frame = frames[i % 8]
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    partial.rename(path)
    return path


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - t


def planning(work: Path, ckpt: Path) -> None:
    print("\n### Planning against length (x264 64x48, 250-frame GOPs, B-frames)\n")
    print("| figure | value | note |\n|---|---:|---|")
    for n in (1_000, 10_000, 100_000):
        video = encode(work / f"tiny_{n}.mp4", n, 64, 48)
        fast, seconds = timed(probe, video)
        exact, decode_s = timed(decode_count, video)
        assert fast.counted == "packets" and fast.frame_count == exact.frame_count == n
        row(f"probe, {n:,} frames", f"{seconds:.2f} s", f"{n / seconds:,.0f} packets/s; full decode {decode_s:.2f} s")
    video = encode(work / "ten_minutes_720p.mp4", 18_000, 1280, 720)
    run = RunDir(work / "run_720p")
    model, choose_s = timed(choose_model, str(ckpt))  # once per batch, not per input
    row("choose_model (checkpoint hashed and checked, once per batch)", f"{choose_s:.2f} s", "synthetic vits, 100 MB")
    create_plan(video, run.path, model, overwrite=True)
    run.probe.unlink()  # the next plan probes afresh, as a first run does
    (plan, resumed), seconds = timed(create_plan, video, run.path, model)
    exact, decode_s = timed(decode_count, video)
    assert plan.frame_count == exact.frame_count == 18_000 and resumed
    size = video.stat().st_size / 1e6
    row("create_plan, 10 min 720p30 (18,000 frames)", f"{seconds:.2f} s", f"{size:.0f} MB; goal < 3 s")
    row("full-decode probe of the same", f"{decode_s:.1f} s", f"{18_000 / decode_s:.0f} frames/s (the old planning)")
    (_, resumed), resume_s = timed(create_plan, video, run.path, model)
    row("resume: create_plan again (probe read back)", f"{resume_s:.3f} s", f"{seconds / resume_s:.0f}x faster")
    big = RunDir(work / "run_100k")
    (plan, _), first_s = timed(create_plan, work / "tiny_100000.mp4", big.path, model, unit_size=1, overwrite=True)
    row(f"create_plan, 100,000 frames, {len(plan.units):,} units", f"{first_s:.2f} s", "probe, units, plan.json")
    (plan, _), resume_s = timed(create_plan, work / "tiny_100000.mp4", big.path, model, unit_size=1)
    row(f"resume: create_plan, 100,000 frames, {len(plan.units):,} units", f"{resume_s:.3f} s", "")


def queue_run(work: Path, ckpt: Path, units: int, ms: float, devices: list[str]) -> tuple[float, list[float]]:
    """(wall, [queue process CPU, workers' CPU]) seconds of the queue phase (no merge), one video of `units` units."""
    video = encode(work / f"units_{units}.mp4", units * 22, 64, 48)
    run = RunDir(work / f"queue_{units}")
    os.environ[SIMULATE_ENV] = str(ms)  # the local backend hands its workers this process's environment
    config.load()
    plan, _ = create_plan(video, run.path, checkpoint=str(ckpt), input_size=14, unit_size=1, overwrite=True)
    assert len(plan.units) == units
    backend = LocalBackend(devices, WorkerOptions(threads=1))
    queued = [QueuedVideo(VideoRun("scale", run, video), plan)]
    work_queue = WorkQueue(queued, backend, devices, run, stream=io.StringIO())
    before = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    backend.open(run, [queued[0].run])
    t = time.perf_counter()
    try:
        work_queue.run()
    finally:
        backend.close()
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = [a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime for a, b in zip(after, before)]  # queue, workers
    assert all(u.status == "done" for u in work_queue.units.values())
    del os.environ[SIMULATE_ENV]
    config.load()
    return wall, cpu


def queue(work: Path, ckpt: Path, ms: float) -> None:
    devices = ["cpu", "cpu"]
    print(f"\n### The queue on the simulated device ({ms:g} ms/frame, 2 workers, one video, 1-window units)\n")
    print("| figure | value | note |\n|---|---:|---|")
    per_unit = {}
    for units in (1_000, 10_000):
        wall, cpu = queue_run(work, ckpt, units, ms, devices)
        per_unit[units] = wall / units
        row(f"{units:,} units: wall per unit", f"{1000 * wall / units:.1f} ms", f"{wall:.0f} s in all")
        row(f"{units:,} units: host CPU per unit", f"{1000 * sum(cpu) / units:.1f} ms", "every process (getrusage)")
        row(f"{units:,} units: the queue's CPU per unit", f"{1000 * cpu[0] / units:.2f} ms", "this process: the loop")
    device_ms = 22 * ms / len(devices)
    row("device time per unit (the floor)", f"{device_ms:.1f} ms", "22 frames x ms/frame / 2 devices")
    row("wall per unit, 10,000 / 1,000", f"{per_unit[10_000] / per_unit[1_000]:.2f}", "goal <= 1.3")


def first_unit(work: Path, ckpt: Path, ms: float) -> None:
    print(f"\n### Time to the first unit stored (simulated device, {ms:g} ms/frame, 1 worker)\n")
    print("| figure | value | note |\n|---|---:|---|")
    clip = encode(work / "one_minute_1080p.mp4", 1_800, 1920, 1080)
    out = work / "first_out"
    cmd = [sys.executable, "-m", "vda", "depth", str(clip), "-o", str(out), "--devices", "cpu"]
    cmd += ["--checkpoint", str(ckpt), "--format", "npy", "--overwrite", "--no-space-check"]
    env = {**os.environ, SIMULATE_ENV: str(ms), "PYTHONPATH": str(ROOT), "VDA_THREADS": "2"}
    marker = out / "_run" / "windows" / "win_000007.done"  # the last window of unit 0 (8 windows)
    for old in (out / "_run" / "windows").glob("*"):
        old.unlink()
    (out / "_run" / "probe.json").unlink(missing_ok=True)
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not marker.is_file() and proc.poll() is None:
        time.sleep(0.01)
    first = time.perf_counter() - t
    proc.terminate()
    proc.wait()
    _, plan_clip = timed(probe, clip)
    _, plan_hour = timed(probe, encode(work / "tiny_108000.mp4", 108_000, 64, 48))
    row("1-minute 1080p: start to first unit stored", f"{first:.1f} s", "its probe included")
    row("probe of the 1-minute 1080p clip", f"{plan_clip:.2f} s", "demux + 48-frame sample decode + head hash")
    row("probe of a 1-hour video's 108,000 packets (64x48)", f"{plan_hour:.2f} s", "")
    row("1-hour 1080p: first unit stored, estimated", f"{first - plan_clip + plan_hour:.1f} s", "first - clip + hour")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="planning,queue,first")
    parser.add_argument("--work", type=Path, default=Path("/tmp/vda_bench_scale"))
    parser.add_argument("--ms", type=float, default=1.0, help="simulated ms per frame for the queue")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    ckpt = args.work / "video_depth_anything_vits.pth"
    if not ckpt.is_file():
        torch.save(synth_state_dict("vits", 0), ckpt)
    parts = args.only.split(",")
    if "planning" in parts:
        planning(args.work, ckpt)
    if "queue" in parts:
        queue(args.work, ckpt, args.ms)
    if "first" in parts:
        first_unit(args.work, ckpt, 7.5)


if __name__ == "__main__":
    main()
