"""GPU-only logic, tested here without a GPU (issues 12 and 13).

No GPU exists on CI. Where a test needs `torch.cuda`, it passes a fake in its place and says so; what a fake cannot
prove is left to `make gpu-check` on a GPU host. The fp16 NaN guard is exercised for real in bf16 on the CPU (autocast
runs there), with NaN injected into the model's output, since no GPU here produces it. Where the queue needs distinct
GPUs to move a unit between, real worker processes compute on the CPU under the names cuda:0, cuda:1 (CpuAsGpus).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from conftest import ROOT, TOL, rel_err, synthetic_frames, write_images

from vda import events
from vda.config import Config
from vda.core.plan import PlanError
from vda.core.preprocess import normalisation, preprocess
from vda.device import stream as stream_mod
from vda.device import transfer as transfer_mod
from vda.device import window as window_mod
from vda.device.compat import ieee_fp32
from vda.device.feed import FrameFeed
from vda.device.runtime import Runtime, UnsupportedDevice, check_compiler, resolve_precision, same_device
from vda.device.runtime_torch import TorchNetwork
from vda.device.single_pass import infer_video
from vda.device.transfer import copy_done_event
from vda.device.window import WindowRunner
from vda.device.worker import DeviceWorker, _store
from vda.errors import EXIT_OUT_OF_MEMORY
from vda.io.rundir import RunDir
from vda.io.writers import DepthMeta, read_depth
from vda.model.network import VideoDepthAnything
from vda.orchestrator.backends.base import VideoRun
from vda.orchestrator.backends.local import LocalBackend
from vda.orchestrator.batch import DepthRequest, run_depth
from vda.orchestrator.launch import WorkerOptions, inner_device, worker_command, worker_env, worker_threads
from vda.orchestrator.planning import check_precision, create_plan, parse_devices
from vda.orchestrator.progress import BatchProgress
from vda.orchestrator.queue import QueuedVideo, WorkQueue
from vda.system import gpu_env, usable_cpus

pytestmark = pytest.mark.gpu_logic


class FakeStream(str):
    """A stream of the fake torch.cuda: its name (what the asserts compare) and the events it is told to wait for."""

    def __new__(cls, name: str, cuda: FakeCuda):
        stream = super().__new__(cls, name)
        stream.cuda = cuda
        return stream

    def wait_event(self, event):
        self.cuda.calls.append(("wait_event", str(self), event.name))


class FakeCuda:
    """Stands in for torch.cuda (no GPU here): records which stream events are recorded on, which stream is current
    (`stream(s)` sets it, as torch.cuda.stream does), what waits for which event, and every host wait."""

    def __init__(self, capability=(8, 0), available=True):
        self.capability, self.available, self.calls = capability, available, []
        self.active: FakeStream | None = None  # the stream a `with stream(s)` made current
        self.made = 0

    def is_available(self):
        return self.available

    def get_device_capability(self, device):
        return self.capability

    def get_device_name(self, device):
        return "Fake GeForce GTX 1660"

    def current_stream(self, device):
        self.calls.append(("current_stream", torch.device(device)))
        return self.active or FakeStream(f"stream-of-{device}", self)

    def Stream(self, device=None):  # noqa: N802 (torch's name)
        self.calls.append(("Stream", str(device)))
        return FakeStream(f"side-of-{device}", self)

    @contextlib.contextmanager
    def stream(self, stream):
        before, self.active = self.active, stream
        try:
            yield
        finally:
            self.active = before

    def empty_cache(self):
        self.calls.append(("empty_cache",))

    def Event(self, blocking=False, enable_timing=False):  # noqa: N802 (torch's name)
        cuda = self
        cuda.made += 1

        class Event:
            name = f"event-{cuda.made}"
            stream = None

            def record(self, stream):
                self.stream = stream
                cuda.calls.append(("record", stream, blocking))

            def synchronize(self):
                cuda.calls.append(("synchronize", self.name, self.stream))

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


def test_local_gpu_worker_command_and_environment(checkpoint):
    """A run over cuda:2 and cpu (no GPU is used: only the command and environment are built)."""
    devices = ["cuda:2", "cpu"]
    backend = LocalBackend(devices, WorkerOptions(str(checkpoint), micro_batch=2, compile=True))
    cmd = backend.command(0, "cuda:2")
    assert cmd[: len(LocalBackend.PROGRAM)] == LocalBackend.PROGRAM and cmd[len(LocalBackend.PROGRAM)] == "work"
    assert cmd[cmd.index("--device") + 1] == "cuda:0" and cmd[cmd.index("--slot") + 1] == "0"
    assert cmd[cmd.index("--checkpoint") + 1] == str(checkpoint) and cmd[cmd.index("--micro-batch") + 1] == "2"
    assert "--compile" in cmd
    assert backend.command(1, "cpu")[len(LocalBackend.PROGRAM) :][:5] == ["work", "--device", "cpu", "--slot", "1"]
    env = backend.environment("cuda:2", {"PATH": "/bin", "VDA_FAIL_AT_UNIT": "3", "OTHER": "x"})
    assert (env["CUDA_VISIBLE_DEVICES"], env["CUDA_DEVICE_ORDER"]) == ("2", "PCI_BUS_ID")
    assert env["VDA_THREADS"] == str(worker_threads(devices, "cuda:2", usable_cpus()))
    assert env["VDA_FAIL_AT_UNIT"] == "3" and env["OTHER"] == "x" and env["PYTHONUNBUFFERED"] == "1"
    assert backend.environment("cuda:1", {"CUDA_VISIBLE_DEVICES": "4,6"})["CUDA_VISIBLE_DEVICES"] == "6"
    assert "CUDA_VISIBLE_DEVICES" not in backend.environment("cpu", {"PATH": "/bin"})
    # A thread count set for the run wins over the default share: the tests pin one thread this way.
    assert backend.environment("cpu", {"VDA_THREADS": "1"})["VDA_THREADS"] == "1"
    pinned = LocalBackend(devices, WorkerOptions(threads=3))
    assert pinned.environment("cpu", {"VDA_THREADS": "1"})["VDA_THREADS"] == "3"


def test_worker_launch_pieces():
    """vda.orchestrator.launch, which every backend builds its workers from."""
    assert [inner_device(d) for d in ("cuda:3", "cuda", "cpu")] == ["cuda:0", "cuda:0", "cpu"]
    options = WorkerOptions(micro_batch=4)
    assert worker_command(["vda"], "cuda:1", 2, options, "/models/x.pth") == [
        "vda", "work", "--device", "cuda:0", "--slot", "2", "--checkpoint", "/models/x.pth", "--micro-batch", "4"
    ]  # fmt: skip
    assert worker_command(["vda"], "cpu", 0, WorkerOptions(), None) == ["vda", "work", "--device", "cpu", "--slot", "0"]
    assert worker_threads(["cuda:0", "cpu"], "cuda:0", 16) == 16 and worker_threads(["cpu"], "cpu", 1) == 1
    assert worker_threads(["cpu", "cpu", "cuda:0"], "cpu", 16) == 8
    assert worker_threads(["cuda:0", "cuda:1", "cuda:2", "cpu"], "cuda:1", 16) == 5
    env = worker_env(
        ["cpu", "cpu"], "cpu", WorkerOptions(), Config.from_env({"VDA_FAIL_MODE": "kill", "HOME": "/root"})
    )
    assert env == {"PYTHONUNBUFFERED": "1", "VDA_THREADS": str(max(1, usable_cpus() // 2)), "VDA_FAIL_MODE": "kill"}


def test_the_local_worker_command_starts_a_worker(tmp_path, checkpoint):
    """The command and environment built above, run for real on the CPU: the worker says Ready, then stops on Stop."""
    backend = LocalBackend(["cpu"], WorkerOptions(str(checkpoint), micro_batch=2))
    lines: list[str] = []
    log = tmp_path / "logs" / "worker_0.log"
    handle = backend.start_worker(0, "cpu", log, lines.append)
    deadline = time.time() + 120
    while not any(events.decode(line) for line in lines) and handle.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    (ready,) = [events.decode(line) for line in lines if events.decode(line)]
    assert ready == events.Ready(handle.proc.pid)
    handle.send(events.Stop())
    deadline = time.time() + 60
    while handle.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert handle.poll() == 0
    text = log.read_text()
    assert text.startswith("$ VDA_THREADS=") and "work --device cpu --slot 0" in text and "# on cpu" in text


# ------------------------------------------------------------------------------------------ 3. precision per device


def test_auto_precision_is_per_device_kind():
    """Fake torch.cuda for the cuda case."""
    assert resolve_precision(None, "cuda") == "fp16" and resolve_precision("auto", "cpu") == "fp32"
    assert Runtime.create("cuda:0", "auto", cuda=FakeCuda()).precision == "fp16"
    assert Runtime.create("cpu", "auto").precision == "fp32"
    assert Runtime.create("cpu", "bf16").precision == "bf16"


def test_mixed_devices_run_auto_and_the_cpu_worker_computes_fp32(tmp_path, checkpoint, model):
    """A run over cuda:0 and cpu plans precision auto; the CPU worker's unit (here unit 1, window 2, which starts
    from its own first window) is fp32, stored as such, and matches the single pass. No GPU is used."""
    frames = synthetic_frames(50, 32, 24)
    src = write_images(tmp_path / "imgs", frames)
    precision = check_precision(None, ["cuda:0", "cpu"])
    plan, _ = create_plan(src, tmp_path / "run", checkpoint=str(checkpoint), input_size=28, unit_size=2)
    assert precision == plan.settings.precision == "auto" and [u.span for u in plan.units] == [(0, 2), (2, 3)]
    said: list[events.Message] = []
    worker = DeviceWorker("cpu", said.append, checkpoint=str(checkpoint))
    assign = events.Assign("imgs", str(tmp_path / "run"), str(src), 1)
    worker.serve([events.encode(assign), events.encode(events.Stop())])
    (done,) = [m for m in said if isinstance(m, events.Done)]
    assert (done.unit, done.fp32_recomputes) == (1, 0) and done.computed == plan.units[1].computed_frames
    run = RunDir(tmp_path / "run")
    assert [w for w in range(3) if run.is_stored("window", w)] == [2]
    stored = np.load(run.piece("window", 2))
    assert stored.dtype == np.float32  # fp32 on the CPU, stored as such
    feed = FrameFeed(enumerate(frames), total=50)
    runner = WindowRunner(model, Runtime.create("cpu", "fp32"), (28, 42))
    for k in range(2):
        runner.run(k, feed, 50)
    assert rel_err(stored, runner.run(2, feed, 50).numpy()) <= TOL
    with pytest.raises(PlanError, match="fp16 needs CUDA devices"):
        check_precision("fp16", ["cuda:0", "cpu"])


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_non_finite_even_in_fp32_is_an_error_not_a_file(tmp_path, checkpoint, nan_in_half_precision):
    """The worker reports the unit failed (not device-bound: another device would compute the same), stores
    nothing, and goes on with the next unit (here one it cannot have: a second, instant failure)."""
    nan_in_half_precision["always"] = True
    src = write_images(tmp_path / "imgs", synthetic_frames(30, 32, 24))
    create_plan(src, tmp_path / "run", checkpoint=str(checkpoint), input_size=28, precision="bf16")
    said: list[events.Message] = []
    worker = DeviceWorker("cpu", said.append, checkpoint=str(checkpoint))
    assigns = [events.encode(events.Assign("imgs", str(tmp_path / "run"), str(src), u)) for u in (0, 7)]
    worker.serve([*assigns, events.encode(events.Stop())])
    failed = [m for m in said if isinstance(m, events.Failed)]
    assert [(m.unit, m.device_bound) for m in failed] == [(0, False), (7, False)]
    assert "window 0 gives non-finite depth even in fp32" in failed[0].reason
    assert "imgs has units 0..0, not 7" in failed[1].reason
    assert not [m for m in said if isinstance(m, events.Done)]
    assert not list((tmp_path / "run").rglob("win_*.npy"))


@pytest.mark.slow
def test_stream_mode_recomputes_a_non_finite_frame(model, nan_in_half_precision):
    nan_in_half_precision["poison"] = {5}
    frames = synthetic_frames(12, 32, 24)
    recomputed: list[int] = []
    runtime = Runtime.create("cpu", "bf16")
    out = list(stream_mod.stream_depths(model, runtime, enumerate(frames), (28, 42), recomputed))
    assert recomputed == [4] and all(torch.isfinite(d).all() for _, d in out)
    nan_in_half_precision["poison"] = set()
    clean = list(stream_mod.stream_depths(model, runtime, enumerate(frames), (28, 42)))
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(out[:4], clean[:4]))  # before it: untouched
    assert rel_err(out[4][1].numpy(), clean[4][1].numpy()) <= 0.05  # fp32 where bf16 would have been: close
    assert rel_err(np.stack([d for _, d in out[5:]]), np.stack([d for _, d in clean[5:]])) <= 0.05


class InProcessWorkers(LocalBackend):
    """The real DeviceWorker, served in a thread of this process instead of a child process, over the same messages:
    the NaN is injected into this process's model (the fixture above), since no GPU here gives NaN in fp16."""

    def start_worker(self, slot, device, log_path, on_line):
        class Handle:
            reason = None

            def __init__(self):
                self.lines: queue.Queue = queue.Queue()

            def send(self, message):
                self.lines.put(events.encode(message))

            def poll(self):
                return None if thread.is_alive() else 0

            def stop(self):
                self.lines.put(None)

        handle = Handle()
        worker = DeviceWorker(device, lambda m: on_line(events.encode(m)), self.options.checkpoint, slot=slot)
        thread = threading.Thread(target=worker.serve, args=(iter(handle.lines.get, None),), daemon=True)
        thread.start()
        return handle


