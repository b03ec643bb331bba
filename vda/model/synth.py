"""Deterministic synthetic checkpoints in the published Video Depth Anything layout.

Real checkpoints cannot be downloaded where the tests and most benchmarks run, and speed, memory and the exactness
of the split do not depend on the values of the weights. So tests, `bench/` and `make gpu-check` make their weights
here, on the spot, from nothing but this file and our own model definition:

- the tensor names and shapes are those of our module tree, which `tests/test_model.py` checks against the published
  layout (`tests/data/checkpoint_layout.json`);
- every tensor is drawn from a NumPy `RandomState` seeded by `(seed, crc32(name))`, so the same `(encoder, seed)`
  gives the same bits on every machine and in every key order;
- the value rules keep activations in a useful range (the last bias keeps the final ReLU mostly active).

This is the generator that made the reference outputs in `tests/data/` (`seed=0`, `vits`); `tests/test_synth.py`
checks its digest, so a change here that would invalidate them cannot pass unnoticed.

    state = synth_state_dict("vits", seed=0)                    # dict[str, torch.Tensor], float32
    save_checkpoint(folder, "vits")                             # folder/video_depth_anything_vits.pth

Synthetic frames live here too (`synthetic_scene`), for the same users: procedural footage, no third-party video.
"""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

import numpy as np
import torch

from vda.errors import UsageError
from vda.model.configs import CONFIGS, ModelConfig
from vda.model.network import VideoDepthAnything

SEED_STRIDE = 1_000_003  # a prime: (seed, name) pairs of different seeds do not collide for any realistic seed
OUTPUT_BIAS = 3.0  # the last conv's bias: keeps the final ReLU mostly active, so depth maps are not mostly zero


def layout(encoder: str) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of the published checkpoint for `encoder`, read off our own module tree."""
    if encoder not in CONFIGS:
        raise UsageError(f"unknown encoder {encoder!r}; choose one of {', '.join(CONFIGS)}")
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = VideoDepthAnything(ModelConfig(**CONFIGS[encoder].__dict__))
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def tensor_values(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """float32 values of one tensor; pure in (name, shape, seed)."""
    rng = np.random.RandomState((seed * SEED_STRIDE + zlib.crc32(name.encode())) % 2**32)
    z = rng.standard_normal(shape)  # always drawn first, whatever the rule below uses
    leaf = name.rsplit(".", 1)[-1]
    if name.endswith("output_conv2.2.bias"):
        values = np.full(shape, OUTPUT_BIAS)
    elif leaf == "pe":  # temporal positional tables
        values = 0.1 * z
    elif leaf in ("cls_token", "pos_embed", "mask_token"):
        values = 0.02 * z
    elif leaf == "gamma":  # layer scale
        values = 0.1 + 0.02 * z
    elif leaf == "bias":
        values = 0.02 * z
    elif len(shape) == 1:  # norm weights
        values = 1.0 + 0.1 * z
    else:  # fan-in scaling keeps activations of order one through the blocks
        values = z / np.sqrt(np.prod(shape[1:]))
    return values.astype(np.float32)


def synth_state_dict(encoder: str = "vits", seed: int = 0) -> dict[str, torch.Tensor]:
    """A full state dict for `encoder` (relative and metric checkpoints share the layout)."""
    return {name: torch.from_numpy(tensor_values(name, shape, seed)) for name, shape in layout(encoder).items()}


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names, shapes and bytes in name order: equal digests mean bit-identical weights."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(folder: str | Path, encoder: str = "vits", seed: int = 0, *, metric: bool = False) -> Path:
    """The synthetic weights under the published file name, written atomically (never a half-written .pth)."""
    prefix = "metric_" if metric else ""
    path = Path(folder) / f"{prefix}video_depth_anything_{encoder}.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    torch.save(synth_state_dict(encoder, seed), tmp)
    tmp.replace(path)
    return path


def synthetic_scene(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A panning camera over a textured ground plane under a sky, with two moving discs: uint8 [n, H, W, 3].

    Smooth areas, edges and perspective, so that depth maps vary as on real footage (noise would give nearly flat
    maps). The frames of the reference outputs in tests/data were made by this function (n=70, 72x128, seed 0), and
    `make gpu-check` encodes its test video from it.
    """
    rng = np.random.RandomState(seed)
    texture = rng.uniform(0.0, 1.0, (64, 64))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    horizon = 0.35 * height
    frames = np.empty((n, height, width, 3), np.uint8)
    for t in range(n):
        img = np.empty((height, width, 3))
        sky = np.clip(1.0 - yy / horizon, 0, 1)
        img[..., 0], img[..., 1], img[..., 2] = 0.5 + 0.3 * sky, 0.6 + 0.3 * sky, 0.9
        ground = yy > horizon
        dist = 1.0 / np.maximum(yy - horizon, 1.0)  # perspective: rows near the horizon are far away
        u = ((xx - width / 2) * dist * 40 + t * 0.7) % 64
        v = (dist * 400 + t * 0.5) % 64
        tex = texture[v.astype(int) % 64, u.astype(int) % 64]  # x % 64 of a tiny negative x rounds to 64.0
        shade = 0.3 + 0.7 * (1 - np.exp(-(yy - horizon) / (0.3 * height)))
        for c, gain in enumerate((0.45, 0.55, 0.25)):
            img[..., c] = np.where(ground, gain * shade * (0.6 + 0.4 * tex), img[..., c])
        discs = ((0.3, 0.7, 0.16, 0.9, (0.9, 0.2, 0.1)), (0.7, 0.5, 0.09, -0.6, (0.2, 0.3, 0.9)))
        for cx, cy, r, speed, colour in discs:  # centre x, y and radius (fractions of the frame), px/frame, RGB
            x0 = (cx * width + speed * t) % width
            d2 = ((xx - x0) ** 2 + (yy - cy * height) ** 2) / (r * height) ** 2
            disc = d2 < 1
            light = 0.5 + 0.5 * np.sqrt(np.clip(1 - d2, 0, 1))
            for c in range(3):
                img[..., c] = np.where(disc, colour[c] * light, img[..., c])
        noise = rng.normal(0, 0.01, (height, width, 3))
        frames[t] = np.clip((img + noise) * 255 + 0.5, 0, 255).astype(np.uint8)
    return frames
