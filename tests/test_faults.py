"""Faults and bad input (issue 5): each test injects the fault for real.

Workers are real processes killed with real signals; the disk-full test mounts a real tmpfs (root only).
The only stand-in is the device-choice test, whose fake backend pretends to have GPUs (none exist here).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, synthetic_frames, write_images, write_video

from orchestrator.planning import create_plan
from orchestrator.scheduler import RunFailed, run_chunks
from vda.merge import merge
from vda.plan import Plan, PlanError
from vda.worker import InjectedFault, run_chunk, unit_path
from vda.writers import DepthMeta, read_depth

SMALL = ["--input-size", "56"]


# Every run here uses one thread per worker, so interrupted and uninterrupted runs are compared bit for bit
# (another thread count changes the float summation order, hence the last bits).
ONE_THREAD = {"VDA_THREADS": "1"}


def vda(*args, env=None, timeout=600):
    """The real CLI in a subprocess: exit code, stdout, stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *map(str, args)],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, **ONE_THREAD, **(env or {})},
    )
    return proc.returncode, proc.stdout, proc.stderr


def depth_args(video, out, checkpoint, devices="cpu,cpu") -> list:
    """`vda depth` arguments shared by the runs that are compared with `reference`."""
    return ["depth", video, "-o", out, "--devices", devices, "--checkpoint", checkpoint, "--format", "npy", *SMALL]


def outputs(out: Path) -> np.ndarray:
    meta = DepthMeta.load(out)
    return np.stack([read_depth(out, i, meta) for i in range(meta.frame_count)])


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("v") / "clip.mp4", synthetic_frames(90, 64, 48))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, video, checkpoint) -> np.ndarray:
    """An uninterrupted run, to compare interrupted ones against."""
    out = tmp_path_factory.mktemp("ref") / "out"
    code, _, err = vda(*depth_args(video, out, checkpoint))
    assert code == 0, err
    return outputs(out)


def test_sigkilled_worker_resumes_and_matches(tmp_path, video, checkpoint, reference):
    run = tmp_path / "run"
    create_plan(video, run, ["cpu"], checkpoint=str(checkpoint), input_size=56)
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "run-chunk", run, "--chunk", "0", "--checkpoint", checkpoint],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **ONE_THREAD},
    )
    marker = unit_path(run, 0, "window", 1).with_suffix(".done")
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stored = unit_path(run, 0, "window", 0).parent
    done = sorted(p.name for p in stored.glob("*.done"))
    assert 2 <= len(done) < 5, done  # killed mid-chunk
    for npy in stored.glob("win_*.npy"):
        np.load(npy)  # every file under a final name is complete
    mtimes = {p.name: p.stat().st_mtime_ns for p in stored.glob("win_*.npy") if p.with_suffix(".done").exists()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert run_chunk(run, 0, checkpoint=str(checkpoint)) == 5 - len(done)  # only unfinished windows
    finally:
        torch.set_num_threads(threads)
    assert all((stored / name).stat().st_mtime_ns == t for name, t in mtimes.items())
    merge(run, tmp_path / "out", "npy", workers=1)
    assert np.array_equal(outputs(tmp_path / "out"), reference)


def test_injected_failure_is_retried_and_recorded(tmp_path, video, checkpoint, reference):
    out = tmp_path / "out"
    env = {"VDA_FAIL_AT_UNIT": "1:3", "VDA_FAIL_TIMES": "1", "VDA_FAIL_MODE": "kill"}  # like an OOM kill, once
    code, _, err = vda(*depth_args(video, out, checkpoint), env=env)
    assert code == 0, err
    assert "chunk 1 failed on cpu (exit -9); retrying" in err
    results = json.loads((out / "_run" / "processing_results.json").read_text())["chunks"]
    assert [r["status"] for r in results] == ["done", "done"]
    assert results[1]["attempts"] == 2 and results[1]["exit_codes"] == [-9, 0]
    assert results[0]["frames"] + results[1]["frames"] == 90
    assert "injecting fault" in (out / "_run" / "logs" / "chunk_1.log").read_text()
    assert np.array_equal(outputs(out), reference)


def test_failure_after_retries_names_the_log_and_resumes(tmp_path, video, checkpoint, reference):
    out = tmp_path / "out"
    args = [*depth_args(video, out, checkpoint, devices="cpu"), "--retries", "1"]
    code, _, err = vda(*args, env={"VDA_FAIL_AT_UNIT": "2"})
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("vda: error: chunk 0 failed 2 time(s)")
    assert "chunk_0.log" in err and "Traceback" not in err
    assert not (out / "depth_meta.json").exists()
    code, _, err = vda(*args)  # fixed: the same command resumes
    assert code == 0, err
    assert "resuming" in err
    assert np.array_equal(outputs(out), reference)


class _FakeGpuBackend:
    """Stand-in for GPU workers (no GPU exists here): chunk 0 fails on its first device."""

    def __init__(self):
        self.starts = []

    def start(self, plan, run_dir, chunk, device, log_path, on_line):
        self.starts.append((chunk, device))
        code = 1 if (chunk == 0 and len([s for s in self.starts if s[0] == 0]) == 1) else 0

        class H:
            def poll(self):
                return code

            def stop(self):
                pass

        return H()


def test_failed_chunk_moves_to_another_device(tmp_path, video, checkpoint):
    plan, _ = create_plan(video, tmp_path / "run", ["cpu", "cpu", "cpu"], checkpoint=str(checkpoint))
    backend = _FakeGpuBackend()
    results = run_chunks(
        plan, tmp_path / "run", backend, ["cuda:0", "cuda:1", "cuda:2", "cuda:3"], retries=1, poll_interval=0
    )
    first, retry = [d for c, d in backend.starts if c == 0]
    assert first != retry and results[0].devices_tried == [first, retry]
    with pytest.raises(RunFailed, match="chunk 0 failed 1 time"):
        run_chunks(plan, tmp_path / "run2", _FakeGpuBackend(), ["cuda:0"], retries=0, poll_interval=0)


def test_sigterm_stops_local_workers_and_resumes(tmp_path, video, checkpoint, reference):
    out = tmp_path / "out"
    args = [sys.executable, "-m", "orchestrator.cli", *depth_args(video, out, checkpoint)]
    proc = subprocess.Popen(
        list(map(str, args)),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **ONE_THREAD},
    )
    logs = out / "_run" / "logs"
    deadline = time.time() + 120
    while time.time() < deadline and "@progress" not in "".join(p.read_text() for p in logs.glob("*.log")):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, text
    assert "interrupted" in text
    left = subprocess.run(["pgrep", "-f", f"run-chunk {out / '_run'}"], capture_output=True, text=True).stdout
    assert left == ""  # no orphaned worker
    results = json.loads((out / "_run" / "processing_results.json").read_text())["chunks"]
    assert {r["status"] for r in results} <= {"stopped", "done"}
    code, _, err = vda(*args[3:])
    assert code == 0, err
    assert np.array_equal(outputs(out), reference)


