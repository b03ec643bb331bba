"""Faults and bad input (issues 5 and 13): each test injects the fault for real.

Workers are real `vda work` processes, killed with real signals or by the fault injection of vda.device.worker
(VDA_FAIL_AT_UNIT, VDA_FAIL_MODE, VDA_FAIL_TIMES); the disk-full test mounts a real tmpfs (root only). Nothing is
faked here: the tests that need distinct GPUs to move a unit between are in test_gpu_logic.py.
"""

from __future__ import annotations

import json
import os
import re
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

from vda import events
from vda.core.plan import Plan, PlanError
from vda.device.serve import work_runs
from vda.device.worker import DeviceWorker
from vda.io.rundir import RunDir
from vda.io.writers import DepthMeta, read_depth
from vda.merge import merge
from vda.orchestrator.planning import create_plan

SMALL = ["--input-size", "56"]
UNIT = 2  # windows per unit: the 90-frame clip is 5 windows, so 3 units ([0, 2), [2, 4), [4, 5))

# Every run here uses one thread per worker (the local backend hands VDA_THREADS on to its workers), so interrupted
# and uninterrupted runs are compared bit for bit (another thread count changes the float summation order, hence the
# last bits).
ONE_THREAD = {"VDA_THREADS": "1"}


def vda(*args, env=None, timeout=600):
    """The real CLI in a subprocess: exit code, stdout, stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "vda", *map(str, args)],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, **ONE_THREAD, **(env or {})},
    )
    return proc.returncode, proc.stdout, proc.stderr


def depth_args(video, out, checkpoint, devices="cpu,cpu", unit_size=UNIT, mode="window", size=56) -> list:
    """`vda depth` arguments shared by the runs that are compared with `reference`."""
    common = ["--checkpoint", checkpoint, "--format", "npy", "--unit-size", unit_size, "--mode", mode]
    common += ["--input-size", size]
    return ["depth", video, "-o", out, "--devices", devices, *common]


def outputs(out: Path) -> np.ndarray:
    meta = DepthMeta.load(out)
    return np.stack([read_depth(out, i, meta) for i in range(meta.frame_count)])


def results(out: Path) -> dict:
    return json.loads((out / "_run" / "processing_results.json").read_text())


def stored_pieces(run: RunDir, mode: str = "window") -> dict[str, int]:
    """Finished pieces (array and marker) by file name, with their modification times."""
    folder = run.piece(mode, 0).parent
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.npy") if p.with_suffix(".done").is_file()}


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("vda: error:")]


def one_thread(fn, *args, **kwargs):
    """Run `fn` here at one torch thread, as the workers of `reference` run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)


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


def hostless_worker(run: RunDir, checkpoint) -> subprocess.Popen:
    """`vda work RUN_DIR` on one CPU thread, as a process to kill from outside."""
    cmd = [sys.executable, "-m", "vda", "work", run.path, "--device", "cpu", "--checkpoint", checkpoint]
    env = {**os.environ, **ONE_THREAD}
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


@pytest.mark.slow
def test_sigkilled_worker_resumes_and_matches(tmp_path, video, checkpoint, reference):
    """A hostless `vda work RUN_DIR` killed from outside mid-unit: every file under a final name is whole, and the
    resume stores only what is missing (a half-done unit is recomputed from its start, its stored windows kept)."""
    run = RunDir(tmp_path / "run")
    plan, _ = create_plan(video, run.path, checkpoint=str(checkpoint), input_size=56, unit_size=UNIT)
    proc = hostless_worker(run, checkpoint)
    marker = run.piece("window", 2).with_suffix(".done")  # the first window of unit 1
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = stored_pieces(run)
    assert 3 <= len(done) < plan.num_windows, done  # killed in unit 1 (or 2)
    for npy in run.piece("window", 0).parent.glob("win_*.npy"):
        np.load(npy)  # every file under a final name is complete
    unfinished = run.unfinished_units(plan)
    assert unfinished and unfinished[-1].index == 2
    assert one_thread(work_runs, [run.path], "cpu", checkpoint=str(checkpoint)) == len(unfinished)
    now = stored_pieces(run)
    assert {name: now[name] for name in done} == done  # the stored windows were not written again
    assert len(now) == plan.num_windows
    merge(run.path, tmp_path / "out", "npy", workers=1)
    assert np.array_equal(outputs(tmp_path / "out"), reference)


