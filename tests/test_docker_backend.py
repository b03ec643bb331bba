"""The docker backend with a real engine and the CPU image: CI's smoke test (issue 4).

No GPU exists here, so GPU containers cannot run; what can be checked without one is: CPU containers
give the local backend's result, nothing is left behind, and a GPU request on an engine without the
NVIDIA runtime turns into advice. Skips without an engine unless VDA_REQUIRE_DOCKER=1 (CI).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, write_video
from media import synthetic_scene

from vda.writers import DepthMeta, read_depth

IMAGE = os.environ.get("VDA_CPU_IMAGE", "vda:cpu")
SMALL = ["--input-size", "126", "--max-res", "256"]


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
    args = " ".join(["--checkpoint", str(checkpoint), *SMALL])
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
        _depth_cmd(video, local_out, "local", checkpoint, "--format", "npy"),
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
    assert (docker_out / "_run" / "logs" / "chunk_0.log").read_text().count("@progress") >= 2
    assert all(p.stat().st_uid == os.getuid() for p in docker_out.glob("depth_*.npy"))  # not root-owned


def test_gpu_request_without_nvidia_runtime_gives_advice(client, tmp_path, checkpoint, video):
    """Mocked GPU: the plan names cuda:0 although none exists; the engine refuses, we translate."""
    from orchestrator.docker_backend import DockerBackend, DockerError
    from orchestrator.planning import create_plan

    if "nvidia" in (client.info().get("Runtimes") or {}):
        pytest.skip("this engine has the NVIDIA runtime")
    plan, _ = create_plan(video, tmp_path / "run", ["cuda:0"], checkpoint=str(checkpoint), precision="fp32")
    backend = DockerBackend(plan, tmp_path / "run", image=IMAGE, checkpoint=str(checkpoint))
    with pytest.raises(DockerError, match="nvidia-container-toolkit"):
        backend.start(plan, tmp_path / "run", 0, "cuda:0", tmp_path / "log", lambda line: None)
    assert _containers(client, plan.run_id) == []


def test_missing_image_is_explained(client, tmp_path, checkpoint, video):
    from orchestrator.docker_backend import DockerBackend, DockerError
    from orchestrator.planning import create_plan

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
