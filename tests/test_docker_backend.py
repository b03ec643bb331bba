"""The docker backend with a real engine and the CPU image: CI's smoke test (issue 4).

No GPU exists here, so GPU containers cannot run; what can be checked without one is: CPU containers
give the local backend's result, nothing is left behind, and a GPU request on an engine without the
NVIDIA runtime fails only its chunk (which moves to another device) and turns into advice. Skips
without an engine unless VDA_REQUIRE_DOCKER=1 (CI).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, write_video

from orchestrator.planning import create_plan
from vda.synth import synthetic_scene
from vda.writers import DepthMeta, read_depth

IMAGE = os.environ.get("VDA_CPU_IMAGE", "vda:cpu")
SMALL = ["--input-size", "126", "--max-res", "256"]
TINY = {"precision": "fp32", "input_size": 56, "max_res": 128}  # create_plan settings: a chunk runs in seconds


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


def _containers(client, run_id=None):
    """Containers of vda runs. docker-py lists ids, then inspects each: one removed in between raises NotFound."""
    import docker

    label = f"vda.run={run_id}" if run_id else "vda.run"
    for _ in range(20):
        try:
            return client.containers.list(all=True, filters={"label": label})
        except docker.errors.NotFound:
            time.sleep(0.1)
    return client.containers.list(all=True, filters={"label": label})


def _depth_cmd(video, out, backend: str, checkpoint, *extra: str) -> list[str]:
    """`vda depth` on VIDEO in two CPU workers with the synthetic checkpoint."""
    return [
        sys.executable,
        "-m",
        "orchestrator.cli",
        "depth",
        str(video),
        "-o",
        str(out),
        "--backend",
        backend,
        "--devices",
        "cpu,cpu",
        "--checkpoint",
        str(checkpoint),
        *SMALL,
        *extra,
    ]


def _read_all(out):
    meta = DepthMeta.load(out)
    return np.stack([read_depth(out, i, meta) for i in range(meta.frame_count)])


def test_make_depth_in_two_cpu_containers_equals_local(client, tmp_path, checkpoint, video):
    docker_out, local_out = tmp_path / "docker", tmp_path / "local"
    args = " ".join(["--checkpoint", str(checkpoint), *SMALL, "--micro-batch", "3"])
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
        _depth_cmd(video, local_out, "local", checkpoint, "--format", "npy", "--micro-batch", "3"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert local.returncode == 0, local.stderr[-2000:]
    a, b = _read_all(docker_out), _read_all(local_out)
    assert a.shape == (70, 144, 256)
    assert np.array_equal(a, b)
    run_id = DepthMeta.load(docker_out).settings["run_id"]
    assert _containers(client, run_id) == []  # workers and merge removed
    log = (docker_out / "_run" / "logs" / "chunk_0.log").read_text()
    assert log.count("@progress") >= 2
    assert "run-chunk /work/run --chunk 0 --device cpu" in log and "--micro-batch 3" in log  # reaches the worker
    assert "--micro-batch 3" in (local_out / "_run" / "logs" / "chunk_0.log").read_text()
    assert all(p.stat().st_uid == os.getuid() for p in docker_out.glob("depth_*.npy"))  # not root-owned


def _no_nvidia_runtime(client) -> None:
    if "nvidia" in (client.info().get("Runtimes") or {}):
        pytest.skip("this engine has the NVIDIA runtime: a cuda container would really start here")


def test_gpu_request_without_nvidia_runtime_gives_advice(client, tmp_path, checkpoint, video):
    """Mocked GPU: the plan names cuda:0 although none exists; the engine refuses, we translate.

    The refusal fails that chunk only (exit 125, like `docker run`), with the advice in its log.
    """
    from orchestrator.docker_backend import START_FAILED, DockerBackend

    _no_nvidia_runtime(client)
    plan, _ = create_plan(video, tmp_path / "run", ["cuda:0"], checkpoint=str(checkpoint), precision="fp32")
    backend = DockerBackend(plan, tmp_path / "run", image=IMAGE, checkpoint=str(checkpoint))
    lines = []
    handle = backend.start(plan, tmp_path / "run", 0, "cuda:0", tmp_path / "log", lines.append)
    assert handle.poll() == START_FAILED == 125
    assert "nvidia-container-toolkit" in handle.reason
    assert lines == [handle.reason]
    assert handle.reason in (tmp_path / "log").read_text()
    handle.stop()
    assert _containers(client, plan.run_id) == []  # the created-but-not-started container is gone too


def test_container_that_cannot_start_fails_only_its_chunk(client, tmp_path, checkpoint, video):
    """cuda:0 cannot start here: its chunk moves to cpu, and the cpu chunk already running is left alone."""
    from orchestrator.docker_backend import DockerBackend
    from orchestrator.scheduler import RESULTS_NAME, run_chunks

    _no_nvidia_runtime(client)
    run_dir, devices = tmp_path / "run", ["cuda:0", "cpu"]
    plan, _ = create_plan(video, run_dir, devices, **TINY, checkpoint=str(checkpoint))
    backend = DockerBackend(plan, run_dir, image=IMAGE, checkpoint=str(checkpoint))
    try:
        results = run_chunks(plan, run_dir, backend, devices, retries=2)
    finally:
        backend.close()
    assert [r.status for r in results.values()] == ["done", "done"]
    saved = {r["chunk"]: r for r in json.loads((run_dir / RESULTS_NAME).read_text())["chunks"]}
    moved, other = saved[0], saved[1]
    assert moved["devices_tried"] == ["cuda:0", "cpu"] and moved["exit_codes"] == [125, 0], moved
    assert other["devices_tried"] == ["cpu"] and other["exit_codes"] == [0], other  # not stopped by the failure
    assert "nvidia-container-toolkit" in (run_dir / moved["log"]).read_text()
    assert _containers(client, plan.run_id) == []


def test_cuda_only_run_fails_with_the_advice(client, tmp_path, checkpoint, video):
    from orchestrator.docker_backend import DockerBackend
    from orchestrator.scheduler import RunFailed, run_chunks

    _no_nvidia_runtime(client)
    run_dir = tmp_path / "run"
    plan, _ = create_plan(video, run_dir, ["cuda:0"], **TINY, checkpoint=str(checkpoint))
    backend = DockerBackend(plan, run_dir, image=IMAGE, checkpoint=str(checkpoint))
    try:
        with pytest.raises(RunFailed, match="nvidia-container-toolkit") as failed:
            run_chunks(plan, run_dir, backend, ["cuda:0"], retries=2)
    finally:
        backend.close()
    assert "chunk 0 failed 3 time(s) (last exit 125: Docker has no NVIDIA runtime" in str(failed.value)
    assert _containers(client, plan.run_id) == []


def test_missing_image_is_explained(client, tmp_path, checkpoint, video):
    from orchestrator.docker_backend import DockerBackend, DockerError

    plan, _ = create_plan(video, tmp_path / "run", ["cpu"], checkpoint=str(checkpoint))
    with pytest.raises(DockerError, match="make image-cpu"):
        DockerBackend(plan, tmp_path / "run", image="vda:does-not-exist")


def test_sigterm_removes_every_container(client, tmp_path, checkpoint, video):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        _depth_cmd(video, out, "docker", checkpoint, "--image", IMAGE),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(_containers(client)) < 2:
        time.sleep(0.5)
    running = _containers(client)
    assert len(running) >= 2, "workers did not start"
    for c in running:  # unprivileged, no network, input read-only, labelled with run and chunk
        attrs = c.attrs
        assert attrs["Config"]["User"] == f"{os.getuid()}:{os.getgid()}"
        assert attrs["HostConfig"]["NetworkMode"] == "none" and not attrs["HostConfig"]["Privileged"]
        (inp,) = [m for m in attrs["Mounts"] if m["Destination"].startswith("/input/")]
        assert inp["RW"] is False
        assert {"vda.run", "vda.chunk"} <= attrs["Config"]["Labels"].keys()
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert "interrupted" in output
    assert _containers(client) == []


def test_compile_with_an_image_without_a_compiler_is_refused_in_one_line(client, tmp_path, checkpoint, video):
    """The CPU image has no C compiler: `--compile` is refused before any worker container starts."""
    out = tmp_path / "out"
    done = subprocess.run(
        _depth_cmd(video, out, "docker", checkpoint, "--image", IMAGE, "--compile"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2, done.stderr
    assert last.startswith("vda: error: --compile needs a C compiler in the image"), done.stderr
    assert not list(out.rglob("win_*.npy")) and _containers(client) == []
