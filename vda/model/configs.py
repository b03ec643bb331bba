"""The three published sizes of Video Depth Anything, and the constants the published weights fix."""

from __future__ import annotations

from dataclasses import dataclass

from vda.core.preprocess import PATCH

PRETRAIN_GRID = 37  # DINOv2 was trained at 518 = 37 * 14; pos_embed holds 37 * 37 + 1 entries
POS_OFFSET = 0.1  # DINOv2's interpolation offset, kept for numerical parity with the published models
TEMPORAL_LEN = 32  # length of the temporal positional table in the motion modules


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

__all__ = ["PATCH", "ModelConfig", "CONFIGS"]