def test_recomputes_are_said_once_and_counted_per_unit(tmp_path, checkpoint, nan_in_half_precision):
    """bf16 on the CPU, NaN in the 1st and 3rd window computed: the queue records one fp32 recompute on units 0 and
    2 (one window each, unit size 1), and the progress says it once for the run."""
    nan_in_half_precision["poison"] = {1, 3}
    src = write_images(tmp_path / "imgs", synthetic_frames(70, 32, 24))  # 4 windows
    root = RunDir(tmp_path / "run")
    plan, _ = create_plan(src, root.path, checkpoint=str(checkpoint), input_size=28, precision="bf16", unit_size=1)
    backend = InProcessWorkers(["cpu"], WorkerOptions(str(checkpoint)))
    video = QueuedVideo(VideoRun("imgs", root, src), plan)
    backend.open(root, [video.run])
    shown = io.StringIO()
    work = WorkQueue([video], backend, ["cpu"], root, progress=BatchProgress([plan], shown), poll_interval=0.01)
    work.run()
    saved = json.loads(root.results.read_text())
    assert [(u["unit"], u["status"], u["fp32_recomputes"]) for u in saved["units"]] == [
        (0, "done", 1),
        (1, "done", 0),
        (2, "done", 1),
        (3, "done", 0),
    ]
    assert shown.getvalue().count("recomputed in fp32") == 1 and "4/4 units" in shown.getvalue()
    for w in range(4):  # the recomputed windows are stored in fp32 like the others (bf16 stores fp32)
        assert np.isfinite(np.load(root.piece("window", w))).all()


