"""A fast grayscale PNG encoder for depth maps (8 and 16 bit).

Why not libpng through OpenCV: at 1080p it writes about 10 frames/s per core (bench_stages.py), because it
tries every row filter and deflates with zlib. Depth maps are smooth, so one fixed filter ("Up": each byte
minus the byte above) costs little size, is a single vectorised numpy subtraction, and leaves deflate as the
only real work; ISA-L's deflate (python-isal) does that several times faster than zlib. The files are
standard PNGs that libpng, ffmpeg and every viewer read.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from vda.errors import UsageError

try:  # ISA-L's deflate: the speed of this module. zlib gives the same files' format, about 6x slower.
    from isal import isal_zlib as _deflate

    DEFLATE = "isal"
except ImportError:  # pragma: no cover - isal ships wheels for the platforms we target
    _deflate = zlib
    DEFLATE = "zlib"

SIGNATURE = b"\x89PNG\r\n\x1a\n"
FILTER_UP = 2
DEFAULT_LEVEL = 1  # bench_stages.py, 1080p png16: isal level 1 is the fastest and 23% smaller than level 0
MAX_CHUNK = (1 << 31) - 1  # the PNG spec's limit on one chunk's data


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))


def filter_up(image: np.ndarray) -> np.ndarray:
    """The PNG scanlines of a 2-D uint8/uint16 image: [H, 1 + W * bytes], filter byte then the row, Up-filtered.

    16-bit samples are big-endian in PNG; Up works on bytes (mod 256), so each byte column is filtered alone.
    """
    rows = image.astype(">u2" if image.dtype.itemsize == 2 else np.uint8, copy=False)  # any byte order in
    rows = np.ascontiguousarray(rows).view(np.uint8).reshape(image.shape[0], -1)  # [H, W * bytes]
    out = np.empty((rows.shape[0], rows.shape[1] + 1), np.uint8)
    out[:, 0] = FILTER_UP
    out[0, 1:] = rows[0]  # the row above the first is zeros: Up leaves it as is
    np.subtract(rows[1:], rows[:-1], out=out[1:, 1:])  # uint8 arithmetic wraps mod 256, as PNG wants
    return out


def encode_gray(image: np.ndarray, level: int = DEFAULT_LEVEL) -> bytes:
    """A 2-D uint8 or uint16 array as the bytes of a grayscale PNG of the same bit depth."""
    if image.ndim != 2 or image.dtype.kind != "u" or image.dtype.itemsize > 2 or 0 in image.shape:
        raise ValueError(f"encode_gray takes a non-empty 2-D uint8/uint16 array, got {image.dtype} {image.shape}")
    height, width = image.shape
    bits = 8 * image.dtype.itemsize
    data = _deflate.compress(filter_up(image), level)
    if len(data) > MAX_CHUNK:
        raise UsageError(f"a {width}x{height} image is too large for one PNG data chunk; write npy or exr instead")
    header = struct.pack(">IIBBBBB", width, height, bits, 0, 0, 0, 0)  # grayscale, deflate, adaptive, no interlace
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")
