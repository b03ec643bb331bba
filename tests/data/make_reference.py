"""Make `reference_vits_seed0.npz`: the authors' implementation run on our synthetic frames and weights.

    python tests/data/make_reference.py --reference /path/to/Video-Depth-Anything [--out tests/data/...]

`--reference` is a checkout of github.com/DepthAnything/Video-Depth-Anything (not part of this project; it needs
`einops` and `easydict` importable). It runs on CPU in fp32 with `vda.model.synth.synth_state_dict("vits", 0)`:

- `frames`: `vda.model.synth.synthetic_scene(70, 72, 128)`, uint8 [70, 72, 128, 3] RGB, our own procedural footage;
- `forward_out` [1, 32, 70, 126]: one model forward of `forward_input(frames)` (a crop to multiples of 14 and the
  ImageNet normalisation, in float32 numpy, so the tests rebuild the exact input bit for bit);
- `window_out` [70, 72, 128]: the authors' long-video inference (`infer_video_depth`, input size 126);
- `stream_out` [70, 72, 128]: the authors' streaming inference (`infer_video_depth_one`, frame by frame).

Only torchvision's `Compose` is stood in for (a loop over callables), because PyPI's torchvision does not import
beside the CPU build of torch; it does not touch any number.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
N, H, W = 70, 72, 128
INPUT_SIZE = 126


def forward_input(frames: np.ndarray) -> np.ndarray:
    """frames[:32] cropped to multiples of 14 and normalised, float32 [1, 32, 3, 70, 126]; exact in numpy."""
    x = frames[:32, : H // 14 * 14, : (W // 14) * 14].astype(np.float32) / np.float32(255)
    return np.ascontiguousarray(((x - MEAN) / STD).transpose(0, 3, 1, 2)[None])


def _import_reference(checkout: Path):
    if "torchvision" not in sys.modules:  # stand-in for torchvision.transforms.Compose only
        tv, tr = types.ModuleType("torchvision"), types.ModuleType("torchvision.transforms")

        class Compose:
            def __init__(self, steps):
                self.steps = steps

            def __call__(self, sample):
                for step in self.steps:
                    sample = step(sample)
                return sample

        tr.Compose, tv.transforms = Compose, tr
        sys.modules.update({"torchvision": tv, "torchvision.transforms": tr})
    sys.path.insert(0, str(checkout))
    from video_depth_anything.video_depth import VideoDepthAnything
    from video_depth_anything.video_depth_stream import VideoDepthAnything as StreamingVDA

    return VideoDepthAnything, StreamingVDA


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", required=True, type=Path, help="checkout of DepthAnything/Video-Depth-Anything")
    ap.add_argument("--out", type=Path, default=HERE / "reference_vits_seed0.npz")
    args = ap.parse_args()
    from vda.model.synth import state_digest, synth_state_dict, synthetic_scene

    torch.set_num_threads(1)
    batch, stream = _import_reference(args.reference)
    state = synth_state_dict("vits", 0)
    config = {"encoder": "vits", "features": 64, "out_channels": [48, 96, 192, 384]}
    frames = synthetic_scene(N, H, W)
    model = batch(**config).eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        forward_out = model(torch.from_numpy(forward_input(frames))).numpy()
    window_out, _ = model.infer_video_depth(frames, 24, input_size=INPUT_SIZE, device="cpu", fp32=True)
    smodel = stream(**config).eval()
    smodel.load_state_dict(state, strict=True)
    stream_out = np.stack([smodel.infer_video_depth_one(f, INPUT_SIZE, device="cpu", fp32=True) for f in frames])
    meta = {"encoder": "vits", "seed": 0, "input_size": INPUT_SIZE, "metric": False}
    meta["weights_sha256"] = state_digest(state)
    np.savez_compressed(
        args.out,
        frames=frames,
        forward_out=forward_out.astype(np.float32),
        window_out=window_out.astype(np.float32),
        stream_out=stream_out.astype(np.float32),
        meta=json.dumps(meta),
    )
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
