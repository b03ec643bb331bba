"""The ONNX graphs of Video Depth Anything: what each one computes, its names, and how it is exported.

Each graph is a thin module over `VideoDepthAnything`, so that it computes what the torch model computes, with fixed
input and output names:

| graph | inputs | outputs | torch |
|---|---|---|---|
| window | frames [1, 32, 3, H, W] | depth [1, 32, H, W] | `model(frames)` |
| encoder | frames [n, 3, H, W] (n dynamic) | features_0..3, each [n, h*w, D] | `model.encode(frames)` |
| head | features_0..3, each [32, h*w, D] | depth [32, H, W] | `model.decode(feats, grid, 32)[0]` |
| stream_first | features_0..3, each [1, h*w, D] | depth [1, H, W], fresh_0..7 | `model.decode(feats, grid, 1)` |
| stream | features_0..3 [1, ...], cache_0..7 [S_k, 31, C_k] | depth [1, H, W], fresh_0..7 | `.. cache=cache)` |

(h, w) = (H / 14, W / 14). The two stream graphs are stream mode's head: the first frame has no cache, every later
frame sees 31 cached frames (vda's StreamCache: frame 0 twice, then the 29 latest).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from vda.core.preprocess import PATCH
from vda.core.stitch import ALIGN, WINDOW
from vda.model.network import VideoDepthAnything

OPSET = 20  # the dynamo exporter's default with torch 2.13; pinned so that an upgrade cannot change it unseen
LEVELS = 4  # encoder feature levels the head reads
CACHE_ENTRIES = 8  # 4 temporal modules x 2 attention blocks, each caching its input tokens
STREAM_CONTEXT = WINDOW - 1  # cached frames a stream frame attends to (StreamCache.context: 31)
FEATURES = [f"features_{i}" for i in range(LEVELS)]
CACHE = [f"cache_{i}" for i in range(CACHE_ENTRIES)]
FRESH = [f"fresh_{i}" for i in range(CACHE_ENTRIES)]
GRAPHS = ("window", "encoder", "head", "stream_first", "stream")
assert ALIGN == 2 and STREAM_CONTEXT == 31, "the stream cache layout the stream graph is exported for"


class WindowGraph(nn.Module):
    """The whole model on one window: frames [1, 32, 3, H, W] -> depth [1, 32, H, W]."""

    def __init__(self, model: VideoDepthAnything):
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.model(frames)


class EncoderGraph(nn.Module):
    """frames [n, 3, H, W] -> the 4 feature levels, each [n, h*w, D] (frames are independent)."""

    def __init__(self, model: VideoDepthAnything):
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # model.encode without a micro-batch is exactly this; its loop over the batch would fix n in the graph
        return tuple(self.model.pretrained(frames))


class HeadGraph(nn.Module):
    """A window's features, 4 x [32, h*w, D] -> depth [32, H, W] (the fresh cache of a window is not output: window
    mode never reads it, and at 518x924 it would be 300 MB per window)."""

    def __init__(self, model: VideoDepthAnything, grid: tuple[int, int]):
        super().__init__()
        self.model, self.grid = model, grid

    def forward(self, f0, f1, f2, f3) -> torch.Tensor:
        depth, _ = self.model.decode([f0, f1, f2, f3], self.grid, WINDOW)
        return depth


class StreamGraph(nn.Module):
    """One frame's features (4 x [1, h*w, D]) and, unless `first`, the cache (8 x [S_k, 31, C_k]) -> depth [1, H, W]
    and the frame's 8 fresh cache entries [S_k, 1, C_k]."""

    def __init__(self, model: VideoDepthAnything, grid: tuple[int, int], first: bool):
        super().__init__()
        self.model, self.grid, self.first = model, grid, first

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats, cache = list(tensors[:LEVELS]), list(tensors[LEVELS:]) or None
        depth, fresh = self.model.decode(feats, self.grid, 1, cache=None if self.first else cache)
        return (depth, *fresh)


def grid_of(shape: tuple[int, int]) -> tuple[int, int]:
    return shape[0] // PATCH, shape[1] // PATCH


def build(name: str, model: VideoDepthAnything, shape: tuple[int, int], example: dict) -> tuple[nn.Module, tuple, dict]:
    """(module, example inputs, export keywords) of graph `name` at network shape (H, W); `example` holds the
    reference tensors (vda.model.onnx_check.Reference) the inputs are taken from."""
    grid = grid_of(shape)
    feats = example["feats"]
    if name == "window":
        return WindowGraph(model), (example["frames"],), {"input_names": ["frames"], "output_names": ["depth"]}
    if name == "encoder":
        n = torch.export.Dim("n", min=1, max=1024)
        names = {"input_names": ["frames"], "output_names": FEATURES, "dynamic_shapes": ({0: n},)}
        return EncoderGraph(model), (example["frames"][0, :2],), names
    if name == "head":
        return HeadGraph(model, grid), tuple(feats), {"input_names": FEATURES, "output_names": ["depth"]}
    one = tuple(level[:1] for level in feats)
    names = {"output_names": ["depth", *FRESH]}
    if name == "stream_first":
        return StreamGraph(model, grid, True), one, {**names, "input_names": FEATURES}
    if name == "stream":
        cache = tuple(example["context"])
        return StreamGraph(model, grid, False), one + cache, {**names, "input_names": FEATURES + CACHE}
    raise ValueError(f"unknown graph {name!r}; one of {', '.join(GRAPHS)}")


def export_graph(module: nn.Module, args: tuple, path: Path, **names) -> None:
    """torch.onnx.export through the dynamo exporter into one self-contained file (weights inside: every graph of the
    published models is under protobuf's 2 GB); its progress lines and warnings about torchvision ops go nowhere."""
    quiet = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module.eval(), args, str(path), dynamo=True, opset_version=OPSET, external_data=False, **names
            )
    finally:
        quiet.setLevel(level)
