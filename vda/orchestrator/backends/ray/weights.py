"""The weights of a run: put in the object store once by the driver, fetched once per node into a node-local cache.

No actor reads the checkpoint from the driver's disk, and a node with several devices fetches it once.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from vda.core.plan import Plan
from vda.files import write_atomic
from vda.orchestrator.backends.ray.cluster import ray_module

CACHE_DIR = "vda-ray"  # the node-local weights cache, under the node's temporary folder

# (sha256, [ObjectRef]): the ref in a list, so that an actor given it fetches the bytes only when it asks for them
Weights = tuple[str, list]


def ship_weights(plan: Plan, checkpoint: str | None) -> Weights:
    """Put the run's checkpoint in the object store, once; nodes fetch it from there (see `cached_weights`)."""
    from vda.model.registry import find, local_file, resolve

    s = plan.settings
    if checkpoint:
        path = Path(checkpoint)
    else:
        path = local_file(find(s.encoder, s.metric)) or resolve(s.encoder, s.metric, download=False)
    return s.checkpoint_sha256, [ray_module().put(np.memmap(path, dtype=np.uint8, mode="r"))]


def cached_weights(sha: str, refs: list) -> tuple[Path, bool]:
    """The run's checkpoint on this node, and whether it was fetched now: from the object store into a node-local
    cache, once per node. The cache is per user (a shared node's other users own theirs), and a cached file whose
    hash is not the run's (damaged, cut short) is fetched again."""
    from vda.files import file_sha256

    path = Path(tempfile.gettempdir()) / f"{CACHE_DIR}-{os.getuid()}" / f"{sha}.pth"
    if path.is_file() and file_sha256(path) == sha:
        return path, False
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, memoryview(ray_module().get(refs[0])))
    return path, True
