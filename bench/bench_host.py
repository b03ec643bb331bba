"""Host CPU per output frame, stage by stage and in total, and how well the host feeds a (simulated) device.

    python bench/bench_host.py [--video PATH] [--frames 2000] [--only stages|runs|scale ...] [--record LABEL]
                               [--write-costs vda/orchestrator/host_costs.json]

The input is a 1080p x264 file (GOP 250, B-frames): `--video`, else ../shared's Tokyo-Walk clip (1280x720 real
footage) upscaled to 1920x1080 and played back and forth to `--frames`, else (a clone without ../shared) the
synthetic textured scene of vda.model.synth at 1080p. Made once, in --work (default /tmp/vda-bench-host).

stages  in this process, CPU time (all threads) per output frame: the plan's probe, the workers' decode of every
        unit (to the --max-res size, 1280x720), the store of every window (518x924 float16, what a GPU run stores),
        pass 1 of the merge, and rendering + writing npy and png16 on one core.
runs    `vda depth` at the defaults on one simulated device (VDA_SIMULATE_MS_PER_FRAME, issue 21) for npy and png16
        at 7.5 and 2.5 ms/frame: CPU time of every process (getrusage of children) per output frame, and the
        efficiency, simulated device time (frames x ms) over wall time.
scale   5 simulated devices at 40 ms/frame against one, on the same cores: the speed-up, start-up included.

`--record LABEL` appends the tables to bench/RESULTS.md. `--write-costs PATH` (with stages) renders every format and
writes the per-stage table that `vda doctor` sizes a host's cores with (vda.orchestrator.capacity). Absolute times
on a shared 2-core machine are noisy; the ratios within one run are the figures to compare.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
import torch
from bench_infer import append_results, depth_cmd, synthetic_checkpoint

from vda.core import stitch
from vda.device.transfer import piece_to_host
from vda.device.unit import REREAD
from vda.device.unit import _frames as unit_frames
from vda.io.frame_source import FrameSource
from vda.io.pieces import write_piece
from vda.io.probe import probe
from vda.merge.first_pass import FirstPass
from vda.merge.render import job_for, map_ordered
from vda.orchestrator.planning import choose_model, create_plan

try:
    from vda.system import keep_freed_memory
except ImportError:  # a tree from before issue 22's second stop
    keep_freed_memory = None
try:
    from vda.system import host_threads
except ImportError:  # a tree from before issue 22's third stop: pass 1 at the libraries' default threads
    host_threads = contextlib.nullcontext

ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the checkout (as tests/conftest.py looks for it), or beside the folder of worktrees
CLIPS = [up / "shared" / "videos" / "Tokyo-Walk_rgb.mp4" for up in (ROOT.parent, ROOT.parent.parent)]
SHARED_CLIP = next((p for p in CLIPS if p.is_file()), CLIPS[0])
W, H = 1920, 1080
SIM_ENV = "VDA_SIMULATE_MS_PER_FRAME"
ROWS: dict[str, list[tuple[str, str, str]]] = {"stages": [], "runs": [], "scale": []}
COSTS: dict = {"stage_ms": {}, "render_ms": {}}  # the stages' figures, as --write-costs writes them
RENDERED = ("npy", "png16")  # the formats the stages table renders; --write-costs renders every format doctor sizes
ALL_RENDERED = ("npy", "png16", "png8", "npz", "exr")


def row(table: str, name: str, value: str, note: str = "") -> None:
    ROWS[table].append((name, value, note))
    print(f"{name:<44} {value:>12}  {note}", flush=True)


def _looped(frames: list[np.ndarray], n: int):
    """Frames played forwards then backwards, to `n`: long real content without a jump at the loop."""
    cycle = frames + frames[-2:0:-1]
    return (cycle[i % len(cycle)] for i in range(n))


def _source_frames() -> tuple[list[np.ndarray], str]:
    if SHARED_CLIP.is_file():
        with av.open(str(SHARED_CLIP)) as c:
            frames = [
                cv2.resize(f.to_ndarray(format="rgb24"), (W, H), interpolation=cv2.INTER_CUBIC)
                for f in c.decode(video=0)
            ]
        return frames, f"{SHARED_CLIP.name} (1280x720 real footage) upscaled to {W}x{H}"
    from vda.model.synth import synthetic_scene

    small = synthetic_scene(120, H // 4, W // 4)
    frames = [cv2.resize(f, (W, H), interpolation=cv2.INTER_CUBIC) for f in small]
    return frames, f"vda.model.synth's textured scene (120 frames at {W // 4}x{H // 4}) upscaled to {W}x{H}"


def make_video(work: Path, n: int) -> tuple[Path, str]:
    """The 1080p x264 test file (GOP 250 and x264's B-frames, its defaults), made once per frame count."""
    path = work / f"host_{n}.mp4"
    note = path.with_suffix(".txt")
    if path.is_file() and note.is_file():
        return path, note.read_text()
    frames, what = _source_frames()
    tmp = path.with_name(".tmp_" + path.name)
    with av.open(str(tmp), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.options = {"preset": "veryfast", "crf": "20", "g": "250"}
        for frame in _looped(frames, n):
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    os.replace(tmp, path)
    note.write_text(f"{what}, {n} frames, x264 veryfast crf 20, GOP 250, B-frames")
    return path, note.read_text()


def cpu_ms(fn) -> tuple[float, float]:
    """(CPU ms of this process, all threads; wall ms) of fn()."""
    c, t = time.process_time(), time.perf_counter()
    fn()
    return (time.process_time() - c) * 1e3, (time.perf_counter() - t) * 1e3


def _unit_frames(plan, unit):
    """A unit's frames as its worker decodes them, from one frame source kept from unit to unit."""
    if not hasattr(_unit_frames, "source"):
        _unit_frames.source = FrameSource(keep=REREAD)  # as DeviceWorker makes it
    return unit_frames(plan, unit, _unit_frames.source)


def _window_depth(w: int, shape: tuple[int, int]) -> np.ndarray:
    """A deterministic, positive, varying [32, h, w] float16 window: what a GPU run stores (fp16)."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    base = 1.0 + np.sin(xx / 37.0 + w) * 0.3 + yy / shape[0]
    return np.stack([base + 0.01 * i for i in range(stitch.WINDOW)]).astype(np.float16)


def bench_stages(video: Path, work: Path, checkpoint: Path, formats: tuple[str, ...] = RENDERED) -> None:
    n = probe(video).frame_count  # warm the file cache
    ms, _ = cpu_ms(lambda: probe(video))
    row("stages", "plan: probe", f"{ms / n:.2f} ms", "per frame, CPU")
    run = work / "stages_run"
    shutil.rmtree(run, ignore_errors=True)
    plan, _ = create_plan(video, run, choose_model(str(checkpoint)), precision="auto")
    s = plan.settings
    total = 0.0
    COSTS["sizes"] = {
        "source": [plan.input.width, plan.input.height],
        "network": [s.net_width, s.net_height],
        "output": [s.frame_width, s.frame_height],
    }

    def decode_all():
        for unit in plan.units:
            for _ in _unit_frames(plan, unit):
                pass

    ms, wall = cpu_ms(decode_all)
    total += ms
    COSTS["stage_ms"]["decode"] = round(ms / n, 2)
    row(
        "stages",
        f"worker: decode to {s.frame_width}x{s.frame_height}",
        f"{ms / n:.2f} ms",
        f"per output frame, all units (wall {wall / n:.2f} ms)",
    )
    depth = {w: _window_depth(w, (s.net_height, s.net_width)) for w in range(2)}
    from vda.io.rundir import RunDir

    # A worker's store gets each row's [min, max] taken on the device (issue 22): device work, not timed here.
    rows = {w: piece_to_host(torch.from_numpy(d).float(), "fp16")[0].numpy() for w, d in depth.items()}

    def store_all():
        for w in plan.all_pieces():
            extra = (rows[w % 2],) if rows else ()
            write_piece(RunDir(run).piece("window", w), depth[w % 2], w, 0.0, *extra)

    ms, _ = cpu_ms(store_all)
    total += ms
    COSTS["stage_ms"]["store"] = round(ms / n, 2)
    row("stages", f"worker: store {s.net_width}x{s.net_height} fp16 windows", f"{ms / n:.2f} ms", "per output frame")
    RunDir(run).first_pass.unlink(missing_ok=True)
    first = FirstPass(job_for(plan, run, work / "stages_out", "npy", False), plan)

    def pass1():  # at the threads `vda depth` gives it (host_threads), where the tree measured has them
        with host_threads():
            while not first.finished:
                first.step()

    ms, _ = cpu_ms(pass1)
    total += ms
    COSTS["stage_ms"]["pass 1"] = round(ms / n, 2)
    row("stages", "merge: pass 1", f"{ms / n:.2f} ms", "per output frame")
    params, lo, hi = first.result()
    # One thread, as a render process runs (render._render_process): torch's default of one thread per core spins
    # its idle threads, which tripled the stage's CPU time here (20.6 against 6.2 ms/frame npy) for no speed.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    if keep_freed_memory is not None:  # as a render process does, where the tree measured has it
        keep_freed_memory()
    for fmt in formats:
        out = work / "stages_out"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        job = dataclasses.replace(job_for(plan, run, out, fmt, False), params=params, lo=lo, hi=hi)
        ms, _ = cpu_ms(lambda job=job: [None for _ in map_ordered(job, list(job.pieces), 1)])
        row("stages", f"merge: render + write {fmt}", f"{ms / n:.2f} ms", "per output frame, one core")
        COSTS["render_ms"][fmt] = round(ms / n, 2)
        row("stages", f"total with {fmt}", f"{(total + ms) / n:.2f} ms", "per output frame, the stages above")
    torch.set_num_threads(threads)


def write_costs(path: Path, video_what: str) -> None:
    """The stages' figures as vda.orchestrator.capacity reads them, with the machine and the command."""
    cpu = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), "unknown CPU")
    table = {
        "command": f"python bench/bench_host.py --only stages --write-costs {path}",
        "machine": f"{platform.node()}: {os.cpu_count()} cores ({cpu}), one thread per render process",
        "input": f"{video_what}, at the defaults",
        **COSTS,
        "notes": "ms of host CPU per output frame",
    }
    path.write_text(json.dumps(table, indent=2) + "\n")
    print(f"wrote {path}", flush=True)


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def depth_run(video: Path, out: Path, checkpoint: Path, fmt: str, ms: float, devices: str) -> tuple[float, float]:
    """(wall s, CPU s of every process) of one `vda depth` at the defaults on simulated devices."""
    shutil.rmtree(out, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k != "VDA_THREADS"}  # the defaults: the host shares the cores
    env[SIM_ENV] = str(ms)
    env["PYTHONPATH"] = str(ROOT)
    cmd = depth_cmd(video, out, checkpoint, devices, "--format", fmt)
    cpu, t = children_cpu_s(), time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t, children_cpu_s() - cpu
    if proc.returncode != 0:
        raise SystemExit(f"vda depth failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return wall, cpu


def bench_runs(video: Path, work: Path, checkpoint: Path, n: int) -> None:
    for fmt in ("npy", "png16"):
        for ms in (7.5, 2.5):
            wall, cpu = depth_run(video, work / "run_out", checkpoint, fmt, ms, "cpu")
            device = n * ms / 1e3
            row(
                "runs",
                f"{fmt}, 1 device at {ms} ms/frame: host CPU",
                f"{cpu * 1e3 / n:.1f} ms",
                f"per output frame, every process; wall {wall:.1f} s",
            )
            row(
                "runs",
                f"{fmt}, 1 device at {ms} ms/frame: efficiency",
                f"{device / wall:.2f}",
                f"simulated device time {device:.1f} s / wall {wall:.1f} s",
            )


def bench_scale(video: Path, work: Path, checkpoint: Path, n: int) -> None:
    one, _ = depth_run(video, work / "run_out", checkpoint, "npy", 40, "cpu")
    five, cpu = depth_run(video, work / "run_out", checkpoint, "npy", 40, ",".join(["cpu"] * 5))
    row("scale", "1 simulated device at 40 ms/frame, npy", f"{one:.1f} s", f"wall; device time {n * 0.04:.1f} s")
    row(
        "scale",
        "5 simulated devices at 40 ms/frame, npy",
        f"{five:.1f} s",
        f"wall; host CPU {cpu * 1e3 / n:.1f} ms per output frame",
    )
    row("scale", "speed-up, 5 devices over 1", f"{one / five:.2f}x", f"on {os.cpu_count()} cores; goal 4.5x")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--video", type=Path)
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/vda-bench-host"))
    ap.add_argument("--only", nargs="+", choices=list(ROWS), default=list(ROWS))
    ap.add_argument("--record", metavar="LABEL")
    ap.add_argument("--write-costs", type=Path, metavar="PATH", help="write the stages' per-frame table (JSON) here")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    video, what = (args.video, f"{args.video.name}") if args.video else make_video(args.work, args.frames)
    n = probe(video).frame_count
    checkpoint = synthetic_checkpoint(args.work / "models")
    print(f"input: {video}: {what}", flush=True)
    if args.write_costs and "stages" not in args.only:
        ap.error("--write-costs needs the stages table (--only stages)")
    if "stages" in args.only:
        bench_stages(video, args.work, checkpoint, ALL_RENDERED if args.write_costs else RENDERED)
        if args.write_costs:
            write_costs(args.write_costs, what)
    if "runs" in args.only:
        bench_runs(video, args.work, checkpoint, n)
    if "scale" in args.only:
        bench_scale(video, args.work, checkpoint, n)
    if args.record:
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
        for table, rows in ROWS.items():
            if rows:
                setup = f"{args.record}. Input: {what}. {table}; load average {load} at the end."
                append_results(f"bench_host.py ({table})", setup, ("figure", "value", "note"), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