def test_bf16_is_refused_below_compute_capability_8():
    """Fake torch.cuda reporting a Turing card (7.5)."""
    with pytest.raises(UnsupportedDevice, match="bf16 needs a GPU of compute capability 8.0 .* has 7.5") as err:
        Runtime.create("cuda:0", "bf16", cuda=FakeCuda(capability=(7, 5)))
    assert len(str(err.value).splitlines()) == 1
    assert Runtime.create("cuda:0", "bf16", cuda=FakeCuda(capability=(8, 6))).precision == "bf16"
    with pytest.raises(UnsupportedDevice, match="CUDA is not available"):
        Runtime.create("cuda:0", "fp16", cuda=FakeCuda(available=False))


# ------------------------------------------------------------------------------------------ 6. out of memory


def test_out_of_memory_is_one_line_naming_what_to_lower(tmp_path, checkpoint):
    """torch's own OutOfMemoryError, raised by the fault injection as a GPU would raise it, in `vda work RUN_DIR`:
    retried once at half the micro-batch, then one line naming what to lower, and exit code 4."""
    src = write_images(tmp_path / "imgs", synthetic_frames(30, 32, 24))
    create_plan(src, tmp_path / "run", checkpoint=str(checkpoint), input_size=28)
    cmd = [sys.executable, "-m", "vda", "work", str(tmp_path / "run"), "--device", "cpu"]
    cmd += ["--checkpoint", str(checkpoint), "--micro-batch", "2"]
    env = {**os.environ, "VDA_FAIL_AT_UNIT": "0", "VDA_FAIL_MODE": "oom"}
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == EXIT_OUT_OF_MEMORY and "Traceback" not in done.stderr, done.stderr
    (text,) = done.stderr.strip().splitlines()
    assert text.startswith("vda: error: the GPU ran out of memory running vits at input size 28")
    assert all(s in text for s in ("micro-batch 1 in fp32", "lower --input-size or --max-res"))
    assert "out of memory at micro-batch 2; retrying here at 1" in done.stdout
    assert not list((tmp_path / "run").rglob("win_*.npy"))


