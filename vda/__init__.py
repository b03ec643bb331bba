"""Video Depth Anything over long videos on many devices. The one import name of this project.

The Python API (vda.api, documented in the README): `load_model`, `infer_video`, `run` (the batch `vda depth` runs),
`read` (an output folder as float maps), `VdaError` and `DepthMeta`. They are imported on first use, so that
`import vda` loads neither torch nor cv2.

Sub-packages, from the bottom up (docs/design.md, "Package layout"): `core` (pure math and plan types), `model`
(network, checkpoints, export), `io` (probing, decoding, depth files, run folders), `device` (what runs on a device)
and `merge` (the host's merge), `analysis` and `report`, `orchestrator` (planning, queue, backends) and `cli`.
`config`, `errors`, `events`, `files`, `logs` and `system` are shared by all of them.
"""

import os

os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")  # cv2 reads it once; set before anything imports cv2

from vda.errors import VdaError  # noqa: E402  (light: no imports of its own)

__version__ = "0.1.0"  # pyproject.toml's version (a test holds them equal)
# Public name -> the module it lives in, imported when the name is first used (PEP 562).
_LAZY = {
    "load_model": "vda.api",
    "infer_video": "vda.api",
    "run": "vda.api",
    "read": "vda.api",
    "DepthMeta": "vda.io.writers",
    "DepthFrames": "vda.io.writers",
    "RunResult": "vda.orchestrator.request",
    "VideoResult": "vda.orchestrator.request",
}
__all__ = ["__version__", "VdaError", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'vda' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
