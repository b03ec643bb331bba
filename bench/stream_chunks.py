"""How far chunked stream mode is from a single stream pass, as a function of the warm-up length.

Stream mode carries a cache through the whole video, so a chunk that starts mid-video rebuilds it from
frame 0 plus `warmup` preceding frames. This prints max and mean |chunked - single| / max |single| per
warm-up, and the error at the first frame of each chunk (the seam).

    python bench/stream_chunks.py [--video V] [--frames 150] [--chunks 3] [--input-size 126] [--checkpoint PATH]

Without --video it encodes a synthetic clip (random blocks sliding sideways) on the spot. Without --checkpoint it
uses the synthetic vits weights of `vda.synth` (the real weights cannot be downloaded on the build machines); the
figures then describe the mechanism, not the published model's accuracy.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_infer import synthetic_checkpoint, synthetic_video

from orchestrator.planning import create_plan
from vda.inference import infer_video
from vda.merge import merge
from vda.model import load_model
from vda.video import probe, read_frames
from vda.worker import run_chunk
from vda.writers import read_depth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", help="a real clip (the README's table used Tokyo-Walk_rgb.mp4); default: synthetic")
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--chunks", type=int, default=3)
    ap.add_argument("--input-size", type=int, default=126)
    ap.add_argument("--max-res", type=int, default=256)
    ap.add_argument("--warmups", type=int, nargs="+", default=[0, 16, 48, 96])
    ap.add_argument("--checkpoint")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = Path(args.checkpoint) if args.checkpoint else synthetic_checkpoint(tmp)
        frames_dir = tmp / "frames"
        frames_dir.mkdir()
        video = args.video or synthetic_video(tmp / "clip.mp4", args.frames, 256, 144, block=8, shift=5)
        info = probe(video)
        import cv2

        from vda.video import fit_max_res

        size = fit_max_res(info.width, info.height, args.max_res)
        for i, f in read_frames(info, range(min(args.frames, info.frame_count)), size):
            cv2.imwrite(str(frames_dir / f"{i:05d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
        n = len(list(frames_dir.iterdir()))
        model = load_model(ckpt)
        sinfo = probe(frames_dir)
        t = time.time()
        single = np.stack(
            list(
                infer_video(
                    model, (f for _, f in read_frames(sinfo, range(n))), input_size=args.input_size, mode="stream"
                )
            )
        )
        print(f"single stream pass: {n} frames at {size[0]}x{size[1]}, {time.time() - t:.1f}s")
        scale = np.abs(single).max()
        print("warmup  max_rel_err  mean_rel_err  seam_max_rel_err")
        for warm in args.warmups:
            run = tmp / f"run{warm}"
            plan, _ = create_plan(
                frames_dir,
                run,
                ["cpu"] * args.chunks,
                checkpoint=str(ckpt),
                input_size=args.input_size,
                mode="stream",
                stream_warmup=warm,
            )
            with contextlib.redirect_stdout(io.StringIO()):  # the workers' @progress lines
                for c in plan.chunks:
                    run_chunk(run, c.index, checkpoint=str(ckpt))
            meta = merge(run, tmp / f"out{warm}", "npy", workers=1, log=lambda *_: None)
            out = np.stack([read_depth(tmp / f"out{warm}", i, meta) for i in range(n)])
            err = np.abs(out - single).max(axis=(1, 2)) / scale
            seams = [c.units[0] for c in plan.chunks[1:]]
            print(f"{warm:6d}  {err.max():11.2e}  {err.mean():12.2e}  {max(err[s] for s in seams):16.2e}")


if __name__ == "__main__":
    main()