class CpuAsGpus(LocalBackend):
    """Stands in for GPUs (none here): the real local backend, whose workers compute on the CPU while the queue
    knows them as cuda:0, cuda:1, ..., so that a run has distinct devices to move a unit between."""

    def command(self, slot, device):
        return super().command(slot, "cpu")

    def environment(self, device, parent_env=os.environ):
        return super().environment("cpu", parent_env)


def _gpu_run(tmp_path, checkpoint, monkeypatch, devices, retries=2):
    """`vda depth` on CpuAsGpus over `devices`, in this process: exit code, stderr, processing_results.json."""
    monkeypatch.setenv("VDA_THREADS", "1")  # the workers share this machine's cores, not one GPU each
    src = write_images(tmp_path / "imgs", synthetic_frames(50, 32, 24))  # 3 windows: units [0, 2), [2, 3)
    out = tmp_path / "out"
    options = WorkerOptions(str(checkpoint), micro_batch=2)
    request = DepthRequest(
        [str(src)], out, devices, checkpoint=str(checkpoint), input_size=28, unit_size=2, fmt="npy", retries=retries
    )
    shown = io.StringIO()
    code = run_depth(request, CpuAsGpus(devices, options), stream=shown)
    return code, shown.getvalue(), json.loads((out / "_run" / "processing_results.json").read_text())


