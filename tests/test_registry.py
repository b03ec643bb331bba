"""The registry of published checkpoints and how a checkpoint file is found."""

from __future__ import annotations

import pytest

from vda.errors import WeightsError
from vda.model.registry import CHECKPOINTS, find, resolve


def test_six_published_checkpoints_with_licences():
    assert len(CHECKPOINTS) == 6
    table = {(c.encoder, c.metric): c for c in CHECKPOINTS}
    assert table["vits", False].repo_id == "depth-anything/Video-Depth-Anything-Small"
    assert table["vitl", True].repo_id == "depth-anything/Metric-Video-Depth-Anything-Large"
    assert table["vitb", True].filename == "metric_video_depth_anything_vitb.pth"
    assert {c.encoder: c.license for c in CHECKPOINTS} == {
        "vits": "Apache-2.0",
        "vitb": "CC-BY-NC-4.0",
        "vitl": "CC-BY-NC-4.0",
    }
    with pytest.raises(WeightsError, match="choose vits, vitb or vitl"):
        find("vitg", False)


def test_resolution_order(tmp_path, monkeypatch, capsys):
    explicit = tmp_path / "mine.pth"
    explicit.write_bytes(b"x")
    assert resolve("vits", False, explicit) == explicit  # 1. an explicit path
    with pytest.raises(WeightsError, match="checkpoint not found"):
        resolve("vits", False, tmp_path / "absent.pth")
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (second / "video_depth_anything_vitb.pth").write_bytes(b"x")
    monkeypatch.setenv("VDA_MODELS_DIR", f"{first}:{second}")
    assert resolve("vitb", False) == second / "video_depth_anything_vitb.pth"  # 2. the models folders, in order
    assert "licence CC-BY-NC-4.0" in capsys.readouterr().err  # the licence is shown when used


def test_offline_error_names_the_file_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("VDA_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # 3. the Hugging Face cache: empty here, and offline
    with pytest.raises(WeightsError) as err:
        resolve("vitl", True)
    text = str(err.value)
    assert "metric_video_depth_anything_vitl.pth not found" in text
    assert "huggingface.co/depth-anything/Metric-Video-Depth-Anything-Large" in text
    assert str(tmp_path / "metric_video_depth_anything_vitl.pth") in text
