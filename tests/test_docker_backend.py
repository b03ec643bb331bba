"""The Docker backend with a real engine and the CPU image: CI's smoke test (issues 4 and 13).

One long-lived worker container per device serves the whole run: it is handed units on its stdin, like a local worker
process. No GPU exists here, so GPU containers cannot run; what can be checked without one is: CPU containers give
the local backend's result, one container per device lives from the first unit to the last, nothing is left behind,
and a GPU request on an engine without the NVIDIA runtime retires only its device (the others finish the run) and
turns into advice. Skips without an engine unless VDA_REQUIRE_DOCKER=1 (CI).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, synthetic_frames, wait_for, write_video

from vda.io.rundir import RunDir
from vda.io.writers import DepthMeta, read_depth
from vda.model.synth import synthetic_scene
from vda.orchestrator.backends.base import START_FAILED, VideoRun
from vda.orchestrator.backends.docker import DockerBackend, DockerError
from vda.orchestrator.launch import WorkerOptions
from vda.orchestrator.planning import create_plan
from vda.orchestrator.queue import QueuedVideo, WorkQueue

pytestmark = pytest.mark.docker

IMAGE = os.environ.get("VDA_CPU_IMAGE", "vda:cpu")
SMALL = ["--input-size", "126", "--max-res", "256"]
TINY = {"precision": "fp32", "input_size": 28, "max_res": 128, "unit_size": 1}  # create_plan: a unit in a second


def _client():
    try:
        import docker

        client = docker.from_env()
        client.ping()
        client.images.get(IMAGE)
        return client
    except Exception as err:
        if os.environ.get("VDA_REQUIRE_DOCKER") == "1":
            pytest.fail(f"Docker engine or image {IMAGE} unavailable but VDA_REQUIRE_DOCKER=1: {err}")
        pytest.skip(f"no Docker engine or no image {IMAGE} ({type(err).__name__}); run `make image-cpu`")


@pytest.fixture(scope="module")
def client():
    return _client()


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """70 frames of 320x180 x264 with B-frames and an audio track, as a camera's file has them."""
    frames = list(synthetic_scene(70, 180, 320))
    return write_video(tmp_path_factory.mktemp("in") / "scene.mp4", frames, gop=24, bframes=2, audio=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """50 frames of 64x48: 3 windows, so 3 units at --unit-size 1."""
    return write_video(tmp_path_factory.mktemp("tiny") / "tiny.mp4", synthetic_frames(50, 64, 48, seed=4))


def _containers(client, run_dir: Path, role: str | None = None):
    """Containers of the run whose batch folder is RUN_DIR (label vda.run), in any state.

    docker-py lists ids, then inspects each: one removed in between raises NotFound, so the listing is retried.
    """
    import docker

    labels = [f"vda.run={Path(run_dir).resolve()}"] + ([f"vda.role={role}"] if role else [])
    for _ in range(20):
        try:
            return client.containers.list(all=True, filters={"label": labels})
        except docker.errors.NotFound:
            time.sleep(0.1)
    return client.containers.list(all=True, filters={"label": labels})


def _depth_cmd(inputs, out, backend: str, checkpoint, *extra: str) -> list[str]:
    """`vda depth` on INPUTS in two CPU workers with the synthetic checkpoint."""
    inputs = inputs if isinstance(inputs, list) else [inputs]
    return [
        sys.executable,
        "-m",
        "vda.cli.main",
        "depth",
        *map(str, inputs),
        "-o",
        str(out),
        "--backend",
        backend,
        "--devices",
        "cpu,cpu",
        "--checkpoint",
        str(checkpoint),
        *extra,
    ]


def _read_all(out):
    meta = DepthMeta.load(out)
    return np.stack([read_depth(out, i, meta) for i in range(meta.frame_count)])


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "processing_results.json").read_text())