def test_changes_between_plan_and_run_are_refused(tmp_path, checkpoint):
    from vda.synth import synth_state_dict

    src = write_video(tmp_path / "v.mp4", synthetic_frames(30, 64, 48))
    run = tmp_path / "run"
    create_plan(src, run, ["cpu"], checkpoint=str(checkpoint), input_size=56)
    other = tmp_path / "other.pth"
    torch.save(synth_state_dict("vits", 1), other)
    with pytest.raises(PlanError, match="checkpoint .* differs from the one planned"):
        run_chunk(run, 0, checkpoint=str(other))
    write_video(src, synthetic_frames(30, 64, 48, seed=5))  # the video is replaced in place
    with pytest.raises(PlanError, match="changed since it was planned"):
        run_chunk(run, 0, checkpoint=str(checkpoint))
    with pytest.raises(PlanError, match="holds a different run \\(a different input video\\)"):
        create_plan(src, run, ["cpu"], checkpoint=str(checkpoint), input_size=56)
    create_plan(src, tmp_path / "run2", ["cpu"], checkpoint=str(checkpoint), input_size=56)
    with pytest.raises(PlanError, match="holds a different run \\(different input_size, net_height, net_width\\)"):
        create_plan(src, tmp_path / "run2", ["cpu"], checkpoint=str(checkpoint), input_size=112)


