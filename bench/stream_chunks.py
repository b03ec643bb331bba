"""How far stream mode cut into queue units is from a single stream pass, as a function of the warm-up length.

Stream mode carries a cache through the whole video, so a unit that starts mid-video rebuilds it from
frame 0 plus `warmup` preceding frames. This prints max and mean |units - single| / max |single| per
warm-up, and the error at the first frame of each unit after the first (the seam).

    python bench/stream_chunks.py [--video V] [--frames 150] [--unit-size 50] [--input-size 126] [--checkpoint PATH]

The run is planned as `vda depth --mode stream --unit-size N` plans it
(vda.orchestrator.planning.create_plan), its units are computed in this process (vda.device.worker.work_runs,
as `vda work RUN_DIR` does) and merged to npy.

Without --video it encodes a synthetic clip (random blocks sliding sideways) on the spot. Without --checkpoint it
uses the synthetic vits weights of `vda.model.synth` (the real weights cannot be downloaded on the build machines); the
figures then describe the mechanism, not the published model's accuracy.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_infer import synthetic_checkpoint, synthetic_video

from vda.device.serve import work_runs
from vda.device.single_pass import infer_video
from vda.io.decode import read_frames
from vda.io.probe import probe
from vda.io.writers import read_depth
from vda.merge import merge
from vda.model.network import load_model
from vda.orchestrator.planning import create_plan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", help="a real clip (RESULTS.md's table used Tokyo-Walk_rgb.mp4); default: synthetic")
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--unit-size", type=int, default=50, help="frames per stream unit (vda's default is 400)")
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

        from vda.core.video_info import fit_max_res

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
        print(f"{-(-n // args.unit_size)} stream units of {args.unit_size} frames")
        print("warmup  max_rel_err  mean_rel_err  seam_max_rel_err")
        for warm in args.warmups:
            run = tmp / f"run{warm}"
            plan, _ = create_plan(
                frames_dir,
                run,
                checkpoint=str(ckpt),
                input_size=args.input_size,
                mode="stream",
                unit_size=args.unit_size,
                stream_warmup=warm,
            )
            work_runs([str(run)], "cpu", checkpoint=str(ckpt))
            meta = merge(run, tmp / f"out{warm}", "npy", workers=1, log=lambda *_: None)
            out = np.stack([read_depth(tmp / f"out{warm}", i, meta) for i in range(n)])
            err = np.abs(out - single).max(axis=(1, 2)) / scale
            seams = [u.span[0] for u in plan.units[1:]] or [0]  # one unit: no seam, frame 0 stands in
            print(f"{warm:6d}  {err.max():11.2e}  {err.mean():12.2e}  {max(err[s] for s in seams):16.2e}")


if __name__ == "__main__":
    main()
