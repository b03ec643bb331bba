"""What the work queue costs: many short videos against one long one, the per-unit overhead and the unit size it
justifies, frames computed over frames produced, and how soon a video is merged after its last unit.

    python bench/bench_queue.py [--videos 20] [--frames 100] [--devices cpu,cpu] [--size 128x72] [--input-size 56]
                                [--seek-size 1920x1080] [--gop 250] [--target 0.1] [--record]

Everything is measured here, for real, with the synthetic vits weights (`vda.model.synth`) and synthetic x264 clips
(bench_infer.synthetic_video); it prints figures and ratios, no verdict.

(a) `vda depth v00.mp4 ... v19.mp4 -o OUT --devices cpu,cpu` (the local backend) against one video of the same total
    frames on the same devices: wall seconds of each and their ratio (batch / single).
(b) The queue's per-unit overhead, in pieces:
    - claim: the host round trip of one unit, Ready -> Assign -> Done, through the real queue (WorkQueue), the local
      backend's worker processes and their pipes, over units whose pieces are already stored, so that no compute
      hides it: the median gap between two Done messages of one worker;
    - decode start: the extra time a unit's first window waits for its 32 frames (open the file, seek to the keyframe
      before the unit's first frame, decode up to it) over decoding 32 frames in a running decoder, for units at
      evenly spread positions of a GOP; on the bench clip and on a --seek-size clip with a --gop keyframe interval
      (x264's default is 250), decoded to the size a worker would (--max-res 1280);
    - store: vda.device.worker's store of one piece (np.save to a temporary name, rename, `.done` marker) at the
      bench's
      network size and for a 1920x1080 frame at input size 518 in fp16 (a GPU run). It runs in the worker's store
      thread, and it is paid per piece (window or stream segment) whatever the unit size.
    From the claim and the decode start (what a device waits for at each unit) and the first window's re-encoded
    overlap (10 frames per unit), it prints the overhead at the default unit size (vda.core.plan.UNIT_WINDOWS) and the
    smallest unit whose overhead is at most --target of its compute: here (CPU, the windows' seconds of (a)) and on a
    GPU at the authors' published vits fp16 speed (7.5 ms per frame on an A100) with the --seek-size decode start.
    Also frames computed over frames produced for window mode and stream mode at their default unit sizes.
(c) From the batch run of (a): per video, the time from its last piece stored (the newest `.done` marker in its run
    folder) to its merged output (the mtime of its depth_meta.json), for the videos merged while the devices still
    computed others, with the merge's own seconds (its `vda: NAME: merged ... in S s` line).

Sizes are small so that the whole script takes a few minutes on 2 CPU cores (about 3 here); the options scale it.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from bench_infer import append_results, sliding_frames, synthetic_checkpoint, synthetic_video, write_x264

from vda import events
from vda.core import stitch
from vda.core.plan import STREAM_WARMUP, UNIT_WINDOWS, default_unit_size, make_units
from vda.core.preprocess import network_shape
from vda.core.video_info import fit_max_res
from vda.device.transfer import piece_to_host
from vda.device.unit import DECODE_AHEAD
from vda.device.worker import _store
from vda.io.decode import read_frames
from vda.io.prefetch import Prefetch
from vda.io.probe import probe
from vda.io.rundir import RunDir
from vda.io.writers import META_NAME
from vda.merge import merge
from vda.orchestrator.backends.base import VideoRun
from vda.orchestrator.backends.local import LocalBackend
from vda.orchestrator.launch import WorkerOptions
from vda.orchestrator.planning import create_plan
from vda.orchestrator.queue import QueuedVideo, WorkQueue
from vda.system import usable_cpus

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED_VITS_MS = 7.5  # authors' README: vits, fp16, A100, 1x32x518x518, per frame (as bench_stages.py)
ROWS: list[tuple[str, str, str]] = []


def row(figure: str, value: str, note: str = "") -> None:
    ROWS.append((figure, value, note))
    print(f"  {figure:<52} {value:>12}  {note}", flush=True)


def section(title: str) -> None:
    print(f"\n{title}", flush=True)


# -- (a) and (c): real `vda depth` runs ------------------------------------------------------------------------------
def vda_depth(inputs: list[Path], out: Path, ckpt: Path, args) -> tuple[float, float, list[tuple[float, str]]]:
    """Run `vda depth` (local backend); (start time, wall seconds, [(time, stderr line)])."""
    cmd = [sys.executable, "-m", "vda", "depth", *map(str, inputs), "-o", str(out)]
    cmd += ["--devices", args.devices, "--checkpoint", str(ckpt), "--input-size", str(args.input_size)]
    cmd += ["--max-res", "0", "--format", args.format]
    if args.merge_workers:
        cmd += ["--merge-workers", str(args.merge_workers)]
    lines: list[tuple[float, str]] = []
    started = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        lines.append((time.time(), line.rstrip("\n")))
    code = proc.wait()
    seconds = time.time() - started
    if code != 0:
        tail = "\n".join(text for _, text in lines[-10:])
        raise SystemExit(f"bench_queue: vda depth exited with {code}:\n{tail}")
    return started, seconds, lines


def results_of(out: Path) -> dict:
    return json.loads(RunDir(out / "_run").results.read_text())


def many_against_one(tmp: Path, ckpt: Path, args) -> dict:
    width, height = map(int, args.size.split("x"))
    clips = tmp / "clips"
    clips.mkdir()
    videos = [
        synthetic_video(clips / f"v{i:02d}.mp4", args.frames, width, height, shift=1 + i % 5)
        for i in range(args.videos)
    ]
    total = args.videos * args.frames
    long = synthetic_video(tmp / "long.mp4", total, width, height)
    section(
        f"(a) {args.videos} videos of {args.frames} frames against 1 video of {total} frames, --devices "
        f"{args.devices}, {width}x{height} x264, input size {args.input_size}, {args.format}"
    )
    batch_out, single_out = tmp / "batch", tmp / "single"
    started, batch_s, lines = vda_depth(videos, batch_out, ckpt, args)
    _, single_s, _ = vda_depth([long], single_out, ckpt, args)
    batch, single = results_of(batch_out), results_of(single_out)
    for name, seconds, res in (
        (f"{args.videos} x {args.frames} frames", batch_s, batch),
        (f"1 x {total}", single_s, single),
    ):
        split = "+".join(str(d["units"]) for d in res["devices"])
        row(
            f"wall, {name}",
            f"{seconds:.1f} s",
            f"{total / seconds:.1f} frames/s; {len(res['units'])} unit(s) ({split} per worker), computed / produced "
            f"{res['computed_over_produced']:.3f}",
        )
    row(f"ratio {args.videos} videos / 1 video", f"{batch_s / single_s:.2f}", "same frames, same devices")
    return {"batch_out": batch_out, "started": started, "lines": lines, "single": single, "long": long}


def merge_latency(run: dict, args) -> None:
    """(c): last piece stored -> merged output, per video of the batch run."""
    out, started = run["batch_out"], run["started"]
    merge_s = {}
    for _, text in run["lines"]:
        # vda: NAME: merged N frames into OUT (FMT) in S s
        if text.startswith("vda: ") and ": merged " in text:
            name = text[len("vda: ") :].split(":", 1)[0]
            merge_s[name] = float(text.rsplit(" in ", 1)[1].split()[0])
    videos = []
    for name in sorted(p.name for p in (out / "_run").iterdir() if (p / "plan.json").is_file()):
        markers = list((out / "_run" / name).glob("windows/*.done")) + list(
            (out / "_run" / name).glob("segments/*.done")
        )
        stored = max(m.stat().st_mtime for m in markers)
        merged = (out / name / META_NAME).stat().st_mtime
        videos.append((name, stored, merged))
    computing_until = max(stored for _, stored, _ in videos)
    early = [(n, s, m) for n, s, m in videos if m < computing_until]
    section(
        f"(c) last piece stored -> merged output, in the {len(videos)}-video run; the devices stored their last "
        f"piece at +{computing_until - started:.1f} s"
    )
    first, stored, merged = videos[0]
    row(
        f"{first}: last piece stored -> merged",
        f"{merged - stored:.2f} s",
        f"stored at +{stored - started:.1f} s, merged at +{merged - started:.1f} s; its merge alone "
        f"{merge_s.get(first, float('nan')):.1f} s",
    )
    if early:
        lat = [m - s for _, s, m in early]
        own = [merge_s[n] for n, _, _ in early if n in merge_s]
        row(
            "merged while the devices computed others",
            f"{len(early)} of {len(videos)}",
            f"latency median {statistics.median(lat):.2f} s, max {max(lat):.2f} s; "
            f"the merges alone: median {statistics.median(own):.2f} s",
        )
    last = max(videos, key=lambda v: v[2])
    row(
        "after the last piece: last merge done",
        f"{last[2] - computing_until:.2f} s",
        f"{sum(m >= computing_until for _, _, m in videos)} merge(s) finished after the devices were done",
    )
    # the same merge again, after the run: as vda's default does it (a pool of processes, spawned for each merge, when
    # the machine has more than one core) and in the calling process
    for workers in (None, 1):
        t = time.perf_counter()
        merge(out / "_run" / first, out / f"remerge{workers}", args.format, workers=workers, log=lambda text: None)
        how = "in the calling process" if workers == 1 else f"vda's default, up to {usable_cpus()} processes"
        row(f"{first} merged again, {how}", f"{time.perf_counter() - t:.2f} s", "after the run, pass 1 done")


# -- (b): per-unit overhead ------------------------------------------------------------------------------------------
class StampedBackend(LocalBackend):
    """The local backend, noting when each Done message reaches the host, per worker slot."""

    def __init__(self, devices, options):
        super().__init__(devices, options)
        self.done: dict[int, list[float]] = {}
        self.lock = threading.Lock()

    def start_worker(self, slot, device, log_path, on_line):
        def stamped(line: str) -> None:
            if isinstance(events.decode(line), events.Done):
                with self.lock:
                    self.done.setdefault(slot, []).append(time.perf_counter())
            on_line(line)

        return super().start_worker(slot, device, log_path, stamped)


def claim_round_trip(tmp: Path, ckpt: Path, video: Path, args) -> tuple[float, int]:
    """Median seconds from one Done to the next of a worker, over units of one window already stored; units run."""
    run = RunDir(tmp / "claims" / "_run")
    plan, _ = create_plan(video, run.path, checkpoint=str(ckpt), input_size=args.input_size, max_res=0, unit_size=1)
    devices = args.devices.split(",")
    backend = StampedBackend(devices, WorkerOptions(checkpoint=str(ckpt)))
    queued = [QueuedVideo(VideoRun("claims", run, video), plan)]
    work = WorkQueue(queued, backend, devices, run, stream=io.StringIO())  # every unit pending: nothing stored yet
    host = torch.zeros(1, 1, 1)
    for piece in plan.all_pieces():  # now store them: each Assign finds its unit done and answers at once
        path = run.piece(plan.settings.mode, piece)
        path.parent.mkdir(parents=True, exist_ok=True)
        _store(path, host, None, time.time(), piece)
    backend.open(run, [queued[0].run])
    try:
        work.run()
    finally:
        backend.close()
    gaps = [b - a for stamps in backend.done.values() for a, b in zip(stamps, stamps[1:])]
    return statistics.median(gaps), len(plan.units)


def decode_start(
    clip: Path, size: tuple[int, int], samples: int = 5, ahead: float = 0.0
) -> tuple[float, float, float, int]:
    """(mean, max extra seconds of a unit's first 32 frames over a running decoder, per-frame decode s, GOP).

    `ahead`: seconds the unit's decoder runs before its frames are wanted, as a worker starts the decoder of the unit
    it was handed ahead while the current one computes (vda.device.worker.DeviceWorker.serve); 0 for a decoder
    started when the frames are wanted."""
    info = probe(clip)
    t = time.perf_counter()
    n = sum(1 for _ in read_frames(info, range(info.frame_count), size))
    per_frame = (time.perf_counter() - t) / n
    keys = [k for k, _ in info.keyframes]
    gop = keys[1] - keys[0] if len(keys) > 1 else info.frame_count
    # one-window units whose frames start at evenly spread positions of the first GOP (decoded from its keyframe, as
    # after a seek); unit 0 starts at frame 0 and waits for nothing more than a running decoder
    units = make_units(info.frame_count, "window", 1)[1:]
    in_gop = [u for u in units if u.decode[-1][0] < gop] or units
    picks = [in_gop[round(i * (len(in_gop) - 1) / max(1, samples - 1))] for i in range(min(samples, len(in_gop)))]
    extra = []
    for unit in picks:
        wanted = (i for a, b in unit.decode for i in range(a, b))
        if ahead:
            frames = Prefetch(read_frames(info, wanted, size), DECODE_AHEAD)
            time.sleep(ahead)  # the current unit computes
            t = time.perf_counter()
        else:
            t = time.perf_counter()
            frames = read_frames(info, wanted, size)
        got = sum(1 for _ in zip(range(stitch.WINDOW), frames))
        frames.close()
        extra.append(max(0.0, time.perf_counter() - t - got * per_frame))  # below 0: timing noise
    return statistics.mean(extra), max(extra), per_frame, gop


def store_seconds(shape: tuple[int, ...], precision: str, folder: Path, repeats: int = 5) -> tuple[float, float]:
    """(median seconds of vda.device.worker's store of one piece of `shape`, MB on disk)."""
    depth = torch.rand(*shape)
    folder.mkdir(parents=True, exist_ok=True)
    seconds = []
    for k in range(repeats):
        _, host, event = piece_to_host(depth, precision)
        t = time.perf_counter()
        _store(folder / f"win_{k:06d}.npy", host, event, time.time(), k)
        seconds.append(time.perf_counter() - t)
    return statistics.median(seconds), (folder / "win_000000.npy").stat().st_size / 1e6


def unit_overhead(frames_extra: int, overhead_s: float, frame_s: float, windows: int) -> float:
    """Overhead of a unit of `windows` windows over its compute: the device's wait at the unit's start plus the
    re-encoded overlap of its first window, over the unit's windows (22 new frames each)."""
    return (overhead_s + frames_extra * frame_s) / (windows * stitch.STRIDE * frame_s)


def justified(frames_extra: int, overhead_s: float, frame_s: float, target: float) -> int:
    """The smallest unit (in windows) whose overhead is at most `target`."""
    return math.ceil((overhead_s + frames_extra * frame_s) / (target * stitch.STRIDE * frame_s))


def per_unit_overhead(tmp: Path, ckpt: Path, run: dict, args) -> None:
    width, height = map(int, args.size.split("x"))
    section("(b) per-unit overhead of the queue")
    claim_s, claims = claim_round_trip(tmp, ckpt, run["long"], args)
    row("claim: Done -> Ready -> Assign -> Done", f"{claim_s * 1000:.1f} ms", f"median over {claims} stored units")
    small_s, small_max, small_frame, small_gop = decode_start(run["long"], (width, height))
    row(
        f"decode start, {width}x{height} GOP {small_gop}",
        f"{small_s * 1000:.1f} ms",
        f"mean over a GOP (max {small_max * 1000:.0f} ms); decoding {small_frame * 1000:.2f} ms per frame",
    )
    big_s = None
    if args.seek_size:
        bw, bh = map(int, args.seek_size.split("x"))
        clip = write_x264(tmp / "seek.mp4", sliding_frames(args.gop + 64, bw, bh, 9, block=8), gop=args.gop)
        size = fit_max_res(bw, bh, 1280)
        big_s, big_max, big_frame, gop = decode_start(clip, size)
        row(
            f"decode start, {bw}x{bh} GOP {gop} -> {size[0]}x{size[1]}",
            f"{big_s * 1000:.0f} ms",
            f"mean over a GOP (max {big_max * 1000:.0f} ms); decoding {big_frame * 1000:.2f} ms per frame",
        )
        unit_s = UNIT_WINDOWS * stitch.STRIDE * PUBLISHED_VITS_MS / 1000  # a default unit at published GPU speed
        big_ahead, ahead_max, _, _ = decode_start(clip, size, ahead=unit_s)
        row(
            f"  the same, decoded one unit ahead ({unit_s:.2f} s)",
            f"{big_ahead * 1000:.0f} ms",
            f"max {ahead_max * 1000:.0f} ms; what a worker waits, its next unit's decoder started as the last began",
        )
    net = network_shape(height, width, args.input_size)
    small_store, small_mb = store_seconds((stitch.WINDOW, *net), "fp32", tmp / "store_small")
    row(
        f"store one window, {net[1]}x{net[0]} fp32",
        f"{small_store * 1000:.1f} ms",
        f"{small_mb:.2f} MB; per piece, in the store thread",
    )
    big_net = network_shape(1080, 1920, 518)
    big_store, big_mb = store_seconds((stitch.WINDOW, *big_net), "fp16", tmp / "store_big")
    row(
        f"store one window, {big_net[1]}x{big_net[0]} fp16",
        f"{big_store * 1000:.0f} ms",
        f"{big_mb:.0f} MB (1920x1080 at input size 518); per piece, in the store thread",
    )

    interior = make_units(100 * stitch.STRIDE * UNIT_WINDOWS, "window", UNIT_WINDOWS)[1]
    extra = interior.computed_frames - interior.produced_frames  # the first window's re-encoded overlap
    units = [u for u in run["single"]["units"] if u["status"] == "done"]
    frame_s = sum(u["seconds"] for u in units) / sum(u["computed_frames"] for u in units)
    cases = [("here", f"CPU, input size {args.input_size}", claim_s + small_s, frame_s)]
    if big_s is not None:
        gpu = f"GPU at {PUBLISHED_VITS_MS} ms/frame (vits fp16, A100, published), {args.seek_size} decode"
        cases.append(("GPU, decoder started at the unit", gpu, claim_s + big_s, PUBLISHED_VITS_MS / 1000))
        cases.append(("GPU, decoded one unit ahead (vda)", gpu, claim_s + big_ahead, PUBLISHED_VITS_MS / 1000))
    section(
        f"    unit size: the device waits claim + decode start per unit, and re-encodes {extra} overlap frames; "
        f"default UNIT_WINDOWS={UNIT_WINDOWS} ({UNIT_WINDOWS * stitch.STRIDE} frames), target {args.target:.0%}"
    )
    for name, what, wait_s, frame_s in cases:
        window_ms = stitch.STRIDE * frame_s * 1000
        at_default = unit_overhead(extra, wait_s, frame_s, UNIT_WINDOWS)
        wait_only = wait_s / (UNIT_WINDOWS * stitch.STRIDE * frame_s)
        k = justified(extra, wait_s, frame_s, args.target)
        row(
            f"{name}: overhead at {UNIT_WINDOWS} windows",
            f"{at_default:.1%}",
            f"{what}: {window_ms:.0f} ms per window, wait {wait_s * 1000:.0f} ms per unit ({wait_only:.1%} "
            f"without the overlap)",
        )
        row(
            f"{name}: unit size for <= {args.target:.0%}",
            f"{k} windows",
            f"{k * stitch.STRIDE} frames; default {UNIT_WINDOWS} windows",
        )


def computed_over_produced(args) -> None:
    section("    frames computed / frames produced at the default unit sizes")
    lengths = sorted({args.frames, args.videos * args.frames, 100_000})
    for mode in ("window", "stream"):
        size = default_unit_size(mode)
        ratios = []
        for n in lengths:
            units = make_units(n, mode, size, STREAM_WARMUP)
            ratios.append(f"{sum(u.computed_frames for u in units) / sum(u.produced_frames for u in units):.3f} at {n}")
        unit = make_units(100_000, mode, size, STREAM_WARMUP)[1]
        what = (
            f"{size} windows ({size * stitch.STRIDE} frames)"
            if mode == "window"
            else f"{size} frames, warm-up {STREAM_WARMUP}"
        )
        bound = "; README bound 1.25" if mode == "stream" else ""
        row(
            f"{mode} mode, unit {what}",
            f"{unit.computed_frames / unit.produced_frames:.4f}",
            f"per unit after the first ({unit.computed_frames}/{unit.produced_frames}); whole video: "
            f"{', '.join(ratios)} frames{bound}",
        )


# -- record ----------------------------------------------------------------------------------------------------------
def record(args) -> None:
    setup = (
        f"Load average {load()} at the end. `vda depth` local backend, --devices {args.devices}, {args.size} x264, "
        f"input size {args.input_size}, {args.format}, --merge-workers {args.merge_workers or 'default'}; "
        f"{args.videos} videos of {args.frames} frames; decode start on {args.seek_size or '-'} GOP {args.gop}."
    )
    append_results("bench_queue.py", setup, ("figure", "value", "note"), ROWS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=20, help="short videos in the batch of (a)")
    ap.add_argument("--frames", type=int, default=100, help="frames per short video")
    ap.add_argument("--devices", default="cpu,cpu")
    ap.add_argument("--size", default="128x72", help="frame size of the clips of (a) and (c)")
    ap.add_argument("--input-size", type=int, default=56)
    ap.add_argument("--format", default="png16")
    ap.add_argument("--merge-workers", type=int, help="vda depth --merge-workers (default: vda's, the usable cores)")
    ap.add_argument("--seek-size", default="1920x1080", help="frame size of the decode-start clip ('' to skip)")
    ap.add_argument("--gop", type=int, default=250, help="keyframe interval of the decode-start clip")
    ap.add_argument("--target", type=float, default=0.1, help="overhead a unit may add to its compute")
    ap.add_argument("--record", action="store_true", help="append the figures to bench/RESULTS.md")
    args = ap.parse_args()
    print(
        f"{os.cpu_count()} cores, torch {torch.__version__}, synthetic vits weights; load average {load()} (other "
        "processes on the machine slow every figure)"
    )
    with tempfile.TemporaryDirectory(prefix="vda-bench-queue-") as tmp:
        tmp = Path(tmp)
        ckpt = synthetic_checkpoint(tmp / "ckpt")
        run = many_against_one(tmp, ckpt, args)
        per_unit_overhead(tmp, ckpt, run, args)
        computed_over_produced(args)
        merge_latency(run, args)
        shutil.rmtree(tmp / "batch", ignore_errors=True)
    print(f"load average at the end {load()}")
    if args.record:
        record(args)


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"({time.time() - t0:.0f} s)")