def test_killed_worker_unit_is_redone_by_the_free_worker_and_recorded(tmp_path, checkpoint):
    """A one-unit video on two workers. VDA_FAIL_MODE=kill: the worker given the unit dies by SIGKILL (as the OOM
    killer does), once. The other worker, idle and ready, redoes the unit at once, so no work is left to restart the
    dead one for; everything is recorded, and the output is the uninterrupted computation's, bit for bit."""
    src = write_video(tmp_path / "short.mp4", synthetic_frames(40, 64, 48, seed=4))  # 2 windows: one unit
    clean = RunDir(tmp_path / "clean")
    create_plan(src, clean.path, checkpoint=str(checkpoint), input_size=56, unit_size=UNIT)
    assert one_thread(work_runs, [clean.path], "cpu", checkpoint=str(checkpoint)) == 1
    merge(clean.path, tmp_path / "clean_out", "npy", workers=1)

    out = tmp_path / "out"
    env = {"VDA_FAIL_AT_UNIT": "short:0", "VDA_FAIL_TIMES": "1", "VDA_FAIL_MODE": "kill"}
    code, _, err = vda(*depth_args(src, out, checkpoint), env=env)
    assert code == 0, err
    assert "vda: short: unit 0 failed on cpu (the worker on cpu stopped (exit -9)); retrying (1/2)" in err
    record = results(out)
    (unit,) = record["units"]
    assert unit["status"] == "done" and unit["attempts"] == 2 and unit["frames"] == 40
    assert unit["errors"] == ["cpu: the worker on cpu stopped (exit -9)"]
    (killed,) = [d for d in record["devices"] if -9 in d["exit_codes"]]
    (other,) = [d for d in record["devices"] if d is not killed]
    assert killed["exit_codes"][0] == -9 and killed["worker_starts"] == 1 and killed["failures"] == 1
    assert killed["units"] == 0 and other["units"] == 1 and other["worker_starts"] == 1
    done = '@vda {"kind": "done", "video": "short", "unit": 0'
    assert done in (out / "_run" / other["log"]).read_text()
    assert "injecting fault" in (out / "_run" / killed["log"]).read_text()
    assert "unit 0 attempt 1 on cpu: the worker on cpu stopped (exit -9)" in (out / "_run/logs/video.log").read_text()
    assert np.array_equal(outputs(out), outputs(tmp_path / "clean_out"))


@pytest.mark.slow
def test_failure_after_retries_names_the_log_and_resumes(tmp_path, video, checkpoint, reference):
    out = tmp_path / "out"
    args = [*depth_args(video, out, checkpoint, devices="cpu"), "--retries", "1"]
    code, _, err = vda(*args, env={"VDA_FAIL_AT_UNIT": "2"})  # VDA_FAIL_MODE=raise: the unit fails, the worker goes on
    assert code == 2 and "Traceback" not in err, err
    (line,) = error_lines(err)
    assert line.startswith(f"vda: error: {video}: unit 2 failed 2 time(s), last on cpu: injected fault")
    assert line.endswith(f"; log: {out / '_run' / 'logs' / 'worker_0.log'}")
    assert err.strip().splitlines()[-1].startswith("vda: 0 of 1 input(s) done")
    assert not (out / "depth_meta.json").exists()
    units = results(out)["units"]
    assert [u["status"] for u in units] == ["done", "done", "failed"]
    assert units[2]["attempts"] == 2 and len(units[2]["errors"]) == 2
    assert all("injected fault" in e for e in units[2]["errors"])
    assert results(out)["videos"][0]["status"] == "failed"
    code, _, err = vda(*args)  # fixed: the same command resumes
    assert code == 0, err
    assert [(u["status"], u["attempts"]) for u in results(out)["units"]] == [("stored", 0), ("stored", 0), ("done", 1)]
    assert np.array_equal(outputs(out), reference)


