"""ONNX: the export (window.onnx and the runtime's graphs, each checked), its refusals, and the ONNX Runtime network.

Exports are the cost here (about 10 s a graph on 2 cores), so each is made once per module: one full export of
vits at 70x126 (every graph), and window-only exports for the other encoder, kind and size combinations.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vda.core import stitch
from vda.core.preprocess import MEAN, STD
from vda.model.network import CheckpointError, load_model
from vda.model.synth import save_checkpoint, synthetic_scene

pytest.importorskip("onnxruntime")
from vda.device.runtime import Runtime
from vda.device.runtime_onnx import CPU, CUDA, TRT, BoundRunner, OnnxNetwork, choose_providers, make_session
from vda.device.single_pass import infer_video  # noqa: E402
from vda.device.window import WindowRunner
from vda.errors import DeviceError, UsageError, WeightsError  # noqa: E402
from vda.files import file_sha256  # noqa: E402
from vda.model.onnx_cache import cache_key, cached_export  # noqa: E402
from vda.model.onnx_check import cpu_session, relative_error  # noqa: E402
from vda.model.onnx_export import (  # noqa: E402
    MODEL_JSON,
    ExportMismatch,
    ExportRefused,
    export_onnx,
    publish,
)

pytestmark = pytest.mark.slow  # every test here exports graphs or shares a module's exports: minutes in all
TOL = 1e-4  # max |onnx - torch| over torch's range (max - min)
SMALL = (70, 126)
WIDE = (98, 182)


def checkpoint(folder: Path, encoder: str, metric: bool) -> Path:
    """A synthetic checkpoint; the metric one of another seed, so that its weights differ too."""
    return save_checkpoint(folder, encoder, seed=1 if metric else 0, metric=metric)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """vits, relative, 70x126: every graph, through export_onnx; (folder, checkpoint, torch model)."""
    root = tmp_path_factory.mktemp("onnx_full")
    ck = checkpoint(root, "vits", False)
    result = export_onnx(ck, root / "export", shape=SMALL)
    return result.folder, ck, load_model(ck)


@pytest.fixture(scope="module")
def onnx_net(full) -> OnnxNetwork:
    return OnnxNetwork(full[0], device="cpu")


def window_error(folder: Path, model, shape: tuple[int, int]) -> float:
    """window.onnx against torch's forward on frames other than the export's check used."""
    frames = torch.randn(1, stitch.WINDOW, 3, *shape, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        want = model(frames).numpy()
    got = cpu_session(folder / "window.onnx").run(None, {"frames": frames.numpy()})[0]
    return relative_error(got, want)


@pytest.mark.parametrize(
    "encoder, metric, shape",
    [("vits", True, WIDE), ("vitb", False, WIDE), ("vitb", True, SMALL)],
)
def test_window_onnx_equals_torch(tmp_path, encoder, metric, shape):
    ck = checkpoint(tmp_path, encoder, metric)
    result = export_onnx(ck, tmp_path / "out", shape=shape, encoder=encoder, metric=metric, graphs=("window",))
    model = load_model(ck, metric=metric)
    assert result.meta["metric"] is metric and result.meta["encoder"] == encoder
    assert result.meta["check"]["max_relative_error"]["window"] <= TOL
    assert window_error(result.folder, model, shape) <= TOL
    assert sorted(p.name for p in result.folder.iterdir()) == [MODEL_JSON, "window.onnx"]


def test_full_export_equals_torch_and_describes_itself(full):
    folder, ck, model = full
    assert window_error(folder, model, SMALL) <= TOL
    meta = json.loads((folder / MODEL_JSON).read_text())
    assert sorted(meta["graphs"]) == ["encoder", "head", "stream", "stream_first", "window"]
    assert all(err <= TOL for err in meta["check"]["max_relative_error"].values())
    assert meta["stream"] is True and "stream_note" not in meta
    assert (meta["encoder"], meta["metric"], meta["schema"], meta["opset"]) == ("vits", False, 1, 20)
    assert (meta["network"]["height"], meta["network"]["width"]) == SMALL
    assert (tuple(meta["input"]["mean"]), tuple(meta["input"]["std"])) == (MEAN, STD)
    assert meta["window"] == {
        "frames": 32, "stride": 22, "overlap": 10, "keyframe": 12, "align": 2, "blend": 8,
        "blend_weights": stitch.blend_weights(),
    }  # fmt: skip
    assert meta["checkpoint_sha256"] == file_sha256(ck)
    assert set(meta["versions"]) == {"torch", "onnx", "onnxruntime", "onnxscript", "vda"}
    assert not list(folder.parent.glob(".export.part-*"))


def test_window_onnx_equals_the_authors_forward(full, parity):
    """window.onnx of the synthetic vits weights against the authors' implementation (tests/data)."""
    import sys

    from conftest import DATA, rel_err

    sys.path.insert(0, str(DATA))
    from make_reference import forward_input

    got = cpu_session(full[0] / "window.onnx").run(None, {"frames": forward_input(parity["frames"])})[0]
    assert rel_err(got, parity["forward_out"]) <= TOL


