"""Issue 20: an fp32 recompute that heals, out of memory that recovers, torch versions that work, fp16 that is exact.

No GPU is available here. The fp16 overflow is stood in for by bf16 on the CPU (autocast runs there) with `inf`
injected into the encoder's output through a forward hook; out of memory by torch's own OutOfMemoryError raised from
a forward hook; fp16 itself by CPU autocast in fp16 where a GPU is named (Runtime.create patched: a CPU build refuses
fp16); torch.cuda by a fake where the code calls it; a worker that dies inside units (Xid, ECC) by a fake worker
handle. What these cannot prove is left to `make gpu-check` (README, "GPU day").
"""

from __future__ import annotations

import io
import json
import types

import numpy as np
import pytest
import torch
from conftest import TOL, read_output, rel_err, synthetic_frames, write_images
from test_gpu_logic import FakeCuda, InProcessWorkers

from vda import events
from vda.config import Config
from vda.core import stitch
from vda.device import compat, worker
from vda.device import guard as guard_mod
from vda.device import runtime as runtime_mod
from vda.device import stream as stream_mod
from vda.device import unit as unit_mod
from vda.device import window as window_mod
from vda.device.clock import StageClock
from vda.device.compat import OOM_ERROR
from vda.device.feed import FrameFeed
from vda.device.guard import PrecisionGuard
from vda.device.runtime import Runtime
from vda.device.single_pass import infer_video
from vda.device.window import WindowRunner
from vda.device.worker import DeviceWorker
from vda.io.rundir import RunDir
from vda.model.dinov2 import DinoV2
from vda.orchestrator.backends.base import VideoRun
from vda.orchestrator.batch import DepthRequest, run_depth
from vda.orchestrator.launch import WorkerOptions, compile_shape_warning, worker_env
from vda.orchestrator.planning import create_plan
from vda.orchestrator.progress import BatchProgress
from vda.orchestrator.queue import QueuedVideo, RunFailed, WorkQueue
from vda.system import host_threads

pytestmark = pytest.mark.gpu_logic
SHAPE = (28, 42)  # network shape of the 32x24 synthetic frames at input size 28


@pytest.fixture
def encoder_fault():
    """A forward hook on every DinoV2 encoder: `inf` in the first feature of the first frame of its `at`-th calls
    under autocast (the reduced-precision pass; the fp32 recompute runs without autocast, so it is clean), or of
    every such call with `always`. In window mode call 1 holds frame 0; in stream mode call k is frame k-1."""
    state = {"at": {1}, "always": False, "calls": 0, "fired": 0}

    def hook(module, args, output):
        if not isinstance(module, DinoV2) or not torch.is_autocast_enabled("cpu"):
            return None
        state["calls"] += 1
        if not state["always"] and state["calls"] not in state["at"]:
            return None
        state["fired"] += 1
        out = [level.clone() for level in output]
        out[0][0, 0, 0] = float("inf")
        return out

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    yield state
    handle.remove()


def _queue_run(tmp_path, checkpoint, devices: list[str], n_frames: int, **plan_options):
    """The queue over in-process workers (test_gpu_logic.InProcessWorkers: the hooks here reach their models):
    what it printed, and processing_results.json."""
    src = write_images(tmp_path / "imgs", synthetic_frames(n_frames, 32, 24))
    root = RunDir(tmp_path / "run")
    plan, _ = create_plan(src, root.path, checkpoint=str(checkpoint), input_size=28, **plan_options)
    backend = InProcessWorkers(devices, WorkerOptions(str(checkpoint)))
    video = QueuedVideo(VideoRun("imgs", root, src), plan)
    backend.open(root, [video.run])
    shown = io.StringIO()
    progress = BatchProgress([plan], shown)
    WorkQueue([video], backend, devices, root, progress=progress, poll_interval=0.01, stream=shown).run()
    return root, shown.getvalue(), json.loads(root.results.read_text())


def _windows(model, runtime, frames, guard=None):
    runner = WindowRunner(model, runtime, SHAPE, guard)
    feed, n = FrameFeed(enumerate(frames), total=len(frames)), len(frames)
    depths = [runner.run(w, feed, n) for w in range(stitch.num_windows(n))]
    return runner, depths


# ------------------------------------------------------------------------------------------ 1. the cache heals


