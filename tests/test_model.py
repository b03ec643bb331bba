"""The model against the reference forward, and checkpoint loading with its failure modes."""

from __future__ import annotations

import pickle
import sys

import pytest
import torch
from conftest import DATA, TOL, rel_err

sys.path.insert(0, str(DATA))
from make_reference import forward_input  # noqa: E402  (the exact input the reference forward saw)

from vda.model.configs import CONFIGS
from vda.model.dinov2 import interpolate_pos_embed
from vda.model.network import CheckpointError, infer_encoder, load_model


def test_forward_matches_reference(model, parity):
    with torch.inference_mode():
        out = model(torch.from_numpy(forward_input(parity["frames"]))).numpy()
    assert out.shape == parity["forward_out"].shape
    assert rel_err(out, parity["forward_out"]) <= TOL


def test_load_from_file_strict_and_eval(checkpoint):
    model = load_model(checkpoint)
    assert not model.training
    assert model.config.encoder == "vits"
    assert len(model.state_dict()) == 351  # every tensor of the published layout, nothing else


@pytest.mark.parametrize("encoder", ["vits", "vitb", "vitl"])
def test_layout_matches_published_checkpoint(layout, encoder):
    """Our module tree has exactly the published names and shapes, for every encoder."""
    from vda.model.configs import ModelConfig
    from vda.model.network import VideoDepthAnything

    published = {name: tuple(shape) for name, shape in layout[encoder]["tensors"]}
    with torch.device("meta"):
        model = VideoDepthAnything(ModelConfig(**CONFIGS[encoder].__dict__))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == published
    cfg = layout[encoder]["config"]
    assert (CONFIGS[encoder].features, list(CONFIGS[encoder].out_channels)) == (cfg["features"], cfg["out_channels"])


@pytest.mark.parametrize("encoder", ["vits", "vitb", "vitl"])
def test_encoder_inferred_from_checkpoint(layout, encoder):
    shapes = dict(layout[encoder]["tensors"])
    state = {"pretrained.pos_embed": torch.empty(shapes["pretrained.pos_embed"])}
    assert infer_encoder(state) == encoder


def test_missing_unexpected_and_misshaped_are_all_listed(vits_state):
    bad = dict(vits_state)
    del bad["head.scratch.output_conv1.weight"]
    bad["head.extra.weight"] = torch.zeros(3)
    bad["pretrained.norm.bias"] = torch.zeros(5)
    with pytest.raises(CheckpointError) as err:
        load_model(bad)
    text = str(err.value)
    assert "1 missing, 1 unexpected, 1 misshaped" in text
    assert "head.scratch.output_conv1.weight" in text and "head.extra.weight" in text
    assert "pretrained.norm.bias (5,) != (384,)" in text


def test_wrong_encoder_for_checkpoint_is_a_layout_error(vits_state):
    with pytest.raises(CheckpointError, match="misshaped"):
        load_model(vits_state, encoder="vitb")


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope.pth")
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a PyTorch .pth file"):
        load_model(bad)
    truncated = tmp_path / "truncated.pth"
    torch.save({"w": torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="is not a PyTorch .pth file"):
        load_model(truncated)


class _Exploit:
    def __reduce__(self):
        return (exec, ("open('PWNED_MARKER', 'w').write('x')",))


def test_pickle_with_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    torch.save({"pretrained.pos_embed": _Exploit()}, path)  # the zip archive torch writes, carrying code
    with pytest.raises(CheckpointError, match="holds Python objects or code besides tensors") as caught:
        load_model(path)
    assert "\n" not in str(caught.value) and "Weights only" not in str(caught.value)  # our one line, not torch's
    legacy = tmp_path / "legacy.pth"
    with open(legacy, "wb") as fh:  # a bare pickle (no zip archive) is refused before any unpickling
        pickle.dump({"pretrained.pos_embed": _Exploit()}, fh)
    with pytest.raises(CheckpointError, match="is not a PyTorch .pth file"):
        load_model(legacy)
    assert not (tmp_path / "PWNED_MARKER").exists()


def test_pos_embed_interpolation_matches_dinov2_rule():
    """Non-square grids resample with DINOv2's scale-factor rule (offset 0.1), not a target size."""
    torch.manual_seed(0)
    table = torch.randn(1, 37 * 37 + 1, 8)
    out = interpolate_pos_embed(table, 9, 16)
    assert out.shape == (1, 9 * 16 + 1, 8)
    grid = table[:, 1:].reshape(1, 37, 37, 8).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid, scale_factor=(9.1 / 37, 16.1 / 37), mode="bicubic")
    assert torch.equal(out[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, -1, 8))
    assert torch.equal(interpolate_pos_embed(table, 37, 37), table)  # the trained grid is used as is


def test_input_not_multiple_of_patch_is_refused(model):
    with pytest.raises(ValueError, match="multiples of 14"):
        model(torch.zeros(1, 2, 3, 30, 28))


def test_metric_flag_recorded(vits_state):
    assert load_model(vits_state, metric=True).config.metric is True