def test_output_folder_of_another_run_is_refused(tmp_path, checkpoint):
    a = write_images(tmp_path / "a", synthetic_frames(3, 64, 48))
    b = write_images(tmp_path / "b", synthetic_frames(4, 64, 48, seed=9))
    out = tmp_path / "out"
    common = ["-o", out, "--devices", "cpu", "--checkpoint", checkpoint, "--format", "npy", *SMALL]
    assert vda("depth", a, *common)[0] == 0
    before = {p.name: p.read_bytes() for p in out.glob("depth_*")}
    code, _, err = vda("depth", b, *common)
    assert code == 2 and "holds a different run" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in out.glob("depth_*")} == before  # untouched
    code, _, err = vda("depth", b, *common, "--overwrite")
    assert code == 0, err
    assert DepthMeta.load(out).frame_count == 4


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="mounting a tmpfs needs root")
def test_disk_full_is_clean_and_resumable(tmp_path, checkpoint):
    src = write_images(tmp_path / "imgs", synthetic_frames(40, 64, 48))
    run = tmp_path / "run"
    create_plan(src, run, ["cpu"], checkpoint=str(checkpoint), input_size=56)
    run_chunk(run, 0, checkpoint=str(checkpoint))
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        (small / "filler").write_bytes(b"\0" * 800_000)
        with pytest.raises(OSError, match="disk full while writing .*; free space and run the same command"):
            merge(run, small / "out", "npy", workers=1)  # 40 frames x 12 kB do not fit beside the filler
        names = [p.name for p in (small / "out").iterdir()]
        assert not [n for n in names if n.startswith(".")]  # no temporary left behind
        for name in names:
            assert np.load(small / "out" / name).shape == (48, 64)  # every final name is complete
        assert "depth_meta.json" not in names
        (small / "filler").unlink()
        merge(run, small / "out", "npy", workers=1)  # space freed: the same command completes
        assert len(list((small / "out").glob("depth_*.npy"))) == 40
    finally:
        subprocess.run(["umount", str(small)], check=False)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.mp4", "input not found"),
        (lambda d: (d / "text.mp4").write_text("hello") and d / "text.mp4", "cannot be opened as a video"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "holds no images"),
        (lambda d: write_images(d / "mixed", synthetic_frames(2) + synthetic_frames(1, 32, 24)), "must have one size"),
        (
            lambda d: (
                write_images(d / "bad", synthetic_frames(2)) and (d / "bad" / "z.png").write_bytes(b"x") and d / "bad"
            ),
            "cannot read image",
        ),
    ],
    ids=["missing", "not-a-video", "zero-frames", "mixed-sizes", "unreadable-image"],
)
def test_bad_inputs_one_line_errors(tmp_path, checkpoint, make, message):
    src = make(tmp_path)
    code, out, err = vda("depth", src, "-o", tmp_path / "out", "--devices", "cpu", "--checkpoint", checkpoint)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vda: error: ") and message in lines[0], err


def test_corrupt_video_names_the_frame(tmp_path, checkpoint):
    src = write_video(tmp_path / "v.mp4", synthetic_frames(60, 64, 48))
    data = bytearray(src.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 2000] = bytes(2000)
    src.write_bytes(bytes(data))
    code, _, err = vda("plan", src, "-o", tmp_path / "run", "--devices", "cpu", "--checkpoint", checkpoint)
    assert code == 2 and "decoding failed at frame" in err and "truncated or corrupt" in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--devices", "gpu0"], "invalid device 'gpu0'"),
        (["--gpu-ids", "1", "1"], "distinct"),
        (["--gpus", "0"], "at least 1"),
        (["--gpus", "99"], "GPU 98 requested"),
        (["--gpu-ids", "99"], "GPU 99 requested"),
    ],
)
def test_bad_devices(tmp_path, checkpoint, video, flags, message):
    if "requested" in message and torch.cuda.device_count() == 0:  # this machine: say no GPU is visible, not 0..-1
        message = "no GPU is visible here"
    code, _, err = vda("depth", video, "-o", tmp_path / "o", *flags, "--checkpoint", checkpoint)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_bad_checkpoints(tmp_path, vits_state, video):
    src = video
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    wrong = tmp_path / "wrong.pth"
    torch.save({k: v for k, v in vits_state.items() if "motion" not in k}, wrong)
    cases = [
        (tmp_path / "none.pth", "checkpoint not found"),
        (corrupt, "cannot read checkpoint"),
        (wrong, "does not match the model"),
    ]
    for path, message in cases:
        code, _, err = vda("plan", src, "-o", tmp_path / "run", "--devices", "cpu", "--checkpoint", path)
        assert code == 2 and message in err and "Traceback" not in err, err
        assert not (tmp_path / "run" / "plan.json").exists()


def test_unwritable_output(tmp_path, checkpoint, video):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = vda(
        "depth",
        video,
        "-o",
        blocker / "out",
        "--devices",
        "cpu",
        "--checkpoint",
        checkpoint,
    )
    assert code == 2 and "is not writable" in err and "choose another -o" in err


def test_plan_paths_cannot_escape_run_dir(tmp_path, checkpoint, video):
    run = tmp_path / "run"
    create_plan(video, run, ["cpu"], checkpoint=str(checkpoint))
    data = json.loads((run / "plan.json").read_text())
    data["chunks"][0]["index"] = "../../etc"
    (run / "plan.json").write_text(json.dumps(data))
    with pytest.raises(PlanError, match="bad chunk index"):
        Plan.load(run)


