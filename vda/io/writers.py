"""Output formats for depth maps, their metadata, atomic file writes, and reading an output folder back.

Every file appears under its final name only when complete: written to a temporary name in the same
folder, then renamed. png16/png8 store the depth quantised to a per-video range that
`depth_meta.json` records, so the float values can be recovered; metric depth can instead be stored at a fixed
scale (`--png-scale 0.001`: millimetres), the same for every video. `npy-stack` is one [N, H, W] float32 file per
video (STACK_NAME), for a reader that wants one memory map instead of a file per frame.
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
from vda.files import DiskFullError, atomic_file, write_atomic, write_json
from vda.io.pngenc import encode_gray

FORMATS = {"png16": ".png", "png8": ".png", "npy": ".npy", "npz": ".npz", "exr": ".exr", "npy-stack": ".npy"}
LEVELS = {"png16": 65535, "png8": 255}
STACK = "npy-stack"
STACK_NAME = "depth.npy"  # npy-stack: the one [N, H, W] float32 array of a video
OUTPUT_SIZES = ("source", "net")  # --output-size: these, or WxH
VIDEO_KINDS = ("depth", "side-by-side")  # --create-video: colourised depth alone, or beside the RGB frames
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


def frame_digits(frame_count: int) -> int:
    """Digits of a video's frame names: 6, and 7 from a million frames on (more from ten million), so that the names
    of one video all have one width and sort in frame order."""
    return max(6, len(str(frame_count)))


def frame_name(index: int, fmt: str, frame_count: int = 0) -> str:
    """The file of frame `index` of a video of `frame_count` frames (see frame_digits); npy-stack: the video's one
    file, which holds every frame."""
    return STACK_NAME if fmt == STACK else f"depth_{index:0{frame_digits(frame_count)}d}{FORMATS[fmt]}"


def parse_output_size(text: str) -> str:
    """--output-size: "source", "net" or "WxH" (positive whole numbers), checked here and kept as text."""
    if text in OUTPUT_SIZES:
        return text
    w, _, h = text.lower().partition("x")
    if not (w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
        raise UsageError(f"output size {text!r} is not source, net or WIDTHxHEIGHT (e.g. 640x360); give one of these")
    return f"{int(w)}x{int(h)}"


def output_shape(spec: str, frame: tuple[int, int], net: tuple[int, int]) -> tuple[int, int]:
    """(H, W) of the written maps for an --output-size: the frame's (H, W), the network's, or the WxH given."""
    spec = parse_output_size(spec)
    if spec == "source":
        return frame
    if spec == "net":
        return net
    w, h = spec.split("x")
    return int(h), int(w)


def check_png_scale(png_scale: float | None, fmt: str, metric: bool) -> None:
    """A fixed png scale is a unit per stored step: metric png only (relative depth has no unit to fix)."""
    if png_scale is None:
        return
    if fmt not in LEVELS:
        raise UsageError(f"--png-scale applies to png16 and png8, not {fmt}; drop it or choose --format png16")
    if not metric:
        raise UsageError("--png-scale needs metric depth (--metric); relative depth is stored over its own range")
    if not png_scale > 0:
        raise UsageError(f"--png-scale must be above 0 (metres per stored step, 0.001: millimetres), got {png_scale}")


def fixed_range(scale: float, levels: int) -> tuple[float, float]:
    """The [lo, hi] a fixed --png-scale stands for: stored value q means q * scale (lo = 0), up to levels * scale."""
    return 0.0, float(scale) * levels


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


def write_frame(path: Path, depth: np.ndarray, fmt: str, lo: float = 0.0, hi: float = 1.0) -> None:
    """One depth map as a file in `fmt`, atomically. npy goes from the array straight to the file (np.save writes a
    contiguous array with one write), not through encode's in-memory copies; the bytes are encode's."""
    if fmt != "npy":
        write_atomic(path, encode(depth, fmt, lo, hi))
        return
    with atomic_file(path) as fh:
        np.save(fh, np.asarray(depth, dtype=np.float32))


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
        self.pattern = self.pattern or (
            STACK_NAME
            if self.format == STACK
            else f"depth_{{index:0{frame_digits(self.frame_count)}d}}{FORMATS[self.format]}"
        )
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
    if meta.format == STACK:
        return np.array(np.load(path, mmap_mode="r")[index])
    return np.load(path)


class DepthFrames:
    """A merged output folder as float32 maps: `len`, indexing (negative too), iteration, and `.meta`.

    Reads a frame only when asked (png16/png8 dequantised through the meta), so a long video never sits in memory; an
    npy-stack is opened once, as a memory map.
    """

    def __init__(self, out_dir: str | Path):
        self.path = Path(out_dir)
        self.meta = DepthMeta.load(self.path)
        self._stack = np.load(self.path / STACK_NAME, mmap_mode="r") if self.meta.format == STACK else None
        if self._stack is not None and self._stack.shape[0] != self.meta.frame_count:
            raise DepthFolderError(
                f"{self.path / STACK_NAME} holds {self._stack.shape[0]} frames, its meta says {self.meta.frame_count}; "
                "write the folder again with `vda merge`"
            )

    def __len__(self) -> int:
        return self.meta.frame_count

    def __getitem__(self, index: int) -> np.ndarray:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"frame {index} outside 0..{n - 1}")
        index %= n
        if self._stack is not None:
            return np.array(self._stack[index], dtype=np.float32)
        return read_depth(self.path, index, self.meta)

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def create_stack(path: Path, shape: tuple[int, int, int]) -> None:
    """An npy file of float32 zeros of `shape`, its disk space reserved now: a full disk fails here, before the
    merge renders, and each frame is then written once, in place (`write_stack_frames`)."""
    try:
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
        del arr
        with open(path, "r+b") as fh:
            os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)
    except OSError as err:
        path.unlink(missing_ok=True)
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(f"disk full while making {path}; free space and run the same command again") from None
        raise StorageError(f"cannot write {path} ({err.strerror or err}); choose a folder you can write to") from err


def write_stack_frames(path: Path, frames) -> None:
    """Write (index, map) pairs into their rows of an npy file made by `create_stack` (from any process)."""
    arr = np.load(path, mmap_mode="r+")
    for f, depth in frames:
        arr[f] = depth
    arr.flush()


def colorize(depth: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """RGB uint8 visualisation (inferno, as the authors' videos)."""
    gray = quantize(depth, lo, hi, 255)
    return cv2.cvtColor(cv2.applyColorMap(gray, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)