@pytest.mark.slow
def test_one_encoder_fault_costs_one_window_recompute(model, encoder_fault):
    """Before the fix, one inf in frame 0's features made all 6 windows of 120 frames recompute (170 frames)."""
    frames = synthetic_frames(120, 32, 24)
    runner, depths = _windows(model, Runtime.create("cpu", "bf16"), frames)
    assert encoder_fault["fired"] == 1 and runner.recomputed == [0]
    assert runner.fp32_frames == len(set(stitch.window_inputs(0, 120))) <= stitch.WINDOW
    assert all(torch.isfinite(d).all() for d in depths)
    for feats in runner._features.values():  # healed entries are back in the compute dtype (bf16 stays finite)
        assert all(f.dtype == torch.bfloat16 for f in feats)
    encoder_fault["at"] = set()
    _, clean = _windows(model, Runtime.create("cpu", "bf16"), frames)
    assert rel_err(np.stack(depths[1:]), np.stack(clean[1:])) <= 0.05


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["window 1", "always"])
def test_a_fault_read_one_window_late_gives_what_reading_it_at_once_gives(model, encoder_fault, fault):
    """Issue 22: the worker reads window w's finiteness only once w + 1 is launched (launch_settled). A fault in w
    then recomputes w in fp32 (healing the cache) and launches w + 1 again: decoded from the healed features, its own
    new frames kept (re-encoded only after a switch to fp32). The depths, recomputes and frames encoded again equal
    reading each window at once (`run`), bit for bit; `redone` names the windows launched twice."""
    frames = synthetic_frames(120, 32, 24)
    encoder_fault["at"], encoder_fault["always"] = {9}, fault == "always"  # call 9: window 1's first new frames
    at_once, depths = _windows(model, Runtime.create("cpu", "bf16"), frames, PrecisionGuard())
    encoder_fault["calls"] = 0
    late = WindowRunner(model, Runtime.create("cpu", "bf16"), SHAPE, PrecisionGuard())
    feed = FrameFeed(enumerate(frames), total=120)
    settled = list(window_mod.launch_settled(late, range(6), feed, 120))
    assert [w for w, *_ in settled] == list(range(6)) and all(
        torch.equal(a, b) for a, (_, b, *_) in zip(depths, settled)
    )
    assert late.recomputed == at_once.recomputed == ([1] if fault == "window 1" else [0, 1, 2])
    assert [w for w, _, fresh, _ in settled if fresh] == late.recomputed
    assert late.fp32_frames == at_once.fp32_frames and late.redone == [r + 1 for r in late.recomputed]
    assert (late.rt.precision == "fp32") == (fault == "always")


@pytest.mark.slow
def test_the_worker_stores_a_late_found_fault_as_reading_it_at_once_would(
    tmp_path, checkpoint, model, encoder_fault, monkeypatch
):
    """The worker (DeviceWorker.serve, bf16 on the CPU) settles each window after the next is launched: with a fault
    in window 1, its pieces equal the runner's read-at-once depths bit for bit (window 1 in fp32, window 2 redone),
    and each window's copy to the host is queued once, at its launch: again only for window 1 (its recompute is new
    depth) and window 2 (launched again). Queued: windows 0, 1, 2, 2 again, 1's recompute (fp32), 3: 6 for 4."""
    frames = synthetic_frames(70, 32, 24)
    src = write_images(tmp_path / "imgs", frames)
    create_plan(src, tmp_path / "run", checkpoint=str(checkpoint), input_size=28, precision="bf16")
    staged = []
    stage = worker.piece_to_host
    recorded = lambda depth, precision: staged.append(precision) or stage(depth, precision)  # noqa: E731
    monkeypatch.setattr(worker, "piece_to_host", recorded)
    monkeypatch.setattr(unit_mod, "piece_to_host", recorded)
    encoder_fault["at"] = {9}  # window 1's first new frames
    said: list[events.Message] = []
    work = DeviceWorker("cpu", said.append, checkpoint=str(checkpoint))
    work.serve([events.encode(events.Assign("imgs", str(tmp_path / "run"), str(src), 0)), events.encode(events.Stop())])
    (done,) = [m for m in said if isinstance(m, events.Done)]
    assert done.fp32_recomputes == 1 and staged == ["bf16"] * 4 + ["fp32", "bf16"]
    encoder_fault["calls"] = 0
    at_once, depths = _windows(model, Runtime.create("cpu", "bf16"), frames)
    assert at_once.recomputed == [1]
    for w, depth in enumerate(depths):
        assert np.array_equal(np.load(RunDir(tmp_path / "run").piece("window", w)), depth.numpy())


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["frame 5", "always"])
def test_stream_mode_gives_the_same_depth_however_late_finiteness_is_read(model, encoder_fault, monkeypatch, fault):
    """Stream mode reads finiteness in groups (STREAM_CHECK frames, a group after the next is launched): a fault
    found late relaunches the frames after it from the healed cache. Groups of 1, 4 and 20 frames (the whole video
    launched before any read) give the same depths and recomputes bit for bit: the relaunch gives what computing
    frame by frame gives."""
    frames = synthetic_frames(20, 32, 24)
    runs = []
    for group in (1, 4, 20):
        monkeypatch.setattr(stream_mod, "STREAM_CHECK", group)
        encoder_fault.update(at={6}, always=fault == "always", calls=0)
        recomputed: list[int] = []
        runtime = Runtime.create("cpu", "bf16")
        out = list(stream_mod.stream_depths(model, runtime, enumerate(frames), SHAPE, recomputed, PrecisionGuard()))
        runs.append((recomputed, out))
    expected = [5] if fault == "frame 5" else list(range(guard_mod.FP32_AFTER))
    for recomputed, out in runs:
        assert recomputed == expected and [i for i, _ in out] == list(range(20))
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(out, runs[0][1]))