@pytest.mark.slow
def test_out_of_memory_moves_to_an_untried_gpu(tmp_path, checkpoint, monkeypatch):
    """Unit 1 runs out of memory twice, wherever it runs first (at micro-batch 2, then at 1 in the worker's own
    retry): it is not retried there again but on the other GPU."""
    for name, value in {"VDA_FAIL_AT_UNIT": "1", "VDA_FAIL_MODE": "oom", "VDA_FAIL_TIMES": "2"}.items():
        monkeypatch.setenv(name, value)
    code, shown, record = _gpu_run(tmp_path, checkpoint, monkeypatch, ["cuda:0", "cuda:1"])
    assert code == 0, shown
    unit = record["units"][1]
    assert unit["status"] == "done" and unit["attempts"] == 2
    first, second = unit["devices"]
    assert first != second and unit["errors"][0].startswith(f"{first}: the GPU ran out of memory running vits")
    assert f"unit 1 failed on {first} (the GPU ran out of memory" in shown
    meta = DepthMeta.load(tmp_path / "out")
    assert meta.frame_count == 50 and all(np.isfinite(read_depth(tmp_path / "out", i, meta)).all() for i in range(50))


@pytest.mark.parametrize("devices", [["cuda:0"], ["cuda:0", "cuda:1"]])
def test_out_of_memory_on_every_gpu_fails_the_video_in_one_line(tmp_path, checkpoint, monkeypatch, devices):
    """Unit 1 always runs out of memory: it is tried once per GPU, whatever --retries allows, and then its video
    fails with one line naming what to lower."""
    monkeypatch.setenv("VDA_FAIL_AT_UNIT", "1")
    monkeypatch.setenv("VDA_FAIL_MODE", "oom")
    code, shown, record = _gpu_run(tmp_path, checkpoint, monkeypatch, devices, retries=5)
    assert code == 2
    unit = record["units"][1]
    assert (unit["status"], unit["attempts"], unit["device_bound"]) == ("failed", len(devices), True)
    assert sorted(unit["devices"]) == devices
    (line,) = [x for x in shown.splitlines() if x.startswith("vda: error:")]
    assert line.startswith(f"vda: error: {tmp_path / 'imgs'}: unit 1 out of memory on every device, last on cuda:")
    assert "with micro-batch 1 in fp32; lower --input-size or --max-res" in line
    assert record["videos"][0]["status"] == "failed" and not (tmp_path / "out" / "depth_meta.json").exists()