@pytest.mark.slow
def test_sigterm_stops_local_workers_and_resumes(tmp_path, video, checkpoint, reference):
    out = tmp_path / "out"
    args = [sys.executable, "-m", "vda", *depth_args(video, out, checkpoint, devices="cpu")]
    proc = subprocess.Popen(
        list(map(str, args)),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **ONE_THREAD, "VDA_WORKER_DELAY": "0:3"},  # 3 s before each unit: stopped between
    )
    run = RunDir(out / "_run")
    done = '@vda {"kind": "done", "video": "clip", "unit": 0'
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if run.worker_log(0).is_file() and done in run.worker_log(0).read_text():
            break
        time.sleep(0.05)
    time.sleep(1)  # the host records unit 0 as done; the worker waits out its delay before unit 1
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, text
    assert "interrupted" in text and "Traceback" not in text
    pids = [int(p) for p in re.findall(r'@vda \{"kind": "ready", "pid": (\d+)\}', run.worker_log(0).read_text())]
    assert pids
    for pid in pids:  # no orphaned worker: gone, or at most a zombie no one waits for
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    record = json.loads(run.results.read_text())
    assert record["units"][0]["status"] == "done"
    assert {u["status"] for u in record["units"][1:]} <= {"running", "pending"}
    assert record["videos"][0]["status"] == "pending"
    code, _, err = vda(*args[3:])
    assert code == 0, err
    assert results(out)["units"][0]["status"] == "stored"
    assert np.array_equal(outputs(out), reference)


def test_changes_between_plan_and_run_are_refused(tmp_path, checkpoint):
    from vda.model.synth import synth_state_dict

    src = write_video(tmp_path / "v.mp4", synthetic_frames(30, 64, 48))
    run = tmp_path / "run"
    create_plan(src, run, checkpoint=str(checkpoint), input_size=56)
    other = tmp_path / "other.pth"
    torch.save(synth_state_dict("vits", 1), other)
    with pytest.raises(PlanError, match="checkpoint .* differs from the one planned"):
        work_runs([run], "cpu", checkpoint=str(other))
    write_video(src, synthetic_frames(30, 64, 48, seed=5))  # the video is replaced in place
    with pytest.raises(PlanError, match="changed since it was planned"):
        work_runs([run], "cpu", checkpoint=str(checkpoint))
    assert not RunDir(run).is_stored("window", 0)
    with pytest.raises(PlanError, match="holds a different run \\(a different input video\\)"):
        create_plan(src, run, checkpoint=str(checkpoint), input_size=56)
    create_plan(src, tmp_path / "run2", checkpoint=str(checkpoint), input_size=56)
    with pytest.raises(PlanError, match="holds a different run \\(different input_size, net_height, net_width\\)"):
        create_plan(src, tmp_path / "run2", checkpoint=str(checkpoint), input_size=112)
    with pytest.raises(PlanError, match="holds a different run \\(different unit_size\\)"):
        create_plan(src, tmp_path / "run2", checkpoint=str(checkpoint), input_size=56, unit_size=1)


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="mounting a tmpfs needs root")
def test_disk_full_is_clean_and_resumable(tmp_path, checkpoint):
    src = write_images(tmp_path / "imgs", synthetic_frames(40, 64, 48))
    run = tmp_path / "run"
    create_plan(src, run, checkpoint=str(checkpoint), input_size=56)
    work_runs([run], "cpu", checkpoint=str(checkpoint))
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
        (corrupt, "is not a PyTorch .pth file"),
        (wrong, "does not match the model"),
    ]
    for path, message in cases:
        code, _, err = vda("plan", src, "-o", tmp_path / "run", "--devices", "cpu", "--checkpoint", path)
        assert code == 2 and message in err and "Traceback" not in err, err
        assert not (tmp_path / "run" / "plan.json").exists()