def test_a_feature_that_overflows_the_reduced_dtype_stays_fp32():
    big = torch.tensor([[1.0, 2.0], [1.0, 1e6]])  # frame 1 does not fit fp16 (max 65504)
    (f0,), (f1,) = guard_mod._reduced([big], torch.float16)
    assert f0.dtype == torch.float16 and f1.dtype == torch.float32 and f1[1] == 1e6


def test_stream_mode_one_encoder_fault_costs_one_frame(model, encoder_fault):
    encoder_fault["at"] = {6}  # frame 5
    recomputed: list[int] = []
    runtime = Runtime.create("cpu", "bf16")
    out = list(stream_mod.stream_depths(model, runtime, enumerate(synthetic_frames(40, 32, 24)), SHAPE, recomputed))
    assert encoder_fault["fired"] == 1 and recomputed == [5] and all(torch.isfinite(d).all() for _, d in out)


# ------------------------------------------------------------------------------------------ 2. K in a row: fp32


@pytest.mark.slow
def test_after_k_recomputes_in_a_row_the_runner_computes_in_fp32(model, encoder_fault):
    encoder_fault["always"] = True  # a card that always overflows
    guard = PrecisionGuard()
    runner, depths = _windows(model, Runtime.create("cpu", "bf16"), synthetic_frames(120, 32, 24), guard)
    assert runner.recomputed == list(range(guard_mod.FP32_AFTER)) and runner.rt.precision == "fp32"
    assert "--precision fp32" in guard.switched and len(guard.switched.splitlines()) == 1
    assert all(torch.isfinite(d).all() for d in depths)
    assert WindowRunner(model, Runtime.create("cpu", "bf16"), SHAPE, guard).rt.precision == "fp32"  # next unit too


def test_the_worker_switch_is_said_once_and_recorded_per_device(tmp_path, checkpoint, encoder_fault):
    """bf16 on the CPU, inf in every reduced-precision encoding: after 3 windows the worker runs fp32, the run
    says so in one line naming --precision fp32, and processing_results.json keeps it on the device."""
    encoder_fault["always"] = True
    root, shown, saved = _queue_run(tmp_path, checkpoint, ["cpu"], 120, precision="bf16", unit_size=2)
    assert [u["fp32_recomputes"] for u in saved["units"]] == [2, 1, 0]
    assert "--precision fp32" in saved["devices"][0]["fp32_switch"]
    assert len([line for line in shown.splitlines() if "--precision fp32" in line]) == 1
    assert [np.load(root.piece("window", w)).dtype for w in range(6)] == [np.float32] * 6


# ------------------------------------------------------------------------------------------ 3. out of memory


@pytest.fixture
def oom_above(monkeypatch):
    """torch's OutOfMemoryError from the encoder for batches of more than `frames` frames, as a GPU would raise it."""
    state = {"frames": 1, "raised": 0}

    def hook(module, args, output):
        if isinstance(module, DinoV2) and args[0].shape[0] > state["frames"]:
            state["raised"] += 1
            raise OOM_ERROR("CUDA out of memory. Tried to allocate 2.00 GiB (raised by the test's hook)")

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    yield state
    handle.remove()