def test_out_of_memory_once_is_healed_on_the_same_gpu_at_half_the_micro_batch(tmp_path, checkpoint, monkeypatch):
    """Unit 1 runs out of memory once: its worker retries it itself at micro-batch 1, the unit is one attempt, and
    the device's record keeps the micro-batch that worked."""
    for name, value in {"VDA_FAIL_AT_UNIT": "1", "VDA_FAIL_MODE": "oom", "VDA_FAIL_TIMES": "1"}.items():
        monkeypatch.setenv(name, value)
    code, shown, record = _gpu_run(tmp_path, checkpoint, monkeypatch, ["cuda:0"])
    assert code == 0, shown
    unit = record["units"][1]
    assert (unit["status"], unit["attempts"], unit["errors"]) == ("done", 1, [])
    assert record["devices"][0]["micro_batch"] == 1


# ------------------------------------------------------------------------------------------ 8. --compile


@pytest.mark.slow
def test_compiled_encoder_runs_one_fixed_batch_shape(model, monkeypatch):
    """torch.compile replaced by a recorder: every batch it sees has micro_batch frames (no recompilation)."""
    shapes = []

    def fake_compile(module, dynamic=None):
        def run(*args):  # the head is compiled too (tests/test_recovery.py checks its shape)
            if isinstance(args[0], torch.Tensor):
                shapes.append(args[0].shape[0])
            return module(*args)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    frames = synthetic_frames(50, 32, 24)
    eager = np.stack(list(infer_video(model, frames, input_size=28, micro_batch=4)))
    compiled = np.stack(list(infer_video(model, frames, input_size=28, micro_batch=4, compile=True)))
    assert set(shapes) == {4} and rel_err(compiled, eager) <= TOL


def test_compile_without_a_compiler_is_refused_in_one_line():
    with pytest.raises(UnsupportedDevice, match="--compile needs a C compiler") as err:
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
    """The torch runtime on cuda:0 (built directly; no GPU is touched): fp32 means IEEE fp32 inside, not TF32."""
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = conv.fp32_precision, matmul.fp32_precision
    with TorchNetwork(torch.nn.Linear(1, 1), torch.device("cuda:0")).autocast("fp32"):
        assert (conv.fp32_precision, matmul.fp32_precision) == ("ieee", "ieee")
    assert (conv.fp32_precision, matmul.fp32_precision) == before
    with ieee_fp32():
        assert conv.fp32_precision == "ieee"