def _queue(client, run_dir: Path, src: Path, devices: list[str], checkpoint) -> tuple[WorkQueue, DockerBackend]:
    """A one-video queue on DEVICES through the Docker backend (what `vda depth` builds, without its merge)."""
    plan, _ = create_plan(src, run_dir, **TINY, checkpoint=str(checkpoint))
    root = RunDir(run_dir)
    video = QueuedVideo(VideoRun(src.stem, root, Path(plan.input.path)), plan)
    backend = DockerBackend(devices, WorkerOptions(checkpoint=str(checkpoint)), image=IMAGE, client=client)
    backend.open(root, [video.run])
    return WorkQueue([video], backend, devices, root, retries=2, stream=io.StringIO()), backend


def _no_nvidia_runtime(client) -> None:
    if "nvidia" in (client.info().get("Runtimes") or {}):
        pytest.skip("this engine has the NVIDIA runtime: a cuda container would really start here")


def test_make_depth_in_two_cpu_containers_equals_local(client, tmp_path, checkpoint, video):
    docker_out, local_out = tmp_path / "docker", tmp_path / "local"
    args = " ".join(["--checkpoint", str(checkpoint), *SMALL, "--micro-batch", "3", "--unit-size", "1"])
    proc = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "depth",
            f"VIDEO={video}",
            "DEVICES=cpu,cpu",
            f"OUT={docker_out}",
            "FORMAT=npy",
            f"DEPTH_ARGS={args}",
            f"VDA_CPU_IMAGE={IMAGE}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    local = subprocess.run(
        _depth_cmd(video, local_out, "local", checkpoint, *SMALL, "--format", "npy", "--micro-batch", "3"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert local.returncode == 0, local.stderr[-2000:]
    a, b = _read_all(docker_out), _read_all(local_out)
    assert a.shape == (70, 144, 256)
    assert np.array_equal(a, b)  # units start from their own first window: the split does not change a bit
    assert _containers(client, docker_out / "_run") == []  # workers and merge removed
    results = _results(docker_out / "_run")
    assert [d["device"] for d in results["devices"]] == ["cpu", "cpu"]
    assert sum(d["units"] for d in results["devices"]) == 4 and all(d["worker_starts"] == 1 for d in results["devices"])
    logs = [(docker_out / "_run" / "logs" / f"worker_{slot}.log").read_text() for slot in (0, 1)]
    for slot, log in enumerate(logs):  # the options reach the worker inside the container
        assert f"$ docker run {IMAGE} vda work --device cpu --slot {slot} --checkpoint /ckpt/" in log
        assert "--micro-batch 3" in log
    assert sum(log.count('@vda {"kind": "done"') for log in logs) == 4  # every unit reported back
    assert "--micro-batch 3" in (local_out / "_run" / "logs" / "worker_0.log").read_text()
    assert all(p.stat().st_uid == os.getuid() for p in docker_out.glob("depth_*.npy"))  # not root-owned


def _worker_ids(run_dir: Path) -> dict[str, str]:
    """`docker ps`: the worker containers running for the batch in RUN_DIR, slot -> container id."""
    label = f"label=vda.run={run_dir.resolve()}"
    fmt = '{{.ID}} {{.Label "vda.slot"}}'
    done = subprocess.run(
        ["docker", "ps", "--no-trunc", "--filter", label, "--filter", "label=vda.role=worker", "--format", fmt],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return {slot: cid for cid, slot in (line.split() for line in done.stdout.splitlines())}


def test_one_worker_container_per_device_serves_the_whole_batch(client, tmp_path, checkpoint):
    """Two videos of 3 units each on cpu,cpu: the same two containers compute all 6 units, then are removed."""
    clips = [write_video(tmp_path / f"{n}.mp4", synthetic_frames(50, 64, 48, seed=s)) for n, s in (("a", 1), ("b", 2))]
    out = tmp_path / "out"
    flags = ["--image", IMAGE, "--input-size", "28", "--unit-size", "1", "--format", "npy", "--merge-workers", "1"]
    cmd = _depth_cmd(clips, out, "docker", checkpoint, *flags)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[dict[str, str]] = []
    try:
        while proc.poll() is None:
            seen.append(_worker_ids(out / "_run"))
            time.sleep(0.1)
        output = proc.communicate(timeout=60)[0]
    finally:
        proc.kill()
    assert proc.returncode == 0, output
    assert all(len(ids) <= 2 for ids in seen)
    both = [ids for ids in seen if len(ids) == 2]
    assert both, f"never saw both workers up: {seen}"
    assert all(ids == both[0] for ids in both)  # the same two containers at every look
    assert sorted(both[0]) == ["0", "1"]
    assert {cid for ids in seen for cid in ids.values()} == set(both[0].values())  # no other worker ever ran
    assert _worker_ids(out / "_run") == {} and _containers(client, out / "_run") == []  # none left, merges included

    results = _results(out / "_run")
    assert [v["status"] for v in results["videos"]] == ["merged", "merged"]
    assert len(results["units"]) == 6 and {u["status"] for u in results["units"]} == {"done"}
    for slot, device in enumerate(results["devices"]):
        assert device["worker_starts"] == 1 and device["units"] >= 1, device  # both devices shared the work
        log = (out / "_run" / device["log"]).read_text()
        assert log.count("$ docker run ") == 1  # one container for the whole run
        assert f"# {both[0][str(slot)][:12]} on cpu" in log
    assert sum(d["units"] for d in results["devices"]) == 6
    for clip in clips:
        assert DepthMeta.load(out / clip.stem).frame_count == 50


def test_gpu_request_without_nvidia_runtime_gives_advice(client, tmp_path, checkpoint, tiny):
    """cuda:0 although no GPU exists here: the engine refuses the container, and the refusal becomes advice.

    The worker never starts: exit 125 (START_FAILED, `docker run`'s code), with the advice as its reason and in its
    log, and the created container is removed.
    """
    _no_nvidia_runtime(client)
    root = RunDir(tmp_path / "run")
    backend = DockerBackend(["cuda:0"], WorkerOptions(checkpoint=str(checkpoint)), image=IMAGE, client=client)
    backend.open(root, [VideoRun("tiny", root, tiny)])
    lines = []
    try:
        handle = backend.start_worker(0, "cuda:0", root.worker_log(0), lines.append)
        assert handle.poll() == START_FAILED == 125
        assert "nvidia-container-toolkit" in handle.reason
        assert lines == [handle.reason]
        assert handle.reason in root.worker_log(0).read_text()
        handle.stop()
        assert _containers(client, root.path) == []  # the created-but-not-started container is gone too
    finally:
        backend.close()


def test_container_that_cannot_start_retires_only_its_device(client, tmp_path, checkpoint, tiny):
    """cuda:0 cannot start here: that device is retired, and the cpu container computes every unit of the run."""
    _no_nvidia_runtime(client)
    run_dir = tmp_path / "run"
    work, backend = _queue(client, run_dir, tiny, ["cuda:0", "cpu"], checkpoint)
    try:
        work.run()
    finally:
        backend.close()
    results = _results(run_dir)
    gpu, cpu = results["devices"]
    assert gpu["exit_codes"] == [START_FAILED] and gpu["units"] == 0 and gpu["worker_starts"] == 1, gpu
    assert "could not start" in gpu["retired"] and "nvidia-container-toolkit" in gpu["retired"]
    assert cpu["retired"] is None and cpu["units"] == 3 and cpu["worker_starts"] == 1, cpu  # never stopped
    assert [u["status"] for u in results["units"]] == ["done"] * 3
    assert all(u["devices"] == ["cpu"] for u in results["units"])  # no unit was ever handed to the retired device
    assert "nvidia-container-toolkit" in (run_dir / gpu["log"]).read_text()
    assert "cuda:0: the worker could not start" in work.stream.getvalue()
    assert not RunDir(run_dir).unfinished_units(work.videos[0].plan)
    assert _containers(client, run_dir) == []


def test_cuda_only_run_fails_with_the_advice(client, tmp_path, checkpoint, tiny):
    from vda.orchestrator.queue import RunFailed

    _no_nvidia_runtime(client)
    run_dir = tmp_path / "run"
    work, backend = _queue(client, run_dir, tiny, ["cuda:0"], checkpoint)
    try:
        with pytest.raises(RunFailed, match="nvidia-container-toolkit") as failed:
            work.run()
    finally:
        backend.close()
    assert "no device is left to run the work (cuda:0: the worker could not start (exit 125: Docker has no NVIDIA" in (
        str(failed.value)
    )
    assert _results(run_dir)["devices"][0]["worker_starts"] == 1  # a device that cannot start is not tried again
    assert _containers(client, run_dir) == []


def test_missing_image_is_explained(client, tmp_path, checkpoint, tiny):
    """A user's run with an image that is not there: one line saying how to build it, and nothing started."""
    out = tmp_path / "out"
    done = subprocess.run(
        [*_depth_cmd(tiny, out, "docker", checkpoint, "--image", "vda:does-not-exist"), "--input-size", "28"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == "vda: error: image vda:does-not-exist not found; build it with `make image-cpu` or pass --image"
    assert _containers(client, out / "_run") == []


def test_sigterm_removes_every_container(client, tmp_path, checkpoint, tiny):
    """SIGTERM while both workers are up (worker 0 is slowed so that the run is still going): exit 130, no container
    left. The containers are unprivileged, without network, see the input read-only, and are labelled."""
    out = tmp_path / "out"
    cmd = _depth_cmd(tiny, out, "docker", checkpoint, "--image", IMAGE, "--input-size", "28", "--unit-size", "1")
    env = {**os.environ, "VDA_WORKER_DELAY": "0:60"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(_worker_ids(out / "_run")) < 2 and proc.poll() is None:
            time.sleep(0.2)
        running = _containers(client, out / "_run", "worker")
        assert len(running) == 2, "workers did not start"
        for c in running:
            attrs = c.attrs
            assert attrs["Config"]["User"] == f"{os.getuid()}:{os.getgid()}"
            assert attrs["HostConfig"]["NetworkMode"] == "none" and not attrs["HostConfig"]["Privileged"]
            (inp,) = [m for m in attrs["Mounts"] if m["Destination"].startswith("/input/")]
            assert inp["RW"] is False
            labels = attrs["Config"]["Labels"]
            assert labels["vda.run"] == str((out / "_run").resolve()) and labels["vda.role"] == "worker"
            assert labels["vda.slot"] in ("0", "1")
            assert attrs["Config"]["OpenStdin"] and attrs["Config"]["StdinOnce"]  # it dies with its host's stdin
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, output
    assert "interrupted" in output
    assert _containers(client, out / "_run") == []


def test_compile_with_an_image_without_a_compiler_is_refused_in_one_line(client, tmp_path, checkpoint, tiny):
    """The CPU image has no C compiler: `--compile` is refused before any worker container starts."""
    out = tmp_path / "out"
    done = subprocess.run(
        _depth_cmd(tiny, out, "docker", checkpoint, "--image", IMAGE, "--compile", "--input-size", "28"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2, done.stderr
    assert last.startswith("vda: error: --compile needs a C compiler in the image"), done.stderr
    assert not list(out.rglob("win_*.npy")) and _containers(client, out / "_run") == []
    assert not (out / "_run" / "logs").exists() or not list((out / "_run" / "logs").glob("worker_*.log"))


def test_a_run_folder_in_use_keeps_its_containers(client, tmp_path, checkpoint, tiny):
    """A second backend opened on a folder whose `vda depth` is alive (a host that does not share its lock) is refused
    in one line naming that process, and removes none of its containers (issue 21). Written without an engine at hand:
    first run by the lead."""
    out = tmp_path / "out"
    cmd = _depth_cmd(tiny, out, "docker", checkpoint, "--unit-size", "1", *SMALL)
    env = {**os.environ, "VDA_THREADS": "1", "VDA_WORKER_DELAY": "0:30"}  # slot 0 holds its unit for 30 s
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: len(_containers(client, out / "_run", "worker")) == 2, 180)
        backend = DockerBackend(["cpu"], WorkerOptions(checkpoint=str(checkpoint)), image=IMAGE, client=client)
        with pytest.raises(DockerError, match=rf"in use by the containers of another vda \(pid {first.pid} on "):
            backend.open(RunDir(out / "_run"), [])
        backend.close()
        assert {c.status for c in _containers(client, out / "_run", "worker")} == {"running"}
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(120)