@pytest.mark.slow
def test_out_of_memory_retries_here_at_half_the_micro_batch_and_keeps_it(
    tmp_path, checkpoint, model, oom_above, monkeypatch
):
    src = write_images(tmp_path / "imgs", synthetic_frames(50, 32, 24))
    create_plan(src, tmp_path / "run", checkpoint=str(checkpoint), input_size=28, unit_size=2)  # units [0,2), [2,3)
    said: list[events.Message] = []
    cuda = FakeCuda()
    work = DeviceWorker("cpu", said.append, checkpoint=str(checkpoint), micro_batch=2, cuda=cuda)
    assigns = [events.encode(events.Assign("imgs", str(tmp_path / "run"), str(src), u)) for u in (0, 1)]
    lines: list[str] = []
    monkeypatch.setattr(worker, "say", lines.append)
    work.serve([*assigns, events.encode(events.Stop())])
    done = [m for m in said if isinstance(m, events.Done)]
    assert [(m.unit, m.micro_batch) for m in done] == [(0, 1), (1, 1)]
    assert not [m for m in said if isinstance(m, events.Failed)] and cuda.calls == []  # a CPU: no cache to empty
    assert oom_above["raised"] == 1 and sum("retrying here at 1" in line for line in lines) == 1
    oom_above["frames"] = 99
    runner = WindowRunner(model, Runtime.create("cpu", "fp32", 1), SHAPE)
    feed = FrameFeed(enumerate(synthetic_frames(50, 32, 24)), total=50)
    for w in range(3):
        assert rel_err(np.load(RunDir(tmp_path / "run").piece("window", w)), runner.run(w, feed, 50).numpy()) <= TOL


def test_free_device_memory_empties_the_cuda_cache_only_on_cuda():
    """Fake torch.cuda."""
    cuda = FakeCuda()
    compat.free_device_memory(torch.device("cpu"), cuda)
    compat.free_device_memory(torch.device("cuda:0"), cuda)
    assert cuda.calls == [("empty_cache",)] and callable(torch.cuda.empty_cache)


def test_a_worker_whose_model_does_not_fit_is_retired_in_one_line(tmp_path, checkpoint, monkeypatch):
    """Two workers on one device (vitl on cuda:0,cuda:0): the second model load runs out of memory. That worker's
    device slot is retired with one line, its unit is not charged, the other worker computes everything."""
    loads = {"n": 0}
    original = worker.load_model

    def load_model(*args, **kwargs):
        loads["n"] += 1
        if loads["n"] == 2:
            raise OOM_ERROR("CUDA out of memory (raised by the test)")
        return original(*args, **kwargs)

    monkeypatch.setattr(worker, "load_model", load_model)
    _, shown, saved = _queue_run(tmp_path, checkpoint, ["cpu", "cpu"], 70, unit_size=1)
    assert all(u["status"] == "done" and u["attempts"] == 1 for u in saved["units"])
    retired = [d for d in saved["devices"] if d["retired"]]
    assert len(retired) == 1 and "out of memory loading the vits weights" in retired[0]["retired"]
    assert shown.count("out of memory loading") == 1


class DyingWorkers:
    """Stands in for a GPU whose worker dies inside every unit it begins (an Xid, an ECC error: none here): a fake
    handle that says Ready, begins the first unit it is handed (a Ready after it), and exits with 139."""

    name = "fake"

    def __init__(self):
        self.starts = 0

    def worker_path(self, path):
        return str(path)

    def start_worker(self, slot, device, log_path, on_line):
        self.starts += 1

        class Handle:
            reason = "Xid 79: GPU has fallen off the bus"
            code = None

            def send(self, message):
                if isinstance(message, events.Assign) and self.code is None:
                    self.code = 139
                    on_line(events.encode(events.Ready(1)))

            def poll(self):
                return self.code

            def stop(self):
                self.code = self.code or 0

        on_line(events.encode(events.Ready(1)))
        return Handle()


