"""The check every exported graph passes before it gets its final name: ONNX Runtime on the CPU against torch.

One torch reference per export (`reference`): random frames [1, 32, 3, H, W], their encoder features and the
window's depth and fresh cache entries, computed once; each graph is then run by ONNX Runtime on inputs taken from it
and compared to what torch computed from the same inputs. The error is the largest absolute difference over the
reference's range (max - min), per output; `tolerance` (1e-4) bounds it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vda.core.stitch import WINDOW
from vda.model.network import VideoDepthAnything
from vda.model.onnx_graphs import CACHE, FEATURES, STREAM_CONTEXT, grid_of

TOLERANCE = 1e-4
SEED = 0
# The head's full-resolution tail is per frame, so micro-batching it changes no value beyond rounding; in one batch a
# 518x924 window's tail holds several GB, in batches of 4 a few hundred MB.
MICRO_BATCH = 4


def reference(model: VideoDepthAnything, shape: tuple[int, int]) -> dict:
    """Torch's outputs on random frames at network shape (H, W), in fp32 on the CPU: frames [1, 32, 3, H, W], feats
    4 x [32, h*w, D], depth [32, H, W] (what forward computes), context 8 x [S_k, 31, C_k] (the window's fresh
    entries of its first 31 frames: a stream cache whose frames differ), and the two stream frames' outputs."""
    g = torch.Generator().manual_seed(SEED)
    frames = torch.randn(1, WINDOW, 3, *shape, generator=g)  # ImageNet-normalised values are of this order
    grid = grid_of(shape)
    with torch.inference_mode():
        feats = model.encode(frames[0], MICRO_BATCH)
        depth, fresh = model.decode(feats, grid, WINDOW, micro_batch=MICRO_BATCH)
        context = [entry[:, :STREAM_CONTEXT].contiguous() for entry in fresh]
        first = model.decode([level[:1] for level in feats], grid, 1)
        later = model.decode([level[:1] for level in feats], grid, 1, cache=context)
    clone = lambda ts: [t.clone() for t in ts]  # noqa: E731 (inference tensors cannot be exported from; clones can)
    return {
        "frames": frames,
        "feats": clone(feats),
        "depth": depth.clone(),
        "context": clone(context),
        "stream_first": [first[0].clone(), *clone(first[1])],
        "stream": [later[0].clone(), *clone(later[1])],
    }


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| over want's range (max - min); an infinite error where shapes differ or values are not
    finite."""
    if got.shape != want.shape or not np.isfinite(got).all():
        return float("inf")
    span = float(want.max() - want.min()) or 1.0
    return float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max() / span)


def cpu_session(path: Path):
    """An ONNX Runtime session of the graph at `path` on the CPU provider."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = False  # a session runs once or twice here: the arena would only raise the peak
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def feeds_and_expected(name: str, ref: dict) -> tuple[dict[str, np.ndarray], list[np.ndarray], str]:
    """ORT inputs of graph `name` taken from the reference, the outputs torch computed from them, and a label."""
    feats = [f.numpy() for f in ref["feats"]]
    one = {n: f[:1] for n, f in zip(FEATURES, feats)}
    if name == "window":
        return {"frames": ref["frames"].numpy()}, [ref["depth"].numpy()[None]], "window of 32 frames"
    if name == "encoder":  # two batch sizes: the batch dimension is dynamic
        return {"frames": ref["frames"][0, :3].numpy()}, [f[:3] for f in feats], "encoder on 3 frames"
    if name == "head":
        return dict(zip(FEATURES, feats)), [ref["depth"].numpy()], "head on a window's features"
    if name == "stream_first":
        return one, [t.numpy() for t in ref["stream_first"]], "stream head, first frame"
    if name == "stream":
        cache = {n: c.numpy() for n, c in zip(CACHE, ref["context"])}
        return {**one, **cache}, [t.numpy() for t in ref["stream"]], "stream head with a 31-frame cache"
    raise ValueError(f"unknown graph {name!r}")


def check_graph(name: str, path: Path, ref: dict) -> tuple[float, str]:
    """(largest relative error over the outputs, what was compared) of ONNX Runtime's CPU run of graph `name`."""
    feeds, expected, label = feeds_and_expected(name, ref)
    session = cpu_session(path)
    errors = []
    if name == "encoder":  # one frame, then two: both batch sizes against torch's per-frame features
        for part in (slice(0, 1), slice(1, 3)):
            got = session.run(None, {"frames": feeds["frames"][part]})
            errors += [relative_error(g, e[part]) for g, e in zip(got, expected)]
    else:
        got = session.run(None, feeds)
        errors = [relative_error(g, e) for g, e in zip(got, expected)]
    return max(errors), label
