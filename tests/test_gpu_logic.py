"""GPU-only logic, tested here without a GPU (issue 12).

No GPU exists on CI. Where a test needs `torch.cuda`, it passes a fake in its place and says so; what a fake cannot
prove is left to `make gpu-check` on a GPU host. The fp16 NaN guard is exercised for real in bf16 on the CPU (autocast
runs there), with NaN injected into the model's output, since no GPU here produces it.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from conftest import TOL, rel_err, synthetic_frames, write_images

from orchestrator.local import LocalBackend, worker_threads
from orchestrator.planning import create_plan, parse_devices
from orchestrator.scheduler import RunFailed, run_chunks
from vda import inference
from vda.inference import (
    DeviceError,
    FrameFeed,
    NonFiniteDepth,
    Runtime,
    WindowRunner,
    check_compiler,
    ieee_fp32,
    infer_video,
    resolve_precision,
    same_device,
)
from vda.model import VideoDepthAnything
from vda.plan import PlanError
from vda.preprocess import normalisation, preprocess
from vda.system import gpu_env, usable_cpus
from vda.worker import EXIT_OUT_OF_MEMORY, DeviceOutOfMemory, _store, copy_done_event, run_chunk, unit_path

pytestmark = pytest.mark.gpu_logic


class FakeCuda:
    """Stands in for torch.cuda (no GPU here): records which stream events are recorded on."""

    def __init__(self, capability=(8, 0), available=True):
        self.capability, self.available, self.calls = capability, available, []

    def is_available(self):
        return self.available

    def get_device_capability(self, device):
        return self.capability

    def get_device_name(self, device):
        return "Fake GeForce GTX 1660"

    def current_stream(self, device):
        self.calls.append(("current_stream", torch.device(device)))
        return f"stream-of-{device}"

    def Event(self, blocking=False):  # noqa: N802 (torch's name)
        cuda = self

        class Event:
            def record(self, stream):
                cuda.calls.append(("record", stream, blocking))

            def synchronize(self):
                cuda.calls.append(("synchronize",))

        return Event()


# ------------------------------------------------------------------------------------------ 1. the copy event


def test_copy_event_is_recorded_on_the_source_gpus_stream():
    """Fake torch.cuda. The copy from cuda:1 runs on cuda:1's stream; the event must follow it there, and block."""
    cuda = FakeCuda()
    copy_done_event(torch.device("cuda:1"), cuda)
    assert cuda.calls == [("current_stream", torch.device("cuda:1")), ("record", "stream-of-cuda:1", True)]


def test_store_waits_for_the_copy_before_reading(tmp_path):
    """Fake event: the store thread synchronises on it before it reads the pinned buffer."""
    order = []

    class Event:
        def synchronize(self):
            order.append("synchronize")

    class Host:
        def numpy(self):
            order.append("read")
            return np.zeros((2, 3, 4), np.float16)

    _store(tmp_path / "win_000000.npy", Host(), Event(), 0.0, 0)
    assert order == ["synchronize", "read"] and (tmp_path / "win_000000.done").is_file()


# ------------------------------------------------------------------------------------------ 2. GPU isolation


