"""Long-video inference against the reference, frame counts, and bad frames."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TOL, rel_err, synthetic_frames

from vda.core.preprocess import effective_input_size, network_shape
from vda.device.feed import FrameError
from vda.device.single_pass import infer_video
from vda.device.stream import StreamCache


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["window", "stream"])
def test_matches_reference(model, parity, mode):
    frames = list(parity["frames"])
    out = np.stack(list(infer_video(model, frames, input_size=126, mode=mode)))
    assert out.shape == parity[f"{mode}_out"].shape and out.dtype == np.float32
    assert rel_err(out, parity[f"{mode}_out"]) <= TOL


@pytest.mark.parametrize("n", [1, 21, 22, 23, 32, *(pytest.param(n, marks=pytest.mark.slow) for n in (33, 70))])
def test_count_in_equals_count_out(model, n):
    frames = synthetic_frames(n, 32, 24)
    out = list(infer_video(model, iter(frames), input_size=28))
    assert len(out) == n
    assert all(d.shape == (24, 32) and d.dtype == np.float32 and np.isfinite(d).all() for d in out)


@pytest.mark.slow
def test_frames_are_pulled_lazily(model):
    """Memory is bounded by the window: the generator never reads far ahead of what it yields."""
    pulled = []

    def source():
        for i, f in enumerate(synthetic_frames(120, 32, 24)):
            pulled.append(i)
            yield f

    gen = infer_video(model, source(), input_size=28)
    first = [next(gen) for _ in range(24)]
    assert len(first) == 24 and len(pulled) <= 32 + 1  # one window of input, plus the end check
    rest = list(gen)
    assert len(first) + len(rest) == 120


def test_stream_cache_is_bounded():
    cache = StreamCache()
    for i in range(200):
        cache.push([np.full(1, i)])
    assert len(cache.entries) == 42
    assert cache.entries[0][0][0] == 0  # frame 0 is kept for ever
    assert [e[0][0] for e in cache.entries[1:]] == list(range(159, 200))


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        ([], "no frames"),
        ([np.zeros((24, 32, 3), np.uint8), np.zeros((20, 32, 3), np.uint8)], "frame 1 is 32x20 but frame 0 is 32x24"),
        ([np.zeros((24, 32, 3), np.float32)], "uint8"),
        ([np.zeros((24, 32, 4), np.uint8)], "HxWx3"),
        ([np.zeros((24, 32), np.uint8)], "HxWx3"),
    ],
)
def test_bad_frames_get_clear_errors(model, frames, match):
    with pytest.raises(FrameError, match=match):
        list(infer_video(model, frames, input_size=28))


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="unknown mode"):
        list(infer_video(model, synthetic_frames(2), mode="batch"))
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        list(infer_video(model, synthetic_frames(2), precision="fp16"))


def test_preprocess_size_rules():
    assert network_shape(1080, 1920, 518) == (518, 924)
    assert network_shape(72, 128, 126) == (126, 224)
    # wider than 1.78: the authors shrink input_size so memory stays that of 16:9
    assert effective_input_size(1080, 2560, 518) == round(int(518 * 1.777 / (2560 / 1080)) / 14) * 14
    h, w = network_shape(1080, 2560, 518)
    assert h % 14 == 0 and w % 14 == 0 and h < 518


@pytest.mark.slow
def test_compiled_encoder_gives_the_same_depth(model):
    """--compile (torch.compile of the per-frame encoder) is an optimisation only."""
    frames = synthetic_frames(30, 42, 28)
    eager = np.stack(list(infer_video(model, frames, input_size=28)))
    compiled = np.stack(list(infer_video(model, frames, input_size=28, compile=True)))
    assert rel_err(compiled, eager) <= TOL