def test_compile_without_a_compiler_is_refused_before_any_work(tmp_path, checkpoint, video):
    """--compile where the workers run (here, local) with no C compiler on PATH: one line, no windows computed."""
    bare = tmp_path / "bin"
    bare.mkdir()
    env = {"PATH": str(bare), "CC": ""}
    code, _, err = vda(*depth_args(video, tmp_path / "o", checkpoint, "cpu"), "--compile", env=env)
    assert code == 2 and len(err.strip().splitlines()) == 2, err  # the "planned ..." line, then the refusal
    assert err.strip().splitlines()[-1].startswith("vda: error: --compile needs a C compiler")
    assert not list((tmp_path / "o").rglob("win_*.npy"))


def test_out_of_memory_is_one_line_and_not_retried_on_the_same_device(tmp_path, checkpoint, video):
    """torch's OutOfMemoryError, raised by the fault injection as a GPU would raise it, through the real CLI."""
    out = tmp_path / "o"
    env = {"VDA_FAIL_AT_UNIT": "0:1", "VDA_FAIL_MODE": "oom"}
    code, _, err = vda(*depth_args(video, out, checkpoint, "cpu"), "--micro-batch", "2", env=env)
    assert code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("vda: error: chunk 0 ran out of device memory on cpu (the GPU ran out of memory running")
    assert "micro-batch 2" in last and "lower --micro-batch (e.g. 1)" in last
    (chunk,) = json.loads((out / "_run" / "processing_results.json").read_text())["chunks"]
    assert (chunk["attempts"], chunk["exit_codes"]) == (1, [4])  # the worker's exit code; no retry on cpu again


def test_rerun_on_any_device_count_reuses_every_finished_window(tmp_path, video, checkpoint, reference, monkeypatch):
    """Windows are stored by window: after a 2-device run that finished some windows, a rerun on 1 device computes
    only the missing ones (here with finished windows on both sides), leaves the finished files alone, and gives the
    uninterrupted run's output bit for bit (one thread); a rerun on 3 devices then computes nothing."""
    out = tmp_path / "out"
    run, windows = out / "_run", out / "_run" / "windows"
    plan, _ = create_plan(video, run, ["cpu", "cpu"], checkpoint=str(checkpoint), input_size=56)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_chunk(run, 1, checkpoint=str(checkpoint))  # the last windows
        monkeypatch.setenv("VDA_FAIL_AT_UNIT", "0:1")
        with pytest.raises(InjectedFault):
            run_chunk(run, 0, checkpoint=str(checkpoint))  # window 0, then a failure before window 1
    finally:
        torch.set_num_threads(threads)
        monkeypatch.delenv("VDA_FAIL_AT_UNIT")
    last = range(*plan.chunks[1].units)
    finished = {p.name: p.stat().st_mtime_ns for p in windows.glob("win_*.npy") if p.with_suffix(".done").exists()}
    assert sorted(finished) == [f"win_{w:06d}.npy" for w in (0, *last)]

    code, _, err = vda(*depth_args(video, out, checkpoint, devices="cpu"))
    assert code == 0, err
    assert "resuming" in err and len(Plan.load(run).chunks) == 1
    assert all((windows / name).stat().st_mtime_ns == t for name, t in finished.items())
    assert len(list(windows.glob("win_*.done"))) == plan.num_windows
    assert np.array_equal(outputs(out), reference)

    everything = {p.name: p.stat().st_mtime_ns for p in windows.glob("win_*.npy")}
    code, _, err = vda(*depth_args(video, out, checkpoint, devices="cpu,cpu,cpu"))
    assert code == 0, err
    assert {p.name: p.stat().st_mtime_ns for p in windows.glob("win_*.npy")} == everything  # nothing recomputed
    assert np.array_equal(outputs(out), reference)


def test_stream_mode_refuses_another_split(tmp_path, video, checkpoint):
    """Stream segments depend on where their chunk starts (the warm-up), so they are not reused across splits."""
    run = tmp_path / "run"
    create_plan(video, run, ["cpu", "cpu"], checkpoint=str(checkpoint), input_size=56, mode="stream")
    create_plan(video, run, ["cpu", "cpu"], checkpoint=str(checkpoint), input_size=56, mode="stream")  # same: kept
    with pytest.raises(PlanError, match="a different split over devices, which stream mode cannot reuse"):
        create_plan(video, run, ["cpu"] * 3, checkpoint=str(checkpoint), input_size=56, mode="stream")
