"""Pure schedule and alignment math."""

from __future__ import annotations

import numpy as np
import pytest

from vda.core import stitch

LENGTHS = [1, 2, 21, 22, 23, 31, 32, 33, 44, 45, 70, 100, 1000]


@pytest.mark.parametrize("n", LENGTHS)
def test_every_frame_has_exactly_one_owner_window(n):
    owned = [f for w in range(stitch.num_windows(n)) for f in stitch.window_outputs(w, n)]
    assert owned == list(range(n))


@pytest.mark.parametrize("n", LENGTHS)
def test_window_inputs_follow_the_reference_schedule(n):
    for w in range(stitch.num_windows(n)):
        inputs = stitch.window_inputs(w, n)
        assert len(inputs) == 32 and max(inputs) <= n - 1
        if w:
            prev = stitch.window_inputs(w - 1, n)
            # keyframes: input 0 of every window is frame 0, input 1 is input 12 of the previous window,
            # inputs 2..9 are the previous window's inputs 24..31
            assert inputs[0] == prev[0] == 0
            assert inputs[1] == prev[12]
            assert inputs[2:10] == prev[24:32]


@pytest.mark.parametrize("n", LENGTHS)
def test_frame_sources_are_inside_their_windows(n):
    for f in range(n):
        src = stitch.frame_source(f, n)
        assert stitch.window_inputs(src.w, n)[src.i] == min(f, n - 1)
        if src.weight < 1:
            assert stitch.window_inputs(src.w - 1, n)[src.i + stitch.STRIDE] == f
            assert f in stitch.window_outputs(src.w, n)


def test_blend_weights():
    w = stitch.blend_weights()
    assert len(w) == 8 and w[0] == 0.0 and w[-1] == 1.0
    assert np.allclose(np.diff(w), 1 / 7)


def test_fit_scale_shift_recovers_known_affine():
    rng = np.random.RandomState(0)
    pred = rng.rand(2, 20, 30).astype(np.float32)
    s, t = stitch.fit_scale_shift(pred, 2.5 * pred + 0.75)
    assert s == pytest.approx(2.5, rel=1e-5) and t == pytest.approx(0.75, rel=1e-5)
    assert stitch.fit_scale_shift(np.ones((2, 4, 4)), np.ones((2, 4, 4))) == (1.0, 0.0)  # degenerate: identity


def test_apply_scale_shift_clips_negatives():
    out = stitch.apply_scale_shift(np.array([-1.0, 0.5, 2.0], np.float32), np.float32(2), np.float32(-1.5))
    assert out.tolist() == [0.0, 0.0, 2.5]


def test_chain_metric_is_identity_and_relative_fits():
    rng = np.random.RandomState(1)
    base = [rng.rand(6, 8).astype(np.float32) + 0.1 for _ in range(3)]
    rel = stitch.AlignmentChain()
    assert rel.step(*base) == (1.0, 0.0)
    s, t = rel.step(base[0] / 2, base[2] / 2, base[1])  # window 1 predicts half the depth of window 0
    assert s == pytest.approx(2.0, rel=1e-5) and t == pytest.approx(0.0, abs=1e-5)
    metric = stitch.AlignmentChain(metric=True)
    metric.step(*base)
    assert metric.step(base[0] / 2, base[2] / 2, base[1]) == (1.0, 0.0)
