"""The registry of published Video Depth Anything checkpoints; weights are placed here, never committed."""

from models.registry import CHECKPOINTS, Checkpoint, WeightsError, find, resolve

__all__ = ["CHECKPOINTS", "Checkpoint", "WeightsError", "find", "resolve"]
