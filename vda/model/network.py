"""Video Depth Anything: a DINOv2 ViT encoder and a DPT head with temporal motion modules.

Layout: configs, then encoder blocks, then temporal blocks, then the head, then the model, then
checkpoint validation (`checkpoint_filter_fn`) and `load_model`. Module and parameter names follow
the published checkpoints so that they load unchanged with strict key matching.

The model holds weights and configuration only. Per-video state (the streaming cache) lives in
`vda.pipeline.inference`, so one loaded model can serve any number of videos, also concurrently.
"""

from __future__ import annotations

import math
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vda.errors import WeightsError

PATCH = 14
PRETRAIN_GRID = 37  # DINOv2 was trained at 518 = 37 * 14; pos_embed holds 37 * 37 + 1 entries
POS_OFFSET = 0.1  # DINOv2's interpolation offset, kept for numerical parity with the published models
TEMPORAL_LEN = 32  # length of the temporal positional table in the motion modules


# --------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    encoder: str
    embed_dim: int
    depth: int
    num_heads: int
    layer_idx: tuple[int, int, int, int]  # encoder blocks whose outputs feed the head
    features: int
    out_channels: tuple[int, int, int, int]
    metric: bool = False


CONFIGS: dict[str, ModelConfig] = {
    "vits": ModelConfig("vits", 384, 12, 6, (2, 5, 8, 11), 64, (48, 96, 192, 384)),
    "vitb": ModelConfig("vitb", 768, 12, 12, (2, 5, 8, 11), 128, (96, 192, 384, 768)),
    "vitl": ModelConfig("vitl", 1024, 24, 16, (4, 11, 17, 23), 256, (256, 512, 1024, 1024)),
}


class CheckpointError(WeightsError):
    """A checkpoint that cannot be used; the message says why and what to do."""


# --------------------------------------------------------------------------------------------------
# DINOv2 encoder
# --------------------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=PATCH, stride=PATCH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, 3, H, W] -> [B, h*w, D]


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # [B, heads, N, C/heads]
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


def interpolate_pos_embed(pos_embed: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """Resample the 37x37 table to a grid_h x grid_w patch grid.

    DINOv2 passes a scale factor with a 0.1 offset rather than a target size, and the sampling
    positions depend on that choice; we do the same so that non-square inputs match exactly.
    """
    n = pos_embed.shape[1] - 1
    if grid_h * grid_w == n and grid_h == grid_w:
        return pos_embed
    side = math.isqrt(n)
    dtype = pos_embed.dtype
    table = pos_embed.float()
    patch = table[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)  # [1, D, 37, 37]
    scale = ((grid_h + POS_OFFSET) / side, (grid_w + POS_OFFSET) / side)
    patch = F.interpolate(patch, scale_factor=scale, mode="bicubic", antialias=False)
    if patch.shape[-2:] != (grid_h, grid_w):
        raise ValueError(f"positional grid {tuple(patch.shape[-2:])} != patch grid {(grid_h, grid_w)}")
    patch = patch.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)  # [1, h*w, D]
    return torch.cat((table[:, :1], patch), dim=1).to(dtype)


