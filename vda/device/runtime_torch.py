"""The torch runtime: the network as a torch module, under autocast, its encoder and window head compiled when asked."""

from __future__ import annotations

import contextlib

import torch

from vda.device.compat import ieee_fp32
from vda.device.runtime import PRECISIONS, Network, UnsupportedDevice, same_device
from vda.model.network import VideoDepthAnything


class TorchNetwork(Network):
    """`model` on `device`. Compiled, the encoder and the window head each run one graph per network shape."""

    def __init__(self, model: VideoDepthAnything, device: torch.device, compile: bool = False):
        self.model, self.device, self.compile = model, torch.device(device), compile
        self._encoder = torch.compile(model.pretrained, dynamic=False) if compile else None
        self._head = torch.compile(model.head, dynamic=False) if compile else None

    @property
    def metric(self) -> bool:
        return self.model.config.metric

    def encode(self, x: torch.Tensor, micro_batch: int | None = None) -> list[torch.Tensor]:
        """Compiled, every batch has exactly `micro_batch` frames: the last is padded with copies of its last frame
        and the padding's features dropped, so one graph serves 22 new frames, 32 at the start and fewer at the end.
        Frames are independent, so neither compiling nor padding changes a result."""
        if self._encoder is None:
            return self.model.encode(x, micro_batch)
        step = micro_batch or x.shape[0]  # stream mode encodes one frame at a time: its fixed shape is 1
        parts = []
        for i in range(0, x.shape[0], step):
            batch = x[i : i + step]
            pad = step - batch.shape[0]
            if pad:
                batch = torch.cat([batch, batch[-1:].expand(pad, *batch.shape[1:])])
            parts.append([level[: step - pad] for level in self._encoder(batch)])
        return [torch.cat(level) for level in zip(*parts)]

    def decode(self, feats, grid, frames, cache=None, micro_batch=None):
        """The head compiled only for windows (32 frames, no cache: one graph per video); stream mode stays eager."""
        head = self._head if cache is None and frames > 1 else None
        return self.model.decode(feats, grid, frames, cache, micro_batch, head)

    def check_device(self, device: torch.device, asked: str) -> None:
        weights = next(self.model.parameters()).device
        current = torch.cuda.current_device() if device.type == "cuda" else None
        if not same_device(weights, device, current):
            raise UnsupportedDevice(f"model is on {weights} but device={device}; load it with device={asked!r}")

    def exact(self) -> TorchNetwork:
        return self if not self.compile else TorchNetwork(self.model, self.device)

    def autocast(self, precision: str):
        """autocast for fp16/bf16; fp32 on CUDA is true fp32 (ieee_fp32: no TF32 convolutions)."""
        if precision == "fp32":
            return ieee_fp32() if self.device.type == "cuda" else contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=PRECISIONS[precision])