def test_the_fake_has_the_calls_torch_cuda_has():
    """A call renamed in torch.cuda would leave the fakes above passing on a name the real module lacks."""
    names = ("is_available", "get_device_capability", "get_device_name", "current_stream", "Event", "empty_cache")
    for name in (*names, "Stream", "stream"):
        assert callable(getattr(torch.cuda, name)) and callable(getattr(FakeCuda(), name))


# ------------------------------------------------------------------------------------------ 11. no host sync (22)


class FakeUploader(transfer_mod.Uploader):
    """The real Uploader with its one GPU-only call, the copy itself, replaced (no GPU here): it records which stream
    is current when the copy is queued and which stream the batch is for, and hands back a copy of the rows."""

    def _transfer(self, rows, compute):
        self.cuda.calls.append(("transfer", self.cuda.active, compute))
        return rows.clone()


@pytest.fixture
def pinned(monkeypatch):
    """The shapes of the pinned buffers asked for; plain host memory stands in (a CPU build of torch cannot pin)."""
    shapes: list[tuple] = []

    def pinned_empty(shape, dtype):
        shapes.append(tuple(shape))
        return torch.empty(shape, dtype=dtype)

    monkeypatch.setattr(transfer_mod, "pinned_empty", pinned_empty)
    return shapes


def test_frames_reach_the_gpu_through_reused_pinned_buffers_on_a_side_stream(pinned):
    """Fake torch.cuda and a fake copy (no GPU here). Frames are copied once into one of 3 pinned buffers, reused
    round-robin; each copy is queued on the side stream, the compute stream waits for its event (on the device), and a
    buffer is filled again only after the host waited for the copy that last read it; the host waits for no other
    event. What only `make gpu-check` on a GPU proves: that the copies overlap the compute, and that the caching
    allocator (record_stream) keeps each batch's memory until the compute stream is done with it."""
    cuda = FakeCuda()
    upload = FakeUploader(torch.device("cuda:0"), 2, cuda)
    frames = [np.full((4, 6, 3), k, np.uint8) for k in range(9)]
    chunks = [frames[0:2], frames[2:4], frames[4:6], frames[6:8], frames[8:9]]  # the last batch is short
    batches = [upload(chunk) for chunk in chunks]
    assert pinned == [(2, 4, 6, 3)] * 3  # allocated once each, reused after
    assert all(torch.equal(b, torch.from_numpy(np.stack(c))) for b, c in zip(batches, chunks))
    transfers = [c for c in cuda.calls if c[0] == "transfer"]
    assert transfers == [("transfer", "side-of-cuda:0", "stream-of-cuda:0")] * 5
    records = [c for c in cuda.calls if c[0] == "record"]
    waits = [c for c in cuda.calls if c[0] == "wait_event"]
    assert records == [("record", "side-of-cuda:0", True)] * 5
    assert waits == [("wait_event", "stream-of-cuda:0", f"event-{k}") for k in range(1, 6)]
    syncs = [(k, c) for k, c in enumerate(cuda.calls) if c[0] == "synchronize"]
    assert [c for _, c in syncs] == [
        ("synchronize", "event-1", "side-of-cuda:0"),
        ("synchronize", "event-2", "side-of-cuda:0"),
    ]
    # buffer 0 is waited for after the third copy and before the fourth is queued; buffer 1 before the fifth
    at = [k for k, c in enumerate(cuda.calls) if c[0] == "transfer"]
    assert at[2] < syncs[0][0] < at[3] < syncs[1][0] < at[4]
    assert [c for c in cuda.calls if c[0] == "Stream"] == [("Stream", "cuda:0")]  # one side stream, kept


