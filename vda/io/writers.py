"""Output formats for depth maps, their metadata, and atomic file writes.

Every file appears under its final name only when complete: written to a temporary name in the same
folder, then renamed. png16/png8 store the depth quantised to a per-video range that
`depth_meta.json` records, so the float values can be recovered.
"""

from __future__ import annotations

import errno
import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2  # cv2 reads OPENCV_IO_ENABLE_OPENEXR at import: vda/__init__.py sets it first
import numpy as np

from vda.errors import InputError, StorageError, UsageError
from vda.io.pngenc import encode_gray

FORMATS = {"png16": ".png", "png8": ".png", "npy": ".npy", "npz": ".npz", "exr": ".exr"}
LEVELS = {"png16": 65535, "png8": 255}
# Uncompressed float: depth maps upsampled from network resolution barely compress losslessly (bench_stages.py,
# 1080p: ZIP 4.1 frames/s for 7.80 MB, none 65 frames/s for 8.31 MB).
EXR_PARAMS = [
    cv2.IMWRITE_EXR_TYPE,
    cv2.IMWRITE_EXR_TYPE_FLOAT,
    cv2.IMWRITE_EXR_COMPRESSION,
    cv2.IMWRITE_EXR_COMPRESSION_NO,
]
META_NAME = "depth_meta.json"
META_SCHEMA = 1


class DepthFolderError(InputError, FileNotFoundError):
    """A folder written by `vda merge` that is missing, incomplete or from another version."""


class DiskFullError(StorageError, OSError):
    """No space left while writing; nothing partial is left under a final name."""


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a hidden temporary name in the same folder, then rename: readers never see a partial file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            full = DiskFullError(f"disk full while writing {path}; free space and run the same command again to resume")
            full.errno = err.errno
            raise full from None
        if isinstance(err, OSError):
            raise StorageError(
                f"cannot write {path} ({err.strerror or err}); choose a folder you can write to, with free space"
            ) from err
        raise


def write_json(path: Path, obj) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def frame_digits(frame_count: int) -> int:
    """Digits of a video's frame names: 6, and 7 from a million frames on (more from ten million), so that the names
    of one video all have one width and sort in frame order."""
    return max(6, len(str(frame_count)))


def frame_name(index: int, fmt: str, frame_count: int = 0) -> str:
    """The file of frame `index` of a video of `frame_count` frames (see frame_digits)."""
    return f"depth_{index:0{frame_digits(frame_count)}d}{FORMATS[fmt]}"


def quantize(depth: np.ndarray, lo: float, hi: float, levels: int) -> np.ndarray:
    dtype = np.uint16 if levels > 255 else np.uint8
    if hi - lo <= 0:
        return np.zeros(depth.shape, dtype)
    q = np.subtract(depth, lo, dtype=np.float32)  # in place from here: one 1080p frame is 8 MB per temporary
    q *= levels / (hi - lo)
    np.rint(q, out=q)
    np.clip(q, 0, levels, out=q)
    return q.astype(dtype)


def dequantize(stored: np.ndarray, lo: float, hi: float, levels: int) -> np.ndarray:
    return (lo + stored.astype(np.float64) * ((hi - lo) / levels)).astype(np.float32)


def encode(depth: np.ndarray, fmt: str, lo: float = 0.0, hi: float = 1.0) -> bytes:
    """One depth map as the bytes of a file in `fmt`."""
    if fmt in LEVELS:
        return encode_gray(quantize(depth, lo, hi, LEVELS[fmt]))
    if fmt in ("npy", "npz"):
        out = io.BytesIO()
        if fmt == "npy":
            np.save(out, depth.astype(np.float32))
        else:
            np.savez_compressed(out, depth=depth.astype(np.float32))
        return out.getvalue()
    if fmt == "exr":
        ok, buf = cv2.imencode(".exr", depth.astype(np.float32), EXR_PARAMS)
        if not ok:
            raise StorageError("encoding an exr frame failed; write png16 or npy instead (--format)")
        return buf.tobytes()
    raise UsageError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


@dataclass
class DepthMeta:
    """How to read the stored values back as floats, and what produced them."""

    format: str
    frame_count: int
    fps: str
    width: int
    height: int
    encoder: str
    metric: bool
    quantization: dict = field(default_factory=dict)  # png: {"lo", "hi", "levels"}: value = lo + q * (hi-lo)/levels
    settings: dict = field(default_factory=dict)
    schema_version: int = META_SCHEMA
    pattern: str = ""
    meaning: str = ""

    def __post_init__(self):
        self.pattern = self.pattern or f"depth_{{index:0{frame_digits(self.frame_count)}d}}{FORMATS[self.format]}"
        self.meaning = self.meaning or (
            "metric depth in metres" if self.metric else "relative inverse depth (disparity): larger is closer, no unit"
        )

    def save(self, out_dir: Path) -> None:
        write_json(out_dir / META_NAME, asdict(self))

    @classmethod
    def load(cls, out_dir: Path) -> DepthMeta:
        path = Path(out_dir) / META_NAME
        if not path.is_file():
            raise DepthFolderError(f"{path} is missing; point at a folder written by `vda merge`")
        again = "write the folder again with `vda merge`, or point at another one"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise DepthFolderError(f"{path} cannot be read ({type(err).__name__}); {again}") from None
        if not isinstance(data, dict) or data.get("schema_version") != META_SCHEMA:
            found = data.get("schema_version") if isinstance(data, dict) else None
            raise DepthFolderError(f"{path}: schema version {found} is not {META_SCHEMA}; {again}")
        try:
            return cls(**data)
        except TypeError:
            raise DepthFolderError(f"{path} does not hold the fields of schema {META_SCHEMA}; {again}") from None


def read_depth(out_dir: Path, index: int, meta: DepthMeta) -> np.ndarray:
    """Frame `index` of a merged output as float32, through the quantisation recorded in the meta."""
    path = Path(out_dir) / frame_name(index, meta.format, meta.frame_count)
    if meta.format in LEVELS:
        stored = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if stored is None:
            raise DepthFolderError(f"cannot read {path}; write it again with `vda merge`")
        q = meta.quantization
        return dequantize(stored, q["lo"], q["hi"], q["levels"])
    if meta.format == "exr":
        data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if data is None:
            raise DepthFolderError(f"cannot read {path}; write it again with `vda merge`")
        return data.astype(np.float32)
    if meta.format == "npz":
        with np.load(path) as z:
            return z["depth"]
    return np.load(path)


def colorize(depth: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """RGB uint8 visualisation (inferno, as the authors' videos)."""
    gray = quantize(depth, lo, hi, 255)
    return cv2.cvtColor(cv2.applyColorMap(gray, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)