class DinoV2(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        dim = cfg.embed_dim
        self.layer_idx = cfg.layer_idx
        self.patch_embed = PatchEmbed(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, PRETRAIN_GRID * PRETRAIN_GRID + 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))  # unused at inference; part of the published layout
        self.blocks = nn.ModuleList(Block(dim, cfg.num_heads) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Normalised patch tokens of the four layers the head reads: 4 x [B, h*w, D]."""
        _, _, H, W = x.shape
        tokens = self.patch_embed(x)  # [B, h*w, D]
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        tokens = tokens + interpolate_pos_embed(self.pos_embed, H // PATCH, W // PATCH)
        out = []
        for i, block in enumerate(self.blocks):
            tokens = block(tokens)
            if i in self.layer_idx:
                out.append(self.norm(tokens)[:, 1:])
        return out


# --------------------------------------------------------------------------------------------------
# Temporal motion modules
# --------------------------------------------------------------------------------------------------


def sinusoid_table(length: int, dim: int) -> torch.Tensor:
    """The temporal positional encoding [1, length, dim], made on the CPU and put on the default device.

    Made on the CPU whatever the default device: under `torch.device("meta")` (the planner's layout check) each op
    goes through torch's decompositions, whose first use imports torch._dynamo, 2.3 s of every `vda depth`'s start
    (2-core build machine). The checkpoint overwrites the table, so where it is computed changes no output.
    """
    cpu = torch.device("cpu")
    position = torch.arange(length, device=cpu).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2, device=cpu) * (-math.log(10000.0) / dim))
    pe = torch.zeros(1, length, dim, device=cpu)
    pe[0, :, 0::2] = torch.sin(position * div)
    pe[0, :, 1::2] = torch.cos(position * div)
    return pe.to(torch.empty(0).device)  # the default device: torch.get_default_device() ignores `with` before 2.8


class PositionalEncoding(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("pe", sinusoid_table(TEMPORAL_LEN, dim))  # overwritten by the checkpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[:, : x.shape[1]].to(x.dtype)


class TemporalAttention(nn.Module):
    """Self-attention along time at every spatial position.

    With a cache, only the newest frame is queried; keys and values span the cached frames too.
    Returns the output and this call's input tokens (before the positional encoding), which is what
    the streaming cache keeps.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
        self.pos_encoder = PositionalEncoding(dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # [N, L, C] -> [N, heads, L, C/heads]

    def forward(self, x: torch.Tensor, frames: int, cache: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        BT, S, C = x.shape
        B = BT // frames
        x = x.reshape(B, frames, S, C).transpose(1, 2).reshape(B * S, frames, C)  # [(B S), T, C]
        fresh = x
        if cache is not None:
            x = torch.cat((cache, x), dim=1)  # [(B S), T_cache + T, C]
        x = self.pos_encoder(x)
        q = self._split(self.to_q(x[:, x.shape[1] - frames :]))
        k, v = self._split(self.to_k(x)), self._split(self.to_v(x))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B * S, frames, C)
        out = self.to_out[0](out)
        out = out.reshape(B, S, frames, C).transpose(1, 2).reshape(BT, S, C)  # back to [(B T), S, C]
        return out, fresh


class GEGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, 4 * dim), nn.Identity(), nn.Linear(4 * dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class TemporalBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attention_blocks = nn.ModuleList(TemporalAttention(dim, heads) for _ in range(2))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(2))
        self.ff = FeedForward(dim)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x, frames, cache):
        fresh = []
        for i, (attn, norm) in enumerate(zip(self.attention_blocks, self.norms)):
            out, tokens = attn(norm(x), frames, cache[i] if cache is not None else None)
            x = x + out
            fresh.append(tokens)
        return x + self.ff(self.ff_norm(x)), fresh


class TemporalTransformer(nn.Module):
    def __init__(self, dim: int, heads: int = 8, groups: int = 32):
        super().__init__()
        self.norm = nn.GroupNorm(groups, dim, eps=1e-6)
        self.proj_in = nn.Linear(dim, dim)
        self.transformer_blocks = nn.ModuleList([TemporalBlock(dim, heads)])
        self.proj_out = nn.Linear(dim, dim)

    def forward(self, x, frames, cache):
        BT, C, h, w = x.shape
        y = self.norm(x).permute(0, 2, 3, 1).reshape(BT, h * w, C)  # [(B T), h*w, C]
        y = self.proj_in(y)
        y, fresh = self.transformer_blocks[0](y, frames, cache)
        y = self.proj_out(y).reshape(BT, h, w, C).permute(0, 3, 1, 2)  # [(B T), C, h, w]
        return x + y, fresh


class TemporalModule(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.temporal_transformer = TemporalTransformer(dim)

    def forward(self, x, frames, cache=None):
        return self.temporal_transformer(x, frames, cache)


# --------------------------------------------------------------------------------------------------
# DPT head
# --------------------------------------------------------------------------------------------------


class ResidualConvUnit(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None, size=None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class TemporalDPTHead(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        dim, f, oc = cfg.embed_dim, cfg.features, cfg.out_channels
        self.projects = nn.ModuleList(nn.Conv2d(dim, c, 1) for c in oc)
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(oc[0], oc[0], kernel_size=4, stride=4),
                nn.ConvTranspose2d(oc[1], oc[1], kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(oc[3], oc[3], kernel_size=3, stride=2, padding=1),
            ]
        )
        scratch = nn.Module()
        for i, c in enumerate(oc, start=1):
            setattr(scratch, f"layer{i}_rn", nn.Conv2d(c, f, 3, padding=1, bias=False))
        for i in range(1, 5):
            setattr(scratch, f"refinenet{i}", FusionBlock(f))
        scratch.output_conv1 = nn.Conv2d(f, f // 2, 3, padding=1)
        scratch.output_conv2 = nn.Sequential(
            nn.Conv2d(f // 2, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 1, 1), nn.ReLU()
        )
        self.scratch = scratch
        self.motion_modules = nn.ModuleList(TemporalModule(c) for c in (oc[2], oc[3], f, f))

    def forward(self, feats, grid, frames, cache=None, micro_batch=None):
        """feats: 4 x [(B T), h*w, D]. Returns depth [(B T), 1, 14h, 14w] and the 8 fresh cache tensors."""
        gh, gw = grid
        layers = []
        for x, project, resize in zip(feats, self.projects, self.resize_layers):
            x = x.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)  # [(B T), D, h, w]
            layers.append(resize(project(x)))
        l1, l2, l3, l4 = layers
        mm = self.motion_modules
        c = (lambda i: cache[2 * i : 2 * i + 2]) if cache is not None else (lambda i: None)
        l3, h0 = mm[0](l3, frames, c(0))
        l4, h1 = mm[1](l4, frames, c(1))
        s = self.scratch
        r1, r2, r3, r4 = s.layer1_rn(l1), s.layer2_rn(l2), s.layer3_rn(l3), s.layer4_rn(l4)
        p4 = s.refinenet4(r4, size=r3.shape[2:])
        p4, h2 = mm[2](p4, frames, c(2))
        p3 = s.refinenet3(p4, r3, size=r2.shape[2:])
        p3, h3 = mm[3](p3, frames, c(3))
        # The full-resolution tail is per frame; micro-batches bound its memory on long windows.
        step = micro_batch or p3.shape[0]
        out = [
            self._tail(p3[i : i + step], r2[i : i + step], r1[i : i + step], gh, gw) for i in range(0, len(p3), step)
        ]
        return torch.cat(out), h0 + h1 + h2 + h3

    def _tail(self, p3, r2, r1, gh, gw):
        s = self.scratch
        p2 = s.refinenet2(p3, r2, size=r1.shape[2:])
        p1 = s.refinenet1(p2, r1)
        out = F.interpolate(s.output_conv1(p1), (gh * PATCH, gw * PATCH), mode="bilinear", align_corners=True)
        with torch.autocast(device_type=out.device.type, enabled=False):
            return s.output_conv2(out.float())


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


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