@pytest.mark.parametrize(
    ("parent", "index", "visible"),
    [
        ({}, 3, "3"),
        ({"CUDA_VISIBLE_DEVICES": "4,6"}, 1, "6"),
        ({"CUDA_VISIBLE_DEVICES": "GPU-aaaa, GPU-bbbb"}, 0, "GPU-aaaa"),
    ],
)
def test_each_worker_sees_only_its_gpu_in_pci_order(parent, index, visible):
    assert gpu_env(index, parent) == {"CUDA_VISIBLE_DEVICES": visible, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def test_gpu_ids_outside_the_parents_visible_set_are_refused():
    with pytest.raises(ValueError, match="shows 2 GPU"):
        gpu_env(2, {"CUDA_VISIBLE_DEVICES": "4,6"})
    with pytest.raises(ValueError, match="no GPU is visible"):
        gpu_env(0, {"CUDA_VISIBLE_DEVICES": ""})
    with pytest.raises(PlanError, match="no GPU is visible here") as err:
        parse_devices(gpu_ids=[7], visible_gpus=0)
    assert "0..-1" not in str(err.value)


def test_local_gpu_worker_command_and_environment(tmp_path, checkpoint):
    """The plan names cuda:2 and cpu (no GPU is used: only the command and environment are built)."""
    src = write_images(tmp_path / "imgs", synthetic_frames(30, 32, 24))
    plan, _ = create_plan(src, tmp_path / "run", ["cuda:2", "cpu"], checkpoint=str(checkpoint), input_size=28)
    backend = LocalBackend(checkpoint=str(checkpoint), micro_batch=2, compile=True)
    cmd = backend.command(plan, tmp_path / "run", 0, "cuda:2")
    assert cmd[cmd.index("--device") + 1] == "cuda:0" and cmd[cmd.index("--micro-batch") + 1] == "2"
    assert "--compile" in cmd
    env = backend.environment(plan, "cuda:2", {"PATH": "/bin"})
    assert (env["CUDA_VISIBLE_DEVICES"], env["CUDA_DEVICE_ORDER"]) == ("2", "PCI_BUS_ID")
    assert env["VDA_THREADS"] == str(worker_threads(plan, "cuda:2", usable_cpus()))
    assert worker_threads(plan, "cuda:0", 16) == 16 and worker_threads(plan, "cpu", 1) == 1
    cpu_env = backend.environment(plan, "cpu", {"PATH": "/bin"})
    assert "CUDA_VISIBLE_DEVICES" not in cpu_env


# ------------------------------------------------------------------------------------------ 3. precision per device


def test_auto_precision_is_per_device_kind():
    """Fake torch.cuda for the cuda case."""
    assert resolve_precision(None, "cuda") == "fp16" and resolve_precision("auto", "cpu") == "fp32"
    assert Runtime.create("cuda:0", "auto", cuda=FakeCuda()).precision == "fp16"
    assert Runtime.create("cpu", "auto").precision == "fp32"
    assert Runtime.create("cpu", "bf16").precision == "bf16"


def test_mixed_devices_plan_auto_and_the_cpu_chunk_computes_fp32(tmp_path, checkpoint, model):
    """A plan over cpu and cuda:0: the CPU chunk runs (fp32) and matches the single pass; no GPU is used."""
    frames = synthetic_frames(50, 32, 24)
    src = write_images(tmp_path / "imgs", frames)
    plan, _ = create_plan(src, tmp_path / "run", ["cuda:0", "cpu"], checkpoint=str(checkpoint), input_size=28)
    assert plan.settings.precision == "auto"
    run_chunk(tmp_path / "run", 1, device="cpu", checkpoint=str(checkpoint))
    w = plan.chunks[1].units[0]
    stored = np.load(unit_path(tmp_path / "run", 1, "window", w))
    assert stored.dtype == np.float32  # fp32 on the CPU, stored as such
    feed = FrameFeed(enumerate(frames), total=50)
    runner = WindowRunner(model, Runtime.create("cpu", "fp32"), (28, 42))
    for k in range(w):
        runner.run(k, feed, 50)
    assert rel_err(stored, runner.run(w, feed, 50).numpy()) <= TOL
    with pytest.raises(PlanError, match="fp16 needs CUDA devices"):
        create_plan(src, tmp_path / "r2", ["cuda:0", "cpu"], checkpoint=str(checkpoint), precision="fp16")


# ------------------------------------------------------------------------------------------ 4. NaN guard, bf16 rule


@pytest.fixture
def nan_in_half_precision(monkeypatch):
    """Makes the model's depth NaN under autocast (bf16 on CPU here; fp16 on the GTX 16xx cards) for chosen calls."""
    original = VideoDepthAnything.decode
    state = {"call": 0, "poison": set(), "always": False}

    def decode(self, *args, **kwargs):
        depth, fresh = original(self, *args, **kwargs)
        if torch.is_autocast_enabled("cpu") or state["always"]:
            state["call"] += 1
            if state["call"] in state["poison"] or state["always"]:
                depth = depth * float("nan")
        return depth, fresh

    monkeypatch.setattr(VideoDepthAnything, "decode", decode)
    return state


def test_non_finite_window_is_recomputed_once_in_fp32(model, nan_in_half_precision):
    nan_in_half_precision["poison"] = {2}  # window 1
    frames = synthetic_frames(70, 32, 24)
    runner = WindowRunner(model, Runtime.create("cpu", "bf16"), (28, 42))
    exact = WindowRunner(model, Runtime.create("cpu", "fp32"), (28, 42))
    feeds = FrameFeed(enumerate(frames), total=70), FrameFeed(enumerate(frames), total=70)
    for w in range(3):
        got, ref = runner.run(w, feeds[0], 70), exact.run(w, feeds[1], 70)
        assert torch.isfinite(got).all()
        if w == 1:
            assert rel_err(got.numpy(), ref.numpy()) <= TOL  # the recompute is fp32
    assert runner.recomputed == [1]
    for feats in runner._features.values():  # 5. compact copies in the compute dtype, not views of the batch
        assert all(f.dtype == torch.bfloat16 and f.untyped_storage().nbytes() == f.numel() * 2 for f in feats)


def test_non_finite_even_in_fp32_is_an_error_not_a_file(tmp_path, checkpoint, nan_in_half_precision):
    nan_in_half_precision["always"] = True
    src = write_images(tmp_path / "imgs", synthetic_frames(30, 32, 24))
    create_plan(src, tmp_path / "run", ["cpu"], checkpoint=str(checkpoint), input_size=28, precision="bf16")
    with pytest.raises(NonFiniteDepth, match="window 0 gives non-finite depth even in fp32"):
        run_chunk(tmp_path / "run", 0, checkpoint=str(checkpoint))
    assert not list((tmp_path / "run").rglob("win_*.npy"))


def test_stream_mode_recomputes_a_non_finite_frame(model, nan_in_half_precision):
    nan_in_half_precision["poison"] = {5}
    frames = synthetic_frames(12, 32, 24)
    recomputed: list[int] = []
    runtime = Runtime.create("cpu", "bf16")
    out = list(inference.stream_depths(model, runtime, enumerate(frames), (28, 42), recomputed))
    assert recomputed == [4] and all(torch.isfinite(d).all() for _, d in out)
    nan_in_half_precision["poison"] = set()
    clean = list(inference.stream_depths(model, runtime, enumerate(frames), (28, 42)))
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(out[:4], clean[:4]))  # before it: untouched
    assert rel_err(out[4][1].numpy(), clean[4][1].numpy()) <= 0.05  # fp32 where bf16 would have been: close
    assert rel_err(np.stack([d for _, d in out[5:]]), np.stack([d for _, d in clean[5:]])) <= 0.05