def test_a_device_whose_worker_dies_inside_k_units_in_a_row_is_retired(tmp_path, checkpoint):
    src = write_images(tmp_path / "imgs", synthetic_frames(70, 32, 24))
    root = RunDir(tmp_path / "run")
    plan, _ = create_plan(src, root.path, checkpoint=str(checkpoint), input_size=28, unit_size=1)  # 4 units
    video = QueuedVideo(VideoRun("imgs", root, src), plan)
    shown = io.StringIO()
    root.logs.mkdir(parents=True, exist_ok=True)
    queue = WorkQueue(
        [video], DyingWorkers(), ["cuda:0"], root, retries=5, progress=BatchProgress([plan], shown), poll_interval=0.01
    )
    with pytest.raises(RunFailed, match="no device is left"):
        queue.run()
    (record,) = json.loads(root.results.read_text())["devices"]
    assert record["retired"].startswith("its worker died inside 3 different units in a row (exit 139: Xid 79")
    assert record["worker_starts"] == 3


# ------------------------------------------------------------------------------------------ 4. torch versions


def test_out_of_memory_error_falls_back_to_torch_cuda(monkeypatch):
    assert compat.out_of_memory_error() is torch.OutOfMemoryError
    monkeypatch.delattr(torch, "OutOfMemoryError")  # torch before 2.5
    assert compat.out_of_memory_error() is torch.cuda.OutOfMemoryError


def test_ieee_fp32_falls_back_to_allow_tf32():
    """torch before fp32_precision: the backends as an older torch has them (the newer attribute hidden)."""
    old = types.SimpleNamespace(
        cudnn=types.SimpleNamespace(allow_tf32=True), cuda=types.SimpleNamespace(matmul=types.SimpleNamespace())
    )
    old.cuda.matmul.allow_tf32 = True
    with compat.ieee_fp32(old):
        assert (old.cudnn.allow_tf32, old.cuda.matmul.allow_tf32) == (False, False)
    assert (old.cudnn.allow_tf32, old.cuda.matmul.allow_tf32) == (True, True)


def test_dynamo_limit_falls_back_to_cache_size_limit():
    assert compat.dynamo_recompile_limit() == torch._dynamo.config.recompile_limit
    assert compat.dynamo_recompile_limit(types.SimpleNamespace(cache_size_limit=8)) == 8
    assert compat.dynamo_recompile_limit(types.SimpleNamespace()) is None


# ------------------------------------------------------------------------------------------ 5. what workers get


