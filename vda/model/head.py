"""The temporal DPT head: motion modules (temporal attention over a window, or one frame and its cache) between
DPT's fusion blocks. Names follow the published checkpoints."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vda.core.preprocess import PATCH
from vda.model.configs import TEMPORAL_LEN, ModelConfig


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
