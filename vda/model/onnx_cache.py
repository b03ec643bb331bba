"""The export cache: the runtime's graphs exported once per checkpoint, network size, precision and versions.

A folder per key under the cache root (default: `onnx/` beside the compile cache of vda.config, so
`~/.cache/vda/onnx`), named `<encoder>-<relative|metric>-<H>x<W>-<precision>-<key>`, where the key is a sha256 over
the checkpoint's sha256 and the versions of torch, onnx, onnxruntime, onnxscript and vda: a changed checkpoint or an
upgraded exporter never finds a stale graph. A folder exists only once complete (vda.model.onnx_export writes beside it
and renames), so a reader never sees a half-written one; two workers that export the same key at once both succeed,
the second finding the first's folder in place.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from vda import config
from vda.errors import WeightsError
from vda.model.onnx_export import (
    MODEL_JSON,
    RUNTIME_GRAPHS,
    ExportRefused,
    check_shape,
    export_onnx,
    file_sha256,
    read_model_json,
    versions,
)

PRECISIONS = ("fp32", "fp16", "bf16")  # the graphs are fp32 for all: the key keeps them apart for when they are not


def cache_root() -> Path:
    """VDA_ONNX_CACHE (default ~/.cache/vda/onnx, beside the compile cache)."""
    return config.current().onnx_cache


def cache_key(sha256: str, encoder: str, metric: bool, shape: tuple[int, int], precision: str) -> str:
    """The folder name of one export: readable fields, then 16 hex digits over everything that changes a graph."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; one of {', '.join(PRECISIONS)}")
    fields = {"checkpoint": sha256, "encoder": encoder, "metric": metric, "shape": list(shape)}
    fields.update(precision=precision, versions=versions())
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    kind = "metric" if metric else "relative"
    return f"{encoder}-{kind}-{shape[0]}x{shape[1]}-{precision}-{digest}"


def cached_export(
    checkpoint: str | Path,
    encoder: str,
    metric: bool,
    shape: tuple[int, int],
    precision: str = "fp32",
    root: Path | None = None,
    sha256: str | None = None,
) -> Path:
    """The folder of the runtime's graphs (encoder, head, stream heads) for this checkpoint and size: found in the
    cache, or exported (and checked) there now. `sha256`: the checkpoint's, when the caller has it (a plan pins it)."""
    shape = check_shape(tuple(shape))
    sha256 = sha256 or file_sha256(Path(checkpoint))
    folder = (root or cache_root()) / cache_key(sha256, encoder, metric, shape, precision)
    if (folder / MODEL_JSON).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        export_onnx(checkpoint, folder, shape=shape, encoder=encoder, metric=metric, graphs=RUNTIME_GRAPHS)
    except ExportRefused:  # another worker published this key since we looked
        if not (folder / MODEL_JSON).is_file():
            raise
    meta = read_model_json(folder)  # ours, or a concurrent exporter's that won the rename
    if meta["checkpoint_sha256"] != sha256:
        raise WeightsError(
            f"checkpoint {checkpoint} changed while it was exported (sha256 {meta['checkpoint_sha256'][:12]}, "
            f"expected {sha256[:12]}); put the planned checkpoint back, or plan again"
        )
    return folder