def test_gpu_workers_get_expandable_segments_unless_the_user_set_their_own(tmp_path):
    settings = Config.from_env({"VDA_CUDNN_DETERMINISTIC": "1", "VDA_COMPILE_CACHE": str(tmp_path / "cc")})
    env = worker_env(["cuda:0"], "cuda:0", WorkerOptions(compile=True), settings, {})
    assert env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True" and env["VDA_CUDNN_DETERMINISTIC"] == "1"
    assert env["TORCHINDUCTOR_CACHE_DIR"] == f"{tmp_path / 'cc'}/inductor"
    assert env["TRITON_CACHE_DIR"] == f"{tmp_path / 'cc'}/triton"
    own = worker_env(
        ["cuda:0"], "cuda:0", WorkerOptions(), settings, {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:64"}
    )
    assert own["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:64" and "TRITON_CACHE_DIR" not in own
    cpu = worker_env(["cpu"], "cpu", WorkerOptions(), settings, {})
    assert "PYTORCH_CUDA_ALLOC_CONF" not in cpu and "VDA_CUDNN_DETERMINISTIC" not in cpu
    assert Config.from_env({}).compile_cache.parts[-3:] == (".cache", "vda", "compile")


def test_cudnn_deterministic_is_a_setting(monkeypatch):
    """Fake torch.cuda: a Runtime on cuda:0 applies VDA_CUDNN_DETERMINISTIC=1; the flag is restored after."""
    from vda import config

    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    monkeypatch.setattr(config, "_loaded", Config.from_env({"VDA_CUDNN_DETERMINISTIC": "1"}))
    try:
        Runtime.create("cuda:0", "fp16", cuda=FakeCuda())
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved
    with pytest.raises(Exception, match="VDA_CUDNN_DETERMINISTIC='yes' is not 0 or 1"):
        Config.from_env({"VDA_CUDNN_DETERMINISTIC": "yes"})


# ------------------------------------------------------------------------------------------ 6. --compile


def test_compile_covers_the_head_at_its_fixed_window_shape(model, monkeypatch):
    """torch.compile replaced by a recorder (its real use needs a C compiler per kernel): the encoder sees batches of
    micro_batch frames, the head one 32-frame window, and the result equals eager."""
    seen: dict[str, set] = {"DinoV2": set(), "TemporalDPTHead": set()}

    def fake_compile(module, dynamic=None):
        def run(*args):
            seen[type(module).__name__].add(args[0].shape[0] if isinstance(args[0], torch.Tensor) else args[0][0].shape)
            return module(*args)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(runtime_mod, "check_compiler", lambda gpu=False: None)
    frames = synthetic_frames(50, 32, 24)
    eager = np.stack(list(infer_video(model, frames, input_size=28, micro_batch=4)))
    compiled = np.stack(list(infer_video(model, frames, input_size=28, micro_batch=4, compile=True)))
    assert seen["DinoV2"] == {4} and len(seen["TemporalDPTHead"]) == 1
    assert next(iter(seen["TemporalDPTHead"]))[0] == stitch.WINDOW and rel_err(compiled, eager) <= TOL


def test_more_network_shapes_than_dynamo_keeps_is_one_warning():
    assert compile_shape_warning({(28, 42)}, 8) is None and compile_shape_warning({(1, 1), (2, 2)}, None) is None
    line = compile_shape_warning({(14 * i, 28) for i in range(1, 11)}, 8)
    assert line.startswith("vda: warning: --compile: this batch has 10 network shapes") and "\n" not in line


# ------------------------------------------------------------------------------------------ 7. fp16 is exact


def test_fp16_vda_depth_on_two_devices_equals_the_fp16_single_pass(tmp_path, checkpoint, model, monkeypatch):
    """CPU autocast in fp16 stands in for the GPUs' (a CPU build refuses fp16, so Runtime.create is patched to give
    it for the names cuda:0, cuda:1): the workers store fp16 windows, and the single pass rounds the same way, so
    the merged result equals it bit for bit."""
    create = Runtime.create
    monkeypatch.setattr(
        Runtime,
        "create",
        classmethod(lambda cls, device="cpu", precision="fp32", micro_batch=None, compile=False, cuda=None: cls(
            torch.device("cpu"), "fp16", (create("cpu", "fp32", micro_batch)).micro_batch, False
        )),
    )  # fmt: skip
    frames = synthetic_frames(70, 32, 24)
    src = write_images(tmp_path / "imgs", frames)
    out = tmp_path / "out"
    devices = ["cuda:0", "cuda:1"]
    request = DepthRequest(
        [str(src)], out, devices, checkpoint=str(checkpoint), input_size=28, unit_size=1, fmt="npy", precision="fp16"
    )
    assert run_depth(request, InProcessWorkers(devices, WorkerOptions(str(checkpoint))), stream=io.StringIO()) == 0
    run = RunDir(out / "_run")
    assert np.load(run.piece("window", 1)).dtype == np.float16
    # the workers here are threads of this process, which run_depth keeps at one thread (host_threads: a real worker
    # is a process of its own), and CPU fp16 rounds by thread count: the single pass runs at the workers' count
    with host_threads():
        single = np.stack(list(infer_video(model, frames, input_size=28, precision="fp16")))
    assert np.array_equal(read_output(out), single)


# ------------------------------------------------------------------------------------------ 8. stage times


def test_stage_clock_reads_gpu_time_from_events_after_the_sync():
    """Fake torch.cuda events (elapsed_time in ms, as torch's): "gpu" is the span between the first and last."""
    cuda = FakeCuda()

    made_at = iter(range(100))

    def event(enable_timing=False):
        made = types.SimpleNamespace(t=next(made_at), record=lambda stream: cuda.calls.append(("record", stream)))
        made.synchronize = lambda: cuda.calls.append(("synchronize", made.t))  # rows are read after the last event
        made.elapsed_time = lambda other: 1000.0 * (other.t - made.t)
        return made

    cuda.Event = event
    clock = StageClock(enabled=True, cuda=cuda)
    clock.start(3)
    clock.device_mark(torch.device("cuda:0"))
    clock.lap("compute")
    clock.device_mark(torch.device("cuda:0"))
    clock.end()
    assert not [c for c in cuda.calls if c[0] == "synchronize"]  # issue 22: no wait at a row's end
    (row,) = clock.rows
    assert row["window"] == 3 and row["gpu"] == 1.0 and row["total"] >= row["compute"] >= 0
    assert cuda.calls[-1] == ("synchronize", 1)  # the rows are read once the last event has completed
    off = StageClock()
    off.start(0)
    off.lap("batch")
    off.end()
    assert off.rows == []
