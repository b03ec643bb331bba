"""Frame preprocessing: the authors' resize rule, bicubic resampling and ImageNet normalisation.

Done in torch so it runs on the inference device, next to the model, instead of on one CPU core.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

PATCH = 14  # DINOv2's patch: the network's input sides are multiples of it


MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
MAX_ASPECT = 1.78  # beyond this the authors shrink input_size so that memory stays that of 16:9


def effective_input_size(height: int, width: int, input_size: int) -> int:
    """input_size after the authors' rule for very wide (or tall) frames."""
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT:
        input_size = int(input_size * 1.777 / ratio)
        input_size = round(input_size / PATCH) * PATCH
    return input_size


def _multiple_of_patch(x: float, min_val: int) -> int:
    y = int(np.round(x / PATCH) * PATCH)  # np.round: half to even, like the reference
    if y < min_val:
        y = int(np.ceil(x / PATCH) * PATCH)
    return y


def network_shape(height: int, width: int, input_size: int) -> tuple[int, int]:
    """(h, w) fed to the network: the short side scaled up to at least input_size, both multiples of 14."""
    size = effective_input_size(height, width, input_size)
    scale = max(size / height, size / width)  # "lower bound": the smaller side reaches `size`
    return _multiple_of_patch(scale * height, size), _multiple_of_patch(scale * width, size)


@functools.lru_cache(maxsize=16)
def normalisation(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and std as [1, 3, 1, 1] tensors on `device`, made once per device.

    Made per call, they cost a blocking host-to-device copy for every frame in stream mode.
    """
    return torch.tensor(MEAN, device=device).view(1, 3, 1, 1), torch.tensor(STD, device=device).view(1, 3, 1, 1)


def preprocess(frames: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """uint8 RGB [N, H, W, 3] (any device) -> normalised float32 [N, 3, h, w] on the same device."""
    x = frames.permute(0, 3, 1, 2).float() / 255.0  # [N, 3, H, W]
    x = F.interpolate(x, size=shape, mode="bicubic", align_corners=False)
    mean, std = normalisation(x.device)
    return (x - mean) / std
