"""Export a Video Depth Anything checkpoint to ONNX at one network size, checked before it gets its final name.

    export_onnx(path, out, shape=(518, 924), graphs=GRAPHS)  # out/window.onnx, encoder.onnx, ..., model.json

Contract: every graph is exported, then run by ONNX Runtime on the CPU and compared to the torch model on random
frames (vda.model.onnx_check: relative max error over the depth range <= 1e-4), all in a temporary folder beside
`out`, which is renamed to `out` only once everything passed: a failed export leaves nothing under the final name.
The stream graphs are optional: if they do not export or do not match, model.json says `"stream": false` (and why)
and the rest of the export stands. Refusals are one line each: a size that is not a multiple of 14, a checkpoint that
does not match `encoder`, an existing `out` without `overwrite`.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from vda.core import stitch
from vda.core.preprocess import MEAN, PATCH, STD
from vda.errors import RunError, StorageError, UsageError, one_line
from vda.files import file_sha256
from vda.model import registry
from vda.model.network import CheckpointError, infer_encoder, load_model, read_state_dict
from vda.model.onnx_check import TOLERANCE, check_graph, reference
from vda.model.onnx_graphs import GRAPHS, OPSET, build, export_graph

SCHEMA = 1  # model.json's layout; a reader refuses another
MODEL_JSON = "model.json"
STREAM_GRAPHS = ("stream_first", "stream")
RUNTIME_GRAPHS = ("encoder", "head", *STREAM_GRAPHS)  # what vda.device.runtime_onnx runs (window.onnx: other programs)
VERSIONED = ("torch", "onnx", "onnxruntime", "onnxscript")


class ExportRefused(UsageError):
    """An export that cannot be made as asked; the message names the problem and the fix."""


class ExportMismatch(RunError):
    """An exported graph that ONNX Runtime does not run as torch does: nothing is written under the final name."""


@dataclass(frozen=True)
class ExportResult:
    folder: Path
    meta: dict  # model.json
    seconds: float  # export and check, from the loaded checkpoint to the final rename


def versions() -> dict[str, str]:
    """The versions that make a graph what it is (the export cache's key holds them)."""
    from vda import __version__

    found = {}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "absent"
    return {**found, "vda": __version__}


def check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    """(H, W) when both are positive multiples of 14; else one line with the nearest sizes that are."""
    h, w = shape
    if h > 0 and w > 0 and h % PATCH == 0 and w % PATCH == 0:
        return h, w
    near = tuple(max(PATCH, round(v / PATCH) * PATCH) for v in (w, h))
    raise ExportRefused(
        f"network size {w}x{h} is not a multiple of {PATCH} on both sides; use --net-size {near[0]}x{near[1]}, or "
        "--input-size with --aspect W:H, which computes one"
    )


def choose_checkpoint(checkpoint: str | Path | None, encoder: str | None, metric: bool) -> tuple[Path, dict, str]:
    """(path, state dict, encoder) as `vda depth` resolves them; a checkpoint of another encoder than `encoder` is
    refused in one line (its encoder is read from its tensors)."""
    path = registry.resolve(encoder or "vits", metric, checkpoint)
    state = read_state_dict(path)
    found = infer_encoder(state)
    if encoder and found != encoder:
        raise CheckpointError(
            f"checkpoint {path.name} holds a {found} model, not {encoder}; pass --encoder {found}, or a {encoder} "
            "checkpoint"
        )
    return Path(path), state, found


def model_json(encoder: str, metric: bool, shape: tuple[int, int], sha256: str, checks: dict, stream: str) -> dict:
    """model.json: what the graphs are, what they expect, and what made them (`stream` empty: the stream graphs
    exported exactly; else why they are absent)."""
    return {
        "schema": SCHEMA,
        "encoder": encoder,
        "metric": metric,
        "depth": "metric (metres)" if metric else "relative (affine-invariant inverse depth)",
        "network": {"height": shape[0], "width": shape[1], "patch": PATCH},
        "input": {"layout": "frames [1, 32, 3, H, W] float32 RGB", "scale": 1 / 255, "mean": MEAN, "std": STD},
        "resize": "bicubic, align_corners=False, to the network size (H, W)",
        "opset": OPSET,
        "precision": "fp32",
        "window": {
            "frames": stitch.WINDOW,
            "stride": stitch.STRIDE,
            "overlap": stitch.OVERLAP,
            "keyframe": stitch.KEYFRAME,
            "align": stitch.ALIGN,
            "blend": stitch.BLEND,
            "blend_weights": stitch.blend_weights(),
        },
        "graphs": {name: f"{name}.onnx" for name in checks},
        "stream": not stream,
        **({"stream_note": stream} if stream else {}),
        "check": {"tolerance": TOLERANCE, "max_relative_error": checks},
        "checkpoint_sha256": sha256,
        "versions": versions(),
    }


def read_model_json(folder: Path) -> dict:
    """model.json of an export folder; one line when it is absent or of another schema."""
    path = Path(folder) / MODEL_JSON
    if not path.is_file():
        raise StorageError(f"{folder} holds no {MODEL_JSON}; export it again with `vda export onnx -o {folder}`")
    meta = json.loads(path.read_text())
    if meta.get("schema") != SCHEMA:
        raise StorageError(f"{path} is of schema {meta.get('schema')}, not {SCHEMA}; export it again with this vda")
    return meta


def export_onnx(
    checkpoint: str | Path | None,
    out: str | Path,
    *,
    shape: tuple[int, int],
    encoder: str | None = None,
    metric: bool = False,
    overwrite: bool = False,
    graphs: tuple[str, ...] = GRAPHS,
    tolerance: float = TOLERANCE,
) -> ExportResult:
    """Export `graphs` of the checkpoint at network shape (H, W) into folder `out`, each checked against torch, with
    model.json; written in a temporary folder beside `out` and renamed (see the module's contract)."""
    shape = check_shape(tuple(shape))
    out = Path(out)
    if out.exists() and not overwrite:
        raise ExportRefused(f"{out} exists; pass --overwrite to replace it, or choose another -o")
    path, state, encoder = choose_checkpoint(checkpoint, encoder, metric)
    sha256 = file_sha256(path)
    start = time.perf_counter()
    model = load_model(state, encoder=encoder, metric=metric)
    del state
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.part-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        checks, stream = export_checked(model, shape, tmp, graphs, tolerance)
        meta = model_json(encoder, metric, shape, sha256, checks, stream)
        (tmp / MODEL_JSON).write_text(json.dumps(meta, indent=2) + "\n")
        publish(tmp, out, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(out, meta, time.perf_counter() - start)


def export_checked(model, shape: tuple[int, int], folder: Path, graphs, tolerance: float) -> tuple[dict, str]:
    """Export and check each graph into `folder`: ({graph: max relative error}, why the stream graphs are absent, or
    "" when they exported exactly). A graph other than the stream ones that fails its check raises ExportMismatch."""
    ref = reference(model, shape)
    checks: dict[str, float] = {}
    stream = "" if set(STREAM_GRAPHS) <= set(graphs) else "not exported (not asked for)"
    for name in graphs:
        if name in STREAM_GRAPHS and stream:
            continue
        path = folder / f"{name}.onnx"
        try:
            module, args, names = build(name, model, shape, ref)
            export_graph(module, args, path, **names)
            error, label = check_graph(name, path, ref)
        except Exception as err:  # the exporter and ORT raise many kinds; a stream graph may fail, the others not
            if name not in STREAM_GRAPHS:
                what = one_line(err)[:200]
                raise ExportMismatch(f"{name}.onnx did not export ({type(err).__name__}: {what}); report it") from err
            stream = f"{name} did not export: {type(err).__name__}"
            continue
        if error <= tolerance:
            checks[name] = error
        elif name in STREAM_GRAPHS:
            stream = f"{name}: ONNX Runtime differs from torch by {error:.2e} of the depth range (> {tolerance:g})"
        else:
            raise ExportMismatch(
                f"{name}.onnx: ONNX Runtime on the CPU differs from torch by {error:.2e} of the range ({label}, "
                f"tolerance {tolerance:g}); nothing was written; report it with the versions of torch and onnxscript"
            )
    if stream:
        for name in STREAM_GRAPHS:
            checks.pop(name, None)
            (folder / f"{name}.onnx").unlink(missing_ok=True)
    return checks, stream


def publish(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished folder `tmp` to `out`; with `overwrite`, the old `out` is moved aside first and removed
    after, so that `out` is never a half-written mix. Another exporter that published `out` first wins the race."""
    old = None
    if out.exists() and overwrite:
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError as err:
        if not (out / MODEL_JSON).is_file():
            raise StorageError(f"could not move the export into {out} ({err.strerror}); check the folder") from err
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