@pytest.mark.shared
def test_onnx_equals_the_authors_on_real_frames(tmp_path_factory):
    """The public fixture (../shared): real video frames, the authors' forward and long-video output at 126x224."""
    from conftest import SHARED, rel_err

    ref = dict(np.load(SHARED / "fixtures" / "vda_parity" / "public_vits_seed0.npz"))
    root = tmp_path_factory.mktemp("onnx_shared")
    ck = checkpoint(root, "vits", False)
    folder = export_onnx(ck, root / "export", shape=(126, 224), graphs=("window", "encoder", "head")).folder
    got = cpu_session(folder / "window.onnx").run(None, {"frames": ref["forward_in"]})[0]
    assert rel_err(got, ref["forward_out"]) <= TOL
    depth = np.stack(list(infer_video(OnnxNetwork(folder), ref["frames"], input_size=126, device="cpu")))
    assert rel_err(depth, ref["window_out"]) <= TOL


def test_network_encode_decode_equal_torch(full, onnx_net):
    _, _, model = full
    frames = torch.randn(5, 3, *SMALL, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        want = model.encode(frames)
        got = onnx_net.encode(frames, micro_batch=2)  # batches of 2, 2 and 1: the batch dimension is dynamic
        assert [tuple(g.shape) for g in got] == [tuple(w.shape) for w in want]
        assert max(relative_error(g.numpy(), w.numpy()) for g, w in zip(got, want)) <= TOL
        feats = [level[torch.arange(32) % 5] for level in want]  # a window of 32 frames' features
        depth, _ = model.decode(feats, onnx_net.grid, 32)
        got_depth, fresh = onnx_net.decode(feats, onnx_net.grid, 32, micro_batch=4)
        assert got_depth.shape == depth.shape == (32, *SMALL) and fresh == []
        assert relative_error(got_depth.numpy(), depth.numpy()) <= TOL
        one = [level[:1] for level in want]
        first, first_fresh = model.decode(one, onnx_net.grid, 1)
        got_first, got_fresh = onnx_net.decode(one, onnx_net.grid, 1)
        context = [torch.cat([f] * 31, dim=1) for f in first_fresh]  # StreamCache's context after frame 0
        later, later_fresh = model.decode(one, onnx_net.grid, 1, cache=context)
        got_later, got_later_fresh = onnx_net.decode(one, onnx_net.grid, 1, cache=context)
    pairs = [(got_first, first), *zip(got_fresh, first_fresh), (got_later, later), *zip(got_later_fresh, later_fresh)]
    assert max(relative_error(g.numpy(), w.numpy()) for g, w in pairs) <= TOL


@pytest.mark.parametrize("mode", ["window", "stream"])
def test_single_pass_with_onnx_network_equals_torch(full, onnx_net, mode):
    """The existing runners, unchanged, driven by the ONNX network: 50 frames of 72x128 at network size 70x126."""
    _, _, model = full
    frames = synthetic_scene(50 if mode == "window" else 12, 72, 128)
    kw = {"input_size": 70, "mode": mode, "device": "cpu", "precision": "fp32"}
    want = np.stack(list(infer_video(model, frames, **kw)))
    got = np.stack(list(infer_video(onnx_net, frames, **kw)))
    assert got.shape == want.shape
    assert relative_error(got, want) <= TOL


def test_window_runner_takes_the_onnx_network(full, onnx_net):
    from vda.device.feed import FrameFeed

    _, _, model = full
    frames = synthetic_scene(32, 72, 128)
    depths = []
    for net in (model, onnx_net):
        runner = WindowRunner(net, Runtime.create("cpu", "fp32", micro_batch=4), SMALL)
        depths.append(runner.run(0, FrameFeed(enumerate(frames)), 32).numpy())
    assert relative_error(depths[1], depths[0]) <= TOL


def test_stream_refused_in_one_line_without_stream_graphs(full, tmp_path):
    folder = tmp_path / "no_stream"
    shutil.copytree(full[0], folder)
    meta = json.loads((folder / MODEL_JSON).read_text())
    for name in ("stream", "stream_first"):  # what an export writes when the stream graphs do not match torch
        del meta["graphs"][name]
        (folder / f"{name}.onnx").unlink()
    meta.update(stream=False, stream_note="stream: ONNX Runtime differs from torch")
    (folder / MODEL_JSON).write_text(json.dumps(meta))
    net = OnnxNetwork(folder)
    feats = [torch.zeros(1, 45, 384)] * 4
    with pytest.raises(UsageError, match="stream mode needs the stream graphs") as err:
        net.decode(feats, net.grid, 1)
    assert "\n" not in str(err.value) and "--mode window" in str(err.value)


def test_refusals_are_one_line(tmp_path, full):
    _, ck, _ = full
    with pytest.raises(ExportRefused, match="not a multiple of 14.*--net-size 126x70"):
        export_onnx(ck, tmp_path / "a", shape=(70, 125))
    vitb = checkpoint(tmp_path, "vitb", False)
    with pytest.raises(CheckpointError, match="holds a vitb model, not vits; pass --encoder vitb") as err:
        export_onnx(vitb, tmp_path / "b", shape=SMALL, encoder="vits")
    assert "\n" not in str(err.value)
    (tmp_path / "c").mkdir()
    with pytest.raises(ExportRefused, match="exists; pass --overwrite"):
        export_onnx(ck, tmp_path / "c", shape=SMALL)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_refuses_in_one_line(tmp_path, capsys):
    from vda.cli.main import main

    assert main(["export", "onnx", "-o", str(tmp_path / "x"), "--net-size", "100x98"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("vda: error: network size 100x98 is not a multiple of 14")


def test_cli_aspect_is_the_planners_network_size():
    from vda.cli.export import network_size
    from vda.cli.main import parser

    args = parser().parse_args(["export", "onnx", "-o", "x", "--aspect", "16:9"])
    assert network_size(args) == (518, 924)
    args = parser().parse_args(["export", "onnx", "-o", "x", "--net-size", "182x98", "--input-size", "999"])
    assert network_size(args) == (98, 182)


def test_failed_check_leaves_no_folder(tmp_path, full):
    _, ck, _ = full
    with pytest.raises(ExportMismatch, match="window.onnx: ONNX Runtime on the CPU differs") as err:
        export_onnx(ck, tmp_path / "out", shape=SMALL, graphs=("window",), tolerance=0.0)
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_publish_replaces_a_folder_whole(tmp_path):
    old, new = tmp_path / "out", tmp_path / ".out.part-1"
    old.mkdir()
    (old / "stale.onnx").write_text("old")
    new.mkdir()
    (new / MODEL_JSON).write_text("{}")
    publish(new, old, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in old.iterdir()] == [MODEL_JSON]


def test_cache_reuses_a_complete_export_and_keys_what_changes_a_graph(full, tmp_path):
    folder, ck, _ = full
    sha = file_sha256(ck)
    key = cache_key(sha, "vits", False, SMALL, "fp32")
    assert key.startswith("vits-relative-70x126-fp32-")
    others = {
        cache_key("0" * 64, "vits", False, SMALL, "fp32"),
        cache_key(sha, "vits", True, SMALL, "fp32"),
        cache_key(sha, "vits", False, WIDE, "fp32"),
        cache_key(sha, "vits", False, SMALL, "fp16"),
    }
    assert key not in others and len(others) == 4
    shutil.copytree(folder, tmp_path / key)
    start = time.perf_counter()
    assert cached_export(ck, "vits", False, SMALL, root=tmp_path) == tmp_path / key
    assert time.perf_counter() - start < 5  # found, not exported (an export takes tens of seconds)


# --------------------------------------------------------------------------------------------------
# GPU logic with fakes: running these paths needs a GPU and onnxruntime-gpu; here the providers and bindings
# vda asks for are checked, not what a GPU computes.
# --------------------------------------------------------------------------------------------------


@pytest.mark.gpu_logic
def test_provider_choice():
    cpu, gpu = torch.device("cpu"), torch.device("cuda:1")
    assert choose_providers(cpu, [TRT, CUDA, CPU]) == [(CPU, {})]
    chosen = choose_providers(gpu, [TRT, CUDA, CPU], "fp16", stream=1234, trt_cache=Path("/c/trt"))
    assert [name for name, _ in chosen] == [TRT, CUDA, CPU]
    trt, cuda = chosen[0][1], chosen[1][1]
    assert trt == {
        "device_id": "1", "user_compute_stream": "1234", "trt_fp16_enable": "True",
        "trt_engine_cache_enable": "True", "trt_engine_cache_path": "/c/trt",
    }  # fmt: skip
    assert cuda == {"device_id": "1", "user_compute_stream": "1234", "use_tf32": "1"}
    fp32 = choose_providers(gpu, [CUDA, CPU], "fp32")
    assert fp32 == [(CUDA, {"device_id": "1", "use_tf32": "0"}), (CPU, {})]
    with pytest.raises(DeviceError, match="install onnxruntime-gpu") as err:
        choose_providers(gpu, [CPU])
    assert "\n" not in str(err.value)


class FakeOutput:
    def __init__(self, name, shape):
        self.name, self.shape = name, shape


class FakeBinding:
    def __init__(self):
        self.inputs, self.outputs = [], []

    def bind_input(self, *args):
        self.inputs.append(args)

    def bind_output(self, *args):
        self.outputs.append(args)


class FakeSession:
    """Records what is bound; `run_with_iobinding` writes into the bound outputs as a GPU provider would."""

    def __init__(self):
        self.bindings, self.options = [], []

    def get_outputs(self):
        return [FakeOutput("features_0", ["n", 45, 384]), FakeOutput("features_1", ["n", 45, 384])]

    def io_binding(self):
        self.bindings.append(FakeBinding())
        return self.bindings[-1]

    def run_with_iobinding(self, binding, options):
        self.options.append(options)


@pytest.mark.gpu_logic
def test_io_binding_binds_device_tensors_and_torch_allocated_outputs():
    session, made = FakeSession(), []

    def empty(shape, dtype, device):  # torch.empty on the GPU; here on the CPU, recording what was asked
        made.append((shape, dtype, device))
        return torch.full(shape, 7.0)

    runner = BoundRunner(session, torch.device("cuda:1"), run_options="opts", empty=empty)
    x = torch.randn(3, 3, 70, 126, dtype=torch.float16)
    outs = runner({"frames": x}, 3)
    binding = session.bindings[0]
    (name, kind, index, dtype, shape, ptr) = binding.inputs[0]
    assert (name, kind, index, dtype, shape) == ("frames", "cuda", 1, np.float32, (3, 3, 70, 126))
    assert ptr != x.data_ptr()  # fp16 features widened to fp32 on the device first (the graph is fp32)
    assert made == [((3, 45, 384), torch.float32, torch.device("cuda:1"))] * 2
    assert [b[:5] for b in binding.outputs] == [
        ("features_0", "cuda", 1, np.float32, (3, 45, 384)),
        ("features_1", "cuda", 1, np.float32, (3, 45, 384)),
    ]
    assert [b[5] for b in binding.outputs] == [o.data_ptr() for o in outs]  # ORT writes into torch's tensors
    assert session.options == ["opts"]


@pytest.mark.gpu_logic
def test_session_gets_the_chosen_providers_and_threads(full):
    class FakeOrt:
        class SessionOptions:
            intra_op_num_threads = inter_op_num_threads = 0

        made = []

        @classmethod
        def InferenceSession(cls, path, sess_options, providers, provider_options):  # noqa: N802 (ORT's name)
            cls.made.append((Path(path).name, sess_options.intra_op_num_threads, providers, provider_options))

    providers = choose_providers(torch.device("cuda:0"), [CUDA, CPU], "fp32", stream=99)
    make_session(full[0] / "head.onnx", providers, 3, FakeOrt)
    assert FakeOrt.made == [
        ("head.onnx", 3, [CUDA, CPU], [{"device_id": "0", "user_compute_stream": "99", "use_tf32": "0"}, {}])
    ]


def test_missing_checkpoint_refused_in_one_line(tmp_path):
    with pytest.raises(WeightsError, match="checkpoint not found: .*missing.pth; check --checkpoint"):
        export_onnx(tmp_path / "missing.pth", tmp_path / "out", shape=SMALL)
    assert list(tmp_path.iterdir()) == []


def test_vda_depth_with_the_onnx_runtime_equals_both_single_passes(tmp_path, monkeypatch):
    """`vda depth --runtime onnx` on two CPU workers, one unit per window: the torch single pass to 1e-4, and the
    onnx single pass (`vda.load_model(runtime="onnx")`) bit for bit: the split stays exact with this runtime. The
    export is made once, into the cache the workers and the single pass all read (VDA_ONNX_CACHE)."""
    import vda
    from vda import config

    monkeypatch.setenv("VDA_ONNX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(config, "_loaded", None)
    ck = checkpoint(tmp_path, "vits", False)
    frames = list(synthetic_scene(50, 72, 128))
    src = tmp_path / "frames"
    src.mkdir()
    for i, frame in enumerate(frames):
        cv2.imwrite(str(src / f"{i:04d}.png"), frame[:, :, ::-1])
    cached_export(ck, "vits", False, SMALL)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "vda", "depth", str(src), "-o", str(out), "--devices", "cpu,cpu", "--runtime", "onnx"]
    cmd += ["--checkpoint", str(ck), "--input-size", "70", "--unit-size", "1", "--format", "npy"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "VDA_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    got = np.stack(list(vda.read(out)))
    kw = {"input_size": 70, "device": "cpu", "precision": "fp32"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers compute (VDA_THREADS=1): ONNX Runtime takes torch's count
    try:
        onnx = np.stack(list(infer_video(vda.load_model(ck, runtime="onnx", device="cpu"), frames, **kw)))
        want = np.stack(list(infer_video(load_model(ck), frames, **kw)))
    finally:
        torch.set_num_threads(threads)
    assert got.shape == want.shape == (50, 72, 128)
    assert np.array_equal(got, onnx)
    assert relative_error(got, want) <= TOL