def test_recomputes_are_said_once_and_counted_per_chunk(tmp_path, checkpoint):
    """A fake backend stands in for workers on two GPUs that report fp32 recomputes in their progress lines."""
    src = write_images(tmp_path / "imgs", synthetic_frames(70, 32, 24))
    plan, _ = create_plan(src, tmp_path / "run", ["cuda:0", "cuda:1"], checkpoint=str(checkpoint), input_size=28)

    class Handle:
        reason = None

        def poll(self):
            return 0

        def stop(self):
            pass

    class Backend:
        def start(self, plan, run_dir, chunk, device, log_path, on_line):
            for _ in range(2):
                on_line('@progress {"event": "unit", "done": 1, "frames": 22, "fp32_recomputes": 1}')
            return Handle()

    from orchestrator.scheduler import Progress

    shown = io.StringIO()
    results = run_chunks(plan, tmp_path / "run", Backend(), ["cuda:0", "cuda:1"], progress=Progress(plan, shown))
    assert [r.fp32_recomputes for r in results.values()] == [2, 2]
    saved = json.loads((tmp_path / "run" / "processing_results.json").read_text())
    assert [c["fp32_recomputes"] for c in saved["chunks"]] == [2, 2]
    assert shown.getvalue().count("was recomputed in fp32") == 1


def test_bf16_is_refused_below_compute_capability_8():
    """Fake torch.cuda reporting a Turing card (7.5)."""
    with pytest.raises(DeviceError, match="bf16 needs a GPU of compute capability 8.0 .* has 7.5") as err:
        Runtime.create("cuda:0", "bf16", cuda=FakeCuda(capability=(7, 5)))
    assert len(str(err.value).splitlines()) == 1
    assert Runtime.create("cuda:0", "bf16", cuda=FakeCuda(capability=(8, 6))).precision == "bf16"
    with pytest.raises(DeviceError, match="CUDA is not available"):
        Runtime.create("cuda:0", "fp16", cuda=FakeCuda(available=False))


# ------------------------------------------------------------------------------------------ 6. out of memory


def test_out_of_memory_is_one_line_naming_what_to_lower(tmp_path, checkpoint, monkeypatch):
    """torch's own OutOfMemoryError, raised by the fault injection as a GPU would raise it."""
    src = write_images(tmp_path / "imgs", synthetic_frames(30, 32, 24))
    create_plan(src, tmp_path / "run", ["cpu"], checkpoint=str(checkpoint), input_size=28)
    monkeypatch.setenv("VDA_FAIL_AT_UNIT", "0")
    monkeypatch.setenv("VDA_FAIL_MODE", "oom")
    with pytest.raises(DeviceOutOfMemory) as err:
        run_chunk(tmp_path / "run", 0, checkpoint=str(checkpoint), micro_batch=2)
    text = str(err.value)
    assert len(text.splitlines()) == 1
    assert all(s in text for s in ("vits", "input size 28", "micro-batch 2", "lower --micro-batch (e.g. 1)"))


