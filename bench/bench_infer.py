"""Frames/s and peak memory of `infer_video` (and of one model forward) on the device present.

    python bench/bench_infer.py --encoder vits --input-size 518 --precision fp32 --frames 64
    python bench/bench_infer.py ... --reference /path/to/Video-Depth-Anything   # also time the authors' forward

Frames are synthetic 1920x1080 RGB unless --video is given. Weights are made on the spot by `vda.model.synth` unless
--checkpoint is given: speed and memory do not depend on the values.
With --reference, the authors' model (from a checkout of their repository, not part of this project) runs
the same forward on the same input and weights, and the ratio is printed.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import subprocess
import sys
import time
import types
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from vda.core.preprocess import network_shape
from vda.device.single_pass import infer_video
from vda.model.configs import CONFIGS
from vda.model.network import load_model
from vda.model.synth import save_checkpoint, synth_state_dict

ROOT = Path(__file__).resolve().parents[1]


def synthetic_state(encoder: str) -> dict:
    return synth_state_dict(encoder, 0)


def synthetic_checkpoint(folder: Path, encoder: str = "vits") -> Path:
    """The synthetic weights saved under the published file name, for runs through the CLI."""
    return save_checkpoint(folder, encoder, 0)


def depth_cmd(video, out, checkpoint, devices: str, *extra: str) -> list[str]:
    """`vda depth` with the local backend, as the benchmarks run it."""
    return [
        sys.executable,
        "-m",
        "vda.cli.main",
        "depth",
        str(video),
        "-o",
        str(out),
        "--devices",
        devices,
        "--checkpoint",
        str(checkpoint),
        *extra,
    ]


def append_results(script: str, setup: str, columns: tuple[str, str, str], rows: list[tuple[str, str, str]]) -> None:
    """Append a table of (name, value, note) rows to bench/RESULTS.md, under the script's name, the date, the commit
    and the machine, followed by `setup` (what the figures were measured on)."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    lines = [
        f"\n## {script}, {datetime.date.today()}, commit {commit.strip()}\n",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {device}, "
        f"torch {torch.__version__}. {setup}\n",
        f"| {' | '.join(columns)} |",
        "|---|---:|---|",
    ]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    with open(ROOT / "bench" / "RESULTS.md", "a") as fh:
        fh.write("\n".join(lines) + "\n")


def sliding_frames(n: int, width: int, height: int, shift: int, block: int = 1) -> Iterator[np.ndarray]:
    """Random blocks sliding sideways by `shift` pixels a frame, made lazily: deterministic content for benchmarks,
    whose speed and memory do not depend on it."""
    rng = np.random.RandomState(0)
    base = rng.randint(0, 255, (height // block, width // block, 3), dtype=np.uint8).repeat(block, 0).repeat(block, 1)
    return (np.roll(base, shift * i, axis=1) for i in range(n))


def write_x264(path: Path, frames: Iterable[np.ndarray], fps: int = 30, gop: int | None = None) -> Path:
    """Encode RGB frames with x264 (yuv420p) through PyAV, one at a time; `gop` sets the keyframe interval."""
    import av

    with av.open(str(path), "w") as c:
        s = None
        for frame in frames:
            if s is None:
                s = c.add_stream("libx264", rate=fps)
                s.height, s.width = frame.shape[:2]
                s.pix_fmt = "yuv420p"
                if gop:
                    s.options = {"g": str(gop), "keyint_min": str(gop)}
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def synthetic_video(path: Path, n: int, width: int, height: int, block: int = 1, shift: int = 3) -> Path:
    """An x264 clip of random blocks sliding sideways: real decoding work, deterministic content."""
    return write_x264(path, sliding_frames(n, width, height, shift, block))


def frames_source(args):
    if args.video:
        from vda.io.decode import read_frames
        from vda.io.probe import probe

        info = probe(args.video)
        n = min(args.frames, info.frame_count)
        return [f for _, f in read_frames(info, range(n))]
    return list(sliding_frames(args.frames, args.width, args.height, shift=7))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(model, x: torch.Tensor, device: torch.device, precision: str, repeats: int) -> float:
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        model(x)  # warm-up
        sync(device)
        t = time.perf_counter()
        for _ in range(repeats):
            model(x)
        sync(device)
    return (time.perf_counter() - t) / repeats


def reference_model(path: Path, encoder: str, state: dict):
    """The authors' VideoDepthAnything from a checkout (torchvision is only used there for Compose)."""
    if "torchvision" not in sys.modules:
        tv, tr = types.ModuleType("torchvision"), types.ModuleType("torchvision.transforms")
        tr.Compose = object
        tv.transforms = tr
        sys.modules.update({"torchvision": tv, "torchvision.transforms": tr})
    sys.path.insert(0, str(path))
    from video_depth_anything.video_depth import VideoDepthAnything  # type: ignore[import-not-found]

    cfg = CONFIGS[encoder]
    ref = VideoDepthAnything(encoder=encoder, features=cfg.features, out_channels=list(cfg.out_channels))
    ref.load_state_dict(state, strict=True)
    return ref.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", default="vits", choices=list(CONFIGS))
    ap.add_argument("--input-size", type=int, default=518)
    ap.add_argument("--precision", default=None, choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--mode", default="window", choices=["window", "stream"])
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--micro-batch", type=int)
    ap.add_argument("--video")
    ap.add_argument("--checkpoint")
    ap.add_argument("--reference", help="checkout of the authors' repository, to time their forward too")
    ap.add_argument("--forward-repeats", type=int, default=2)
    args = ap.parse_args()
    device = torch.device(args.device)
    precision = args.precision or ("fp16" if device.type == "cuda" else "fp32")
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True) if args.checkpoint else None
    state = state or synthetic_state(args.encoder)
    model = load_model(state, encoder=args.encoder, device=device)
    frames = frames_source(args)
    h, w = frames[0].shape[:2]
    net = network_shape(h, w, args.input_size)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{args.encoder} {args.mode} {precision}, {len(frames)} frames {w}x{h} -> network {net[1]}x{net[0]}")

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    n = sum(
        1
        for _ in infer_video(
            model,
            frames,
            input_size=args.input_size,
            mode=args.mode,
            precision=precision,
            device=device,
            micro_batch=args.micro_batch,
        )
    )
    sync(device)
    dt = time.perf_counter() - t
    print(f"infer_video: {n / dt:.2f} frames/s ({dt:.1f} s for {n} frames), peak RSS {peak_rss_mb():.0f} MB")
    if device.type == "cuda":
        print(f"peak VRAM {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")

    x = torch.randn(1, 32, 3, *net, device=device)
    ours = time_forward(model, x, device, precision, args.forward_repeats)
    print(f"forward [1, 32, 3, {net[0]}, {net[1]}]: ours {ours:.2f} s")
    if args.reference:
        ref = reference_model(Path(args.reference), args.encoder, state).to(device)
        theirs = time_forward(ref, x, device, precision, args.forward_repeats)
        with torch.inference_mode():
            diff = (model(x[:, :8]) - ref(x[:, :8])).abs().max().item()
        print(
            f"forward reference {theirs:.2f} s; ours/reference time ratio {ours / theirs:.2f}; "
            f"max |ours - ref| on 8 frames {diff:.2e}"
        )


if __name__ == "__main__":
    main()
