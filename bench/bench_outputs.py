"""What each output choice of issue 24 costs the merge: formats (npy-stack against a file per frame) and sizes (source
against net and a half size), on one stored run at 1920x1080, merged in the calling process (one core).

    VDA_THREADS=1 python bench/bench_outputs.py [--frames 66] [--input-size 126]

The run is computed once at a small network input (the merge does not depend on it beyond the network's shape); each
merge then replays pass 1 and renders every frame. Prints frames/s per core, bytes written, and the ratio to png16 at
the source size (vda's default). Synthetic weights and a synthetic x264 scene.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench_infer import synthetic_checkpoint, synthetic_video

import vda
from vda.core.plan import Plan
from vda.merge import merge

W, H = 1920, 1080
CASES = [
    ("png16", "source"),
    ("npy", "source"),
    ("npy-stack", "source"),
    ("png16", "net"),
    ("npy-stack", "net"),
    ("npy-stack", "960x540"),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=66)
    ap.add_argument("--input-size", type=int, default=126)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        video = synthetic_video(t / "scene.mp4", args.frames, W, H)
        ckpt = synthetic_checkpoint(t / "ckpt")
        run = vda.run(
            video, t / "run", devices="cpu", checkpoint=ckpt, input_size=args.input_size, max_res=0, format="npy"
        )
        assert run.ok, run.videos
        s = Plan.load(t / "run" / "_run").settings
        print(f"{args.frames} frames at {W}x{H}, network {s.net_width}x{s.net_height}, one render process")
        print(f"{'format':<10} {'size':<8} {'frames/s':>9} {'MB':>8} {'time ratio':>11}")
        base = None
        for fmt, size in CASES:
            out = t / f"{fmt}_{size}"
            started = time.perf_counter()
            merge(t / "run" / "_run", out, fmt, workers=1, output_size=size, log=lambda _: None)
            seconds = time.perf_counter() - started
            mb = sum(p.stat().st_size for p in out.iterdir() if p.is_file()) / 1e6
            base = base or seconds
            print(f"{fmt:<10} {size:<8} {args.frames / seconds:9.1f} {mb:8.1f} {seconds / base:11.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