def test_the_finiteness_flag_is_copied_without_a_host_wait(pinned):
    """Fake torch.cuda (no GPU here): the flag goes to pinned memory with an event on the device's stream, and
    nothing waits for it until it is read (PendingWindow.finite). On CPU the flag is the tensor itself."""
    cuda = FakeCuda()
    flag = torch.tensor(False)
    host, done = transfer_mod.to_host(flag, torch.device("cuda:1"), cuda)
    assert pinned == [()] and not host and done.name == "event-1"
    assert cuda.calls == [("current_stream", torch.device("cuda:1")), ("record", "stream-of-cuda:1", True)]
    pending = window_mod.PendingWindow(3, 70, [], [], "fp16", torch.zeros(1), host, done)
    assert not pending.finite() and cuda.calls[-1] == ("synchronize", "event-1", "stream-of-cuda:1")
    assert transfer_mod.to_host(flag, torch.device("cpu"), cuda) == (flag, None) and len(cuda.calls) == 3


@pytest.fixture
def host_reads(monkeypatch):
    """Every read of a tensor's value by the host (bool, item, tolist, float, int), in a log that the tests add their
    launches to: on a GPU each of these waits for the device (a sync); on the CPU they are what the code would wait
    on there."""
    log: list[tuple] = []
    for name in ("__bool__", "item", "tolist", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)

        def read(self, *args, _original=original, _name=name):
            log.append(("read", _name))
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, read)
    return log


@pytest.mark.slow
def test_no_host_sync_between_launching_a_window_and_the_next(model, host_reads, monkeypatch):
    """The runner in bf16 on the CPU (autocast runs there; no GPU here) with every host read of a tensor logged:
    window w's finiteness is read only once w + 1 is launched, its copy to the host (`stage`) is queued inside its
    own launch, and no other read happens between two launches. What only `make gpu-check` on a GPU proves: that
    torch itself hides no sync in the launches (an allocator stall, a CPU fallback), as the GPU timeline shows."""
    launch = WindowRunner.launch
    monkeypatch.setattr(
        WindowRunner, "launch", lambda self, w, *a: host_reads.append(("launch", w)) or launch(self, w, *a)
    )
    runner = WindowRunner(model, Runtime.create("cpu", "bf16"), (28, 42))
    feed = FrameFeed(enumerate(synthetic_frames(92, 32, 24)), total=92)  # 4 windows

    def stage(depth, precision):
        host_reads.append(("stage",))

    out = [(w, fresh) for w, _, fresh, _ in window_mod.launch_settled(runner, range(4), feed, 92, stage)]
    assert out == [(0, 0), (1, 0), (2, 0), (3, 0)]
    assert host_reads == [
        ("launch", 0), ("stage",), ("launch", 1), ("stage",), ("read", "__bool__"),
        ("launch", 2), ("stage",), ("read", "__bool__"), ("launch", 3), ("stage",), ("read", "__bool__"),
        ("read", "__bool__"),
    ]  # fmt: skip


@pytest.mark.slow
def test_stream_mode_reads_finiteness_once_per_group_of_frames(model, host_reads, monkeypatch):
    """Stream mode in bf16 on the CPU (no GPU here), host reads logged: one read per group of STREAM_CHECK frames,
    a group read only once the next group is launched; none per frame. `make gpu-check` alone shows the timeline."""
    launch = stream_mod._Stream.launch
    monkeypatch.setattr(
        stream_mod._Stream, "launch", lambda self, i, *a: host_reads.append(("launch", i)) or launch(self, i, *a)
    )
    k = stream_mod.STREAM_CHECK
    out = list(
        stream_mod.stream_depths(
            model, Runtime.create("cpu", "bf16"), enumerate(synthetic_frames(12, 32, 24)), (28, 42)
        )
    )
    assert [i for i, _ in out] == list(range(12))
    reads = [n for n, entry in enumerate(host_reads) if entry[0] == "read"]
    assert [host_reads[n] for n in reads] == [("read", "tolist")] * (12 // k)
    launched_before = [sum(e[0] == "launch" for e in host_reads[:n]) for n in reads]
    assert launched_before == [
        2 * k,
        3 * k,
        3 * k,
    ]  # group g is read after group g + 1 is launched (the last: at the end)