def test_unwritable_output(tmp_path, checkpoint, video):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = vda("depth", video, "-o", blocker / "out", "--devices", "cpu", "--checkpoint", checkpoint)
    assert code == 2 and "is not writable" in err and "choose another -o" in err


def test_plan_paths_cannot_escape_run_dir(tmp_path, checkpoint, video):
    """Piece paths are built from unit indexes: a plan whose index is anything but 0..N-1 is refused on load."""
    run = tmp_path / "run"
    create_plan(video, run, checkpoint=str(checkpoint))
    data = json.loads((run / "plan.json").read_text())
    data["units"][0]["index"] = "../../etc"
    (run / "plan.json").write_text(json.dumps(data))
    with pytest.raises(PlanError, match="units are not numbered 0..0"):
        Plan.load(run)


def test_compile_without_a_compiler_is_refused_before_any_work(tmp_path, checkpoint, video):
    """--compile where the workers run (here, local) with no C compiler on PATH: one line, no windows computed."""
    bare = tmp_path / "bin"
    bare.mkdir()
    env = {"PATH": str(bare), "CC": ""}
    code, _, err = vda(*depth_args(video, tmp_path / "o", checkpoint, "cpu"), "--compile", env=env)
    assert code == 2 and len(err.strip().splitlines()) == 2, err  # the "90 frames in 3 units" line, then the refusal
    assert err.strip().splitlines()[-1].startswith("vda: error: --compile needs a C compiler")
    assert not list((tmp_path / "o").rglob("win_*.npy"))


@pytest.mark.slow
def test_out_of_memory_is_one_line_and_not_retried_on_the_same_device(tmp_path, checkpoint, video):
    """torch's OutOfMemoryError, raised by the fault injection as a GPU would raise it, through the real CLI. Both
    workers run on the one device `cpu`: the worker first retries the unit itself at half the micro-batch (4, then
    2: issue 20), and out of memory there too is not retried by the other worker; the video fails at once."""
    out = tmp_path / "o"
    env = {"VDA_FAIL_AT_UNIT": "clip:1", "VDA_FAIL_MODE": "oom"}
    code, _, err = vda(*depth_args(video, out, checkpoint), "--micro-batch", "4", env=env)
    assert code == 2 and "Traceback" not in err, err
    (line,) = error_lines(err)
    assert line.startswith(
        f"vda: error: {video}: unit 1 out of memory on every device, last on cpu: the GPU ran out of memory running"
    )
    assert "micro-batch 2" in line and "lower --micro-batch (e.g. 1)" in line
    assert re.search(r"; log: .*worker_[01]\.log$", line), line
    log = Path(line.rsplit("; log: ", 1)[1]).read_text()
    assert "clip unit 1: out of memory at micro-batch 4; retrying here at 2" in log, log
    units = results(out)["units"]
    assert (units[1]["status"], units[1]["attempts"], units[1]["device_bound"]) == ("failed", 1, True)
    assert len(units[1]["errors"]) == 1 and "lower --micro-batch" in units[1]["errors"][0]
    assert results(out)["videos"][0]["status"] == "failed"


