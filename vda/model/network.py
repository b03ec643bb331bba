"""Video Depth Anything: a DINOv2 ViT encoder and a DPT head with temporal motion modules.

The model (`configs` sizes it, `dinov2` and `head` build its parts), then checkpoint validation
(`checkpoint_filter_fn`) and `load_model`. Module and parameter names follow the published checkpoints, so that they
load unchanged with strict key matching. The model holds weights only: per-video state (the stream cache) lives in
`vda.device`, so one loaded model serves any number of videos, also concurrently.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vda.core.preprocess import PATCH
from vda.errors import WeightsError
from vda.model.configs import CONFIGS, ModelConfig
from vda.model.dinov2 import DinoV2
from vda.model.head import TemporalDPTHead


class CheckpointError(WeightsError):
    """A checkpoint that cannot be used; the message says why and what to do."""


class VideoDepthAnything(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.pretrained = DinoV2(cfg)
        self.head = TemporalDPTHead(cfg)

    def encode(self, x: torch.Tensor, micro_batch: int | None = None) -> list[torch.Tensor]:
        """Per-frame encoder features for x [N, 3, H, W]; frames are independent, so micro-batching is exact."""
        step = micro_batch or x.shape[0]
        parts = [self.pretrained(x[i : i + step]) for i in range(0, x.shape[0], step)]
        return [torch.cat(level) for level in zip(*parts)] if len(parts) > 1 else parts[0]

    def decode(self, feats, grid, frames, cache=None, micro_batch=None, head=None):
        """Depth [(B T), 14h, 14w] for features of B clips of `frames` frames, and the fresh cache; `head` is the head
        to run them through (a compiled one; default: self.head)."""
        depth, fresh = (self.head if head is None else head)(feats, grid, frames, cache, micro_batch)
        return F.relu(depth).squeeze(1), fresh

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _, H, W = x.shape
        if H % PATCH or W % PATCH:
            raise ValueError(f"input height and width must be multiples of {PATCH}, got {H}x{W}")
        depth, _ = self.decode(self.encode(x.flatten(0, 1)), (H // PATCH, W // PATCH), T)
        return depth.unflatten(0, (B, T))  # [B, T, H, W]


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------

_ENCODER_BY_DIM = {cfg.embed_dim: name for name, cfg in CONFIGS.items()}


def infer_encoder(state_dict: dict[str, torch.Tensor]) -> str:
    """Encoder name from the checkpoint's embedding width (384, 768, 1024)."""
    pos = state_dict.get("pretrained.pos_embed")
    if pos is None or pos.ndim != 3 or pos.shape[-1] not in _ENCODER_BY_DIM:
        raise CheckpointError(
            "cannot tell the encoder from this checkpoint (no usable pretrained.pos_embed); pass --encoder"
        )
    return _ENCODER_BY_DIM[pos.shape[-1]]


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict[str, torch.Tensor]:
    """Check a published state dict against the model and return it unchanged.

    Pure: every missing, unexpected or misshaped tensor is listed in one CheckpointError, so a user
    with a wrong file sees the whole picture at once instead of the first strict-loading traceback.
    """
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError("checkpoint is not a flat dict of tensors (expected a published .pth state dict)")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    missing = sorted(expected.keys() - got.keys())
    unexpected = sorted(got.keys() - expected.keys())
    misshaped = sorted(f"{k} {got[k]} != {expected[k]}" for k in expected.keys() & got.keys() if got[k] != expected[k])
    if missing or unexpected or misshaped:
        lines = [f"{len(missing)} missing, {len(unexpected)} unexpected, {len(misshaped)} misshaped tensors"]
        for label, items in (("missing", missing), ("unexpected", unexpected), ("misshaped", misshaped)):
            lines += [f"  {label}: {item}" for item in items[:20]] + (
                [f"  ... {len(items) - 20} more"] * (len(items) > 20)
            )
        raise CheckpointError("checkpoint layout does not match the model:\n" + "\n".join(lines))
    return state_dict


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """torch.load with weights_only=True: a pickle that carries code is refused, never executed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}; pass --checkpoint or place it in models/")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since 1.6; the published files are
        raise CheckpointError(
            f"checkpoint {path} is not a PyTorch .pth file (not a zip archive: truncated, or another format); "
            "download it again, or pass the right --checkpoint"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # torch's weights-only unpickler met something other than tensors
        raise CheckpointError(
            f"checkpoint {path} holds Python objects or code besides tensors, so it was not loaded; use a published "
            ".pth file, or save a plain state dict (name -> tensor) of the weights"
        ) from err
    except Exception as err:  # torch raises RuntimeError, EOFError, ... for a damaged archive
        raise CheckpointError(
            f"checkpoint {path} is a damaged PyTorch file ({type(err).__name__}: truncated or corrupt); "
            "download it again, or pass the right --checkpoint"
        ) from err
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict; use another file")
    return state


def load_model(checkpoint, *, encoder: str | None = None, metric: bool = False, device="cpu") -> VideoDepthAnything:
    """Build the model for `checkpoint` (a path or a state dict), load it strictly, return it in eval mode."""
    state = checkpoint if isinstance(checkpoint, dict) else read_state_dict(checkpoint)
    name = encoder or infer_encoder(state)
    if name not in CONFIGS:
        raise CheckpointError(f"unknown encoder {name!r}; choose one of {', '.join(CONFIGS)}")
    cfg = CONFIGS[name]
    model = VideoDepthAnything(ModelConfig(**{**cfg.__dict__, "metric": metric}))
    model.load_state_dict(checkpoint_filter_fn(state, model), strict=True)
    return model.to(torch.device(device)).eval()