def _fake_backend(codes: dict[str, int]):
    """Workers that exit with a fixed code per device (no GPU here): what the scheduler sees of an OOM."""

    class Handle:
        def __init__(self, code):
            self.code, self.reason = code, "cuda:0 ran out of memory running vits" if code else None

        def poll(self):
            return self.code

        def stop(self):
            pass

    class Backend:
        started: list[str] = []

        def start(self, plan, run_dir, chunk, device, log_path, on_line):
            self.started.append(device)
            return Handle(codes[device])

    return Backend()


def test_out_of_memory_moves_to_an_untried_gpu_or_stops(tmp_path, checkpoint):
    src = write_images(tmp_path / "imgs", synthetic_frames(30, 32, 24))
    plan, _ = create_plan(src, tmp_path / "run", ["cuda:0"], checkpoint=str(checkpoint), input_size=28)
    with pytest.raises(RunFailed, match="ran out of device memory on cuda:0 .*ran out of memory running vits"):
        run_chunks(plan, tmp_path / "run", _fake_backend({"cuda:0": EXIT_OUT_OF_MEMORY}), ["cuda:0"], retries=2)
    saved = json.loads((tmp_path / "run" / "processing_results.json").read_text())
    assert saved["chunks"][0]["attempts"] == 1  # not retried on the same device with the same settings
    backend = _fake_backend({"cuda:0": EXIT_OUT_OF_MEMORY, "cuda:1": 0})
    plan1, _ = create_plan(src, tmp_path / "run1", ["cuda:0"], checkpoint=str(checkpoint), input_size=28)
    results = run_chunks(plan1, tmp_path / "run1", backend, ["cuda:0", "cuda:1"], retries=2)
    assert backend.started == ["cuda:0", "cuda:1"] and results[0].status == "done"


# ------------------------------------------------------------------------------------------ 8. --compile


def test_compiled_encoder_runs_one_fixed_batch_shape(model, monkeypatch):
    """torch.compile replaced by a recorder: every batch it sees has micro_batch frames (no recompilation)."""
    shapes = []

    def fake_compile(module, dynamic=None):
        def run(x):
            shapes.append(x.shape[0])
            return module(x)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    frames = synthetic_frames(50, 32, 24)
    eager = np.stack(list(infer_video(model, frames, input_size=28, micro_batch=4)))
    compiled = np.stack(list(infer_video(model, frames, input_size=28, micro_batch=4, compile=True)))
    assert set(shapes) == {4} and rel_err(compiled, eager) <= TOL


def test_compile_without_a_compiler_is_refused_in_one_line():
    with pytest.raises(DeviceError, match="--compile needs a C compiler") as err:
        check_compiler(which=lambda name: None, environ={})
    assert len(str(err.value).splitlines()) == 1
    check_compiler(which=lambda name: "/usr/bin/gcc" if name == "gcc" else None, environ={})


# ------------------------------------------------------------------------------------------ 10. smaller ones


def test_model_and_device_on_different_gpus_are_refused():
    assert not same_device(torch.device("cuda:0"), torch.device("cuda:1"))
    assert same_device(torch.device("cuda"), torch.device("cuda:0"), current_cuda=0)
    assert not same_device(torch.device("cuda"), torch.device("cuda:1"), current_cuda=0)
    assert same_device(torch.device("cpu"), torch.device("cpu")) and not same_device(
        torch.device("cpu"), torch.device("cuda:0")
    )


def test_normalisation_is_made_once_per_device():
    normalisation.cache_clear()
    x = torch.zeros(1, 8, 8, 3, dtype=torch.uint8)
    for _ in range(5):
        preprocess(x, (14, 14))
    info = normalisation.cache_info()
    assert (info.misses, info.hits) == (1, 4)


def test_fp32_on_cuda_switches_tf32_off_and_restores_it():
    """A Runtime on a fake cuda:0 (built directly; no GPU is touched): fp32 means IEEE fp32 inside, not TF32."""
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = conv.fp32_precision, matmul.fp32_precision
    with Runtime(torch.device("cuda:0"), "fp32").autocast():
        assert (conv.fp32_precision, matmul.fp32_precision) == ("ieee", "ieee")
    assert (conv.fp32_precision, matmul.fp32_precision) == before
    with ieee_fp32():
        assert conv.fp32_precision == "ieee"


def test_the_fake_has_the_calls_torch_cuda_has():
    """A call renamed in torch.cuda would leave the fakes above passing on a name the real module lacks."""
    for name in ("is_available", "get_device_capability", "get_device_name", "current_stream", "Event"):
        assert callable(getattr(torch.cuda, name)) and callable(getattr(FakeCuda(), name))