@pytest.mark.slow
def test_rerun_on_any_device_count_reuses_every_finished_window(tmp_path, video, checkpoint, reference):
    """Windows are stored by window and units do not depend on devices: after units 2 and 0 were computed (finished
    windows on both sides of a gap), a rerun on 1 device computes only unit 1, leaves the finished files alone, and
    gives the uninterrupted run's output bit for bit (one thread); a rerun on 3 devices then computes nothing."""
    out = tmp_path / "out"
    run = RunDir(out / "_run")
    plan, _ = create_plan(video, run.path, checkpoint=str(checkpoint), input_size=56, unit_size=UNIT)
    said: list[events.Message] = []
    worker = DeviceWorker("cpu", said.append, checkpoint=str(checkpoint))
    lines = [events.encode(events.Assign("clip", str(run.path), str(video), u)) for u in (2, 0)]
    one_thread(worker.serve, [*lines, events.encode(events.Stop())])
    assert [(m.unit, m.frames) for m in said if isinstance(m, events.Done)] == [(2, 0), (0, 46)]
    finished = stored_pieces(run)
    assert sorted(finished) == [f"win_{w:06d}.npy" for w in (0, 1, 4)]

    code, _, err = vda(*depth_args(video, out, checkpoint, devices="cpu"))
    assert code == 0, err
    assert [u["status"] for u in results(out)["units"]] == ["stored", "done", "stored"]
    assert {name: stored_pieces(run)[name] for name in finished} == finished
    assert len(stored_pieces(run)) == plan.num_windows
    assert np.array_equal(outputs(out), reference)

    everything = stored_pieces(run)
    code, _, err = vda(*depth_args(video, out, checkpoint, devices="cpu,cpu,cpu"))
    assert code == 0, err
    assert stored_pieces(run) == everything  # nothing recomputed
    record = results(out)
    assert {u["status"] for u in record["units"]} == {"stored"}
    assert [d["worker_starts"] for d in record["devices"]] == [0, 0, 0]  # no worker was even started
    assert np.array_equal(outputs(out), reference)

    # A piece damaged behind its marker (data a crash lost, a truncated copy) counts as missing: its unit is computed
    # again, and the output is the same. Its marker says the shape and dtype the piece must have.
    damaged = run.piece("window", 3)
    damaged.write_bytes(damaged.read_bytes()[:-100])
    assert damaged.with_suffix(".done").is_file() and not run.is_stored("window", 3)
    code, _, err = vda(*depth_args(video, out, checkpoint, devices="cpu"))
    assert code == 0, err
    assert [u["status"] for u in results(out)["units"]] == ["stored", "done", "stored"]
    assert run.is_stored("window", 3) and np.array_equal(outputs(out), reference)


@pytest.mark.slow
def test_stream_rerun_on_another_device_count_reuses_every_stored_segment(tmp_path, video, checkpoint):
    """Stream units replay their own warm-up, so their segments do not depend on the devices: a worker killed
    mid-unit keeps its finished 32-frame segments, and a rerun on 2 devices reuses them, bit for bit."""
    clean = RunDir(tmp_path / "clean")
    flags = {"checkpoint": str(checkpoint), "input_size": 28, "mode": "stream", "unit_size": 64}
    create_plan(video, clean.path, **flags)
    assert one_thread(work_runs, [clean.path], "cpu", checkpoint=str(checkpoint)) == 2
    merge(clean.path, tmp_path / "clean_out", "npy", workers=1)

    out = tmp_path / "out"
    run = RunDir(out / "_run")
    plan, _ = create_plan(video, run.path, **flags)
    assert [plan.pieces(u) for u in plan.units] == [[0, 32], [64]]
    proc = hostless_worker(run, checkpoint)
    deadline = time.time() + 300
    while not run.is_stored("stream", 0) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = stored_pieces(run, "stream")
    assert "seg_000000.npy" in kept and len(kept) < 3, kept  # killed in unit 0 or 1, segment 0 kept

    code, _, err = vda(*depth_args(video, out, checkpoint, "cpu,cpu", unit_size=64, mode="stream", size=28))
    assert code == 0, err
    assert {name: stored_pieces(run, "stream")[name] for name in kept} == kept  # reused, not recomputed
    assert len(stored_pieces(run, "stream")) == 3
    assert np.array_equal(outputs(out), outputs(tmp_path / "clean_out"))
