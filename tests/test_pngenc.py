"""The PNG encoder against two independent real decoders: libpng (through OpenCV) and ffmpeg (through PyAV)."""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest

from vda.io.pngenc import encode_gray
from vda.io.writers import encode, quantize

SHAPES = [(1, 1), (1, 7), (5, 1), (37, 53), (64, 48)]


def libpng_decode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def ffmpeg_decode(path) -> np.ndarray:
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        if frame.format.name.startswith("gray16"):
            return frame.to_ndarray(format="gray16le")
        return frame.to_ndarray(format="gray")


def random_image(shape, dtype, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    img = rng.integers(0, top, size=shape, endpoint=True).astype(dtype)
    img.flat[0], img.flat[-1] = 0, top  # both extremes present
    return img


@pytest.mark.parametrize("dtype", [np.uint16, np.uint8])
@pytest.mark.parametrize("shape", SHAPES)
def test_libpng_reads_back_every_value(shape, dtype):
    img = random_image(shape, dtype)
    got = libpng_decode(encode_gray(img))
    assert got.dtype == dtype and got.shape == shape
    assert np.array_equal(got, img)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint8])
def test_ffmpeg_reads_back_every_value(tmp_path, dtype):
    img = random_image((37, 54), dtype, seed=1)  # ffmpeg's decoder: an even width keeps every pixel format happy
    path = tmp_path / "x.png"
    path.write_bytes(encode_gray(img))
    assert np.array_equal(ffmpeg_decode(path), img)


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_every_level_is_lossless_on_a_smooth_depth_map(level):
    y, x = np.mgrid[0:270, 0:480].astype(np.float32)
    depth = 1.0 + np.sin(x / 50.0) * np.cos(y / 70.0) + (x > 240) * 0.5  # smooth with one edge, as depth maps are
    q = quantize(depth, float(depth.min()), float(depth.max()), 65535)
    assert np.array_equal(libpng_decode(encode_gray(q, level)), q)


def test_same_pixels_as_opencvs_own_png_at_1080p():
    rng = np.random.default_rng(2)
    small = rng.random((68, 120), np.float32)
    depth = cv2.resize(small, (1920, 1080), interpolation=cv2.INTER_LINEAR)  # upsampled, as the merge writes them
    ours = libpng_decode(encode(depth, "png16", 0.0, 1.0))
    ok, theirs = cv2.imencode(".png", quantize(depth, 0.0, 1.0, 65535))
    assert ok and np.array_equal(ours, libpng_decode(theirs.tobytes()))


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 4, 3), np.uint8),
        np.zeros((4, 4), np.float32),
        np.zeros((0, 4), np.uint16),
        np.zeros((4, 4), np.uint32),
    ],
)
def test_refuses_what_is_not_a_grayscale_image(bad):
    with pytest.raises(ValueError, match="2-D uint8/uint16"):
        encode_gray(bad)


def test_quantize_of_a_flat_range_is_zero_even_for_nan():
    depth = np.array([[np.nan, 1.0], [2.0, np.inf]], np.float32)
    assert not quantize(depth, 1.0, 1.0, 65535).any()


@pytest.mark.parametrize("dtype", [np.uint16, np.uint8])
def test_strided_views_and_big_endian_input_encode_the_same_pixels(dtype):
    img = random_image((40, 90), dtype, seed=3)
    view = img[::2, ::3]  # not contiguous
    assert np.array_equal(libpng_decode(encode_gray(view)), view)
    swapped = img.astype(img.dtype.newbyteorder(">"))  # same values, the other byte order
    assert np.array_equal(libpng_decode(encode_gray(swapped)), img)
