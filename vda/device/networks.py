"""The runners' one door to a model: what a caller holds, as the `Network` that computes one network shape.

A torch module runs in the torch runtime; an object with `network_for(shape, precision)` (the ONNX runtime's model,
whose graphs are exported per shape) makes its own; a `Network` is used as it is.
"""

from __future__ import annotations

from vda.device.runtime import Network, Runtime
from vda.device.runtime_torch import TorchNetwork


def as_network(model, runtime: Runtime, shape: tuple[int, int]) -> Network:
    """`model` as the Network computing frames of network `shape` (h, w) with `runtime`'s settings."""
    if isinstance(model, Network):
        return model
    if hasattr(model, "network_for"):
        return model.network_for(shape, runtime.precision)
    return TorchNetwork(model, runtime.device, runtime.compile)
