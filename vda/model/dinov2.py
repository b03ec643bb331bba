"""The DINOv2 ViT encoder: per-frame patch tokens, four of its blocks' outputs fed to the head. Names follow the
published checkpoints."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vda.core.preprocess import PATCH
from vda.model.configs import POS_OFFSET, PRETRAIN_GRID, ModelConfig


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
