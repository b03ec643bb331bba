"""torch features newer than the floor pyproject.toml declares, found by feature detection with fallbacks.

Only torch 2.13 (a CPU build) installs here, so each fallback is tested by hiding the newer attribute
(tests/test_gpu_logic.py). Asked at call time, not at import, so that a test can hide an attribute.
"""

from __future__ import annotations

import contextlib

import torch


def out_of_memory_error(module=None) -> type[BaseException]:
    """torch.OutOfMemoryError (torch 2.5 and newer, any device), else torch.cuda.OutOfMemoryError (1.13 and newer)."""
    module = module or torch
    return getattr(module, "OutOfMemoryError", None) or module.cuda.OutOfMemoryError


@contextlib.contextmanager
def ieee_fp32(backends=None):
    """fp32 that is fp32 on CUDA: torch runs fp32 convolutions through cuDNN in TF32 by default on Ampere and newer
    (a 10-bit mantissa), which alone moves depth by more than the 1e-4 parity we hold CUDA fp32 to against CPU fp32.
    Newer torch says so with `fp32_precision = "ieee"`; older torch with `allow_tf32 = False`. Process-wide flags,
    so they are restored on exit."""
    backends = backends or torch.backends
    conv, matmul = getattr(backends.cudnn, "conv", None), backends.cuda.matmul
    if hasattr(conv, "fp32_precision") and hasattr(matmul, "fp32_precision"):
        flags = [(conv, "fp32_precision"), (matmul, "fp32_precision")]
        value = "ieee"
    else:
        flags = [(backends.cudnn, "allow_tf32"), (matmul, "allow_tf32")]
        value = False
    saved = [getattr(owner, name) for owner, name in flags]
    for owner, name in flags:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for (owner, name), old in zip(flags, saved):
            setattr(owner, name, old)


def dynamo_recompile_limit(dynamo_config=None) -> int | None:
    """How many graphs dynamo keeps per compiled function before it falls back to eager: `recompile_limit` in newer
    torch, `cache_size_limit` before; None when neither is there."""
    if dynamo_config is None:
        try:
            import torch._dynamo.config as dynamo_config
        except ImportError:
            return None
    for name in ("recompile_limit", "cache_size_limit"):
        value = getattr(dynamo_config, name, None)
        if isinstance(value, int):
            return value
    return None


def free_device_memory(device: torch.device, cuda=None) -> None:
    """Give the blocks cached by torch's allocator back to the device after an out-of-memory, before a retry.
    `cuda` is torch.cuda; tests pass a fake (no GPU here)."""
    if device.type == "cuda":
        (cuda or torch.cuda).empty_cache()


OOM_ERROR = out_of_memory_error()  # the class an out of memory raises, on this torch
