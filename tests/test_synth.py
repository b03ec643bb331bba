"""Our synthetic-checkpoint generator: deterministic, in the published layout, and the one the references used."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from conftest import SHARED, TOL, rel_err

from vda.model.network import load_model
from vda.model.synth import save_checkpoint, state_digest, synth_state_dict, tensor_values


def test_digest_is_that_of_the_reference_weights(parity, vits_state):
    """The weights the authors' implementation ran with for tests/data: a generator change cannot pass unnoticed."""
    assert state_digest(vits_state) == json.loads(str(parity["meta"]))["weights_sha256"]


def test_values_depend_on_seed_and_name_only():
    a = tensor_values("head.x.weight", (4, 3), seed=0)
    assert np.array_equal(a, tensor_values("head.x.weight", (4, 3), seed=0)) and a.dtype == np.float32
    assert not np.array_equal(a, tensor_values("head.x.weight", (4, 3), seed=1))
    assert not np.array_equal(a, tensor_values("head.y.weight", (4, 3), seed=0))
    assert np.all(tensor_values("head.scratch.output_conv2.2.bias", (1,), 0) == 3.0)
    assert abs(float(tensor_values("blocks.0.ls1.gamma", (4096,), 0).mean()) - 0.1) < 0.01


def test_saved_checkpoint_loads_strictly(tmp_path):
    path = save_checkpoint(tmp_path, "vits", seed=1, metric=True)
    assert path.name == "metric_video_depth_anything_vits.pth" and not list(tmp_path.glob("*.part"))
    model = load_model(path, metric=True)
    assert state_digest(model.state_dict()) == state_digest(synth_state_dict("vits", 1))
    assert model.config.metric


def _shared_generator():
    path = SHARED / "fixtures" / "vda_parity" / "synth_weights.py"
    spec = importlib.util.spec_from_file_location("shared_synth_weights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.shared
@pytest.mark.parametrize(("encoder", "seed"), [("vits", 0), ("vits", 1), ("vitb", 0)])
def test_same_bits_as_the_shared_generator(encoder, seed):
    """Optional: where ../shared exists, our generator gives its generator's weights bit for bit."""
    theirs = _shared_generator().synth_state_dict(encoder, seed)
    ours = synth_state_dict(encoder, seed)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.shared
def test_matches_the_shared_reference_outputs(model):
    """Optional: the reference outputs on ../shared's frames (the authors' example clip) still match."""
    from vda.device.single_pass import infer_video

    ref = np.load(SHARED / "fixtures" / "vda_parity" / "public_vits_seed0.npz")
    with torch.inference_mode():
        assert rel_err(model(torch.from_numpy(ref["forward_in"])).numpy(), ref["forward_out"]) <= TOL
    for mode in ("window", "stream"):
        out = np.stack(list(infer_video(model, list(ref["frames"]), input_size=126, mode=mode)))
        assert rel_err(out, ref[f"{mode}_out"]) <= TOL


def test_reference_frames_are_our_synthetic_scene(parity):
    """tests/data/README.md: the reference ran on vda.model.synth.synthetic_scene(70, 72, 128), our own footage."""
    from vda.model.synth import synthetic_scene

    assert np.array_equal(parity["frames"], synthetic_scene(70, 72, 128))
