"""The container side, against a real Docker engine.

Skipped when no engine is reachable, unless VDA_REQUIRE_DOCKER=1 (CI): then a missing engine
is a failure (after one try of docker/engine.sh, which installs and starts one as root).

The CPU image is (re)built with `make -f docker/docker.mk image-cpu` (offline: debootstrap base,
wheelhouse, --network none); with everything cached that takes a few seconds, and it keeps the
image in step with the code. VDA_TEST_IMAGE_BUILD=missing only builds when the image is absent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[1]
CPU_IMAGE = os.environ.get("VDA_CPU_IMAGE", "vda:cpu")
BASE_IMAGE = os.environ.get("VDA_BASE_IMAGE", "vda-base:bookworm")
# The Dockerfile's one line when TORCH_BUILD=cuda meets a CPU-only torch; "torch <version>" shows it was run,
# not only echoed as part of the RUN instruction (the legacy builder prints that too).
CPU_TORCH_REFUSED = re.compile(
    r"ERROR: TORCH_BUILD=cuda but torch \d\S* is a CPU-only build \(torch\.version\.cuda is None\); "
    r"install CUDA torch from the network"
)
REQUIRE = os.environ.get("VDA_REQUIRE_DOCKER") == "1"
BUILD_POLICY = os.environ.get("VDA_TEST_IMAGE_BUILD", "always")  # always | missing
COMPOSE_VARS = (
    "VDA_IMAGE",
    "INPUT_DIR",
    "OUT_DIR",
    "GPUS",
    "DEVICES",
    "UID",
    "GID",
    "RAY_PORT",
    "RAY_CPUS",
    "RAY_SHM",
    "RAY_OBJECT_STORE_BYTES",
)
NVIDIA_ERROR = 'could not select device driver "nvidia"'


def _run(args, *, timeout=120, env=None, cwd=REPO):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


def _unavailable(reason: str):
    hint = "run `make engine` (docker/engine.sh; as root it installs docker.io and starts dockerd)"
    if REQUIRE:
        pytest.fail(f"VDA_REQUIRE_DOCKER=1 but {reason}; {hint}", pytrace=False)
    pytest.skip(f"{reason}; {hint}")


def _engine_problem() -> str | None:
    if shutil.which("docker") is None:
        return "no docker CLI on PATH"
    try:
        r = _run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=30)
    except subprocess.TimeoutExpired:
        return "`docker info` timed out"
    if r.returncode != 0 or not r.stdout.strip():
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return f"no Docker engine reachable ({last})"
    return None


@pytest.fixture(scope="session")
def engine() -> None:
    problem = _engine_problem()
    if problem and REQUIRE:
        # CI: bring one up (idempotent; refuses politely when not root).
        r = _run(["bash", "docker/engine.sh"], timeout=600)
        problem = _engine_problem()
        if problem:
            problem += "; docker/engine.sh said: " + " | ".join((r.stdout + r.stderr).strip().splitlines()[-5:])
    if problem:
        _unavailable(problem)


@pytest.fixture(scope="session")
def compose(engine) -> None:
    r = _run(["docker", "compose", "version"], timeout=30)
    if r.returncode != 0:
        _unavailable("`docker compose` (Compose v2 plugin) is missing")


@pytest.fixture(scope="session")
def cpu_image(engine) -> str:
    exists = _run(["docker", "image", "inspect", CPU_IMAGE], timeout=30).returncode == 0
    if BUILD_POLICY == "always" or not exists:
        r = _run(
            ["make", "-f", "docker/docker.mk", "image-cpu", f"PY={sys.executable}", f"VDA_CPU_IMAGE={CPU_IMAGE}"],
            timeout=1500,
        )
        if r.returncode != 0:
            tail = "\n".join((r.stdout + r.stderr).splitlines()[-40:])
            pytest.fail(f"`make image-cpu` failed (rc {r.returncode}):\n{tail}", pytrace=False)
    return CPU_IMAGE


@pytest.fixture(scope="session")
def offline_build_inputs(cpu_image) -> str:
    """The debootstrap base and the CPU wheelhouse that an offline build needs; made (cached) when absent."""
    have_base = _run(["docker", "image", "inspect", BASE_IMAGE], timeout=30).returncode == 0
    if not have_base or not list((REPO / "wheelhouse").glob("torch-*.whl")):
        r = _run(
            ["make", "-f", "docker/docker.mk", "base-image", "wheelhouse", f"PY={sys.executable}"],
            timeout=1500,
        )
        if r.returncode != 0:
            tail = "\n".join((r.stdout + r.stderr).splitlines()[-20:])
            pytest.fail(f"`make base-image wheelhouse` failed (rc {r.returncode}):\n{tail}", pytrace=False)
    return BASE_IMAGE


def _offline_build(base: str, *build_args: str, target: str | None = None, timeout=1500):
    """`docker build --network none` from BASE and the wheelhouse under a throwaway tag, removed afterwards.

    The deps stage's install layer is shared with `make image-cpu` (cached), so a build that stops at the torch
    check takes seconds.
    """
    tag = f"vda:test-{uuid.uuid4().hex[:8]}"
    args = ["docker", "build", "--network", "none", "--force-rm", "-f", "docker/Dockerfile", "-t", tag]
    args += ["--target", target] if target else []
    for arg in (f"BASE_IMAGE={base}", *build_args):
        args += ["--build-arg", arg]
    try:
        return _run([*args, "."], timeout=timeout)
    finally:
        _run(["docker", "image", "rm", "--force", tag], timeout=120)


def _in_image(image: str, *cmd: str, timeout=120):
    return _run(["docker", "run", "--rm", "--network", "none", image, *cmd], timeout=timeout)


# ------------------------------------------------------------------------------ (a) the image


def test_image_config(cpu_image):
    r = _run(["docker", "image", "inspect", "--format", "{{json .Config}}", cpu_image])
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    assert cfg["Entrypoint"] == ["tini", "--"]
    assert cfg["Cmd"] == ["vda", "--help"]
    assert cfg["WorkingDir"] == "/work"
    assert "PYTHONUNBUFFERED=1" in cfg["Env"]
    assert cfg["User"] and not cfg["User"].startswith(("0", "root"))


def test_image_runs_as_non_root(cpu_image):
    r = _in_image(cpu_image, "id", "-u")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() != "0"
    assert r.stdout.strip() == "1000"


def test_image_cpu_torch(cpu_image):
    code = "import torch, json; print(json.dumps([torch.__version__, torch.cuda.is_available(), torch.version.cuda]))"
    r = _in_image(cpu_image, "python", "-c", code)
    assert r.returncode == 0, r.stderr
    version, cuda_available, cuda_build = json.loads(r.stdout.strip().splitlines()[-1])
    assert version == "2.13.0+cpu"
    assert cuda_available is False
    assert cuda_build is None


def test_image_imports(cpu_image):
    r = _in_image(cpu_image, "python", "-c", "import torch, numpy, av, cv2, docker, ray, vda.cli.main")
    assert r.returncode == 0, r.stderr


def test_gpu_image_build_refuses_cpu_torch(offline_build_inputs):
    """The default (TORCH_BUILD=cuda) build with the CPU wheelhouse stops at the deps stage with one clear line."""
    r = _offline_build(offline_build_inputs, "WHEELHOUSE=only")
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-3000:]
    assert CPU_TORCH_REFUSED.search(out), out[-3000:]
    assert "Successfully tagged" not in out


def test_cpu_build_accepts_cpu_torch(offline_build_inputs):
    """What `make image-cpu` does (TORCH_BUILD=cpu), up to the end of the deps stage, where the check runs."""
    r = _offline_build(offline_build_inputs, "WHEELHOUSE=only", "TORCH_BUILD=cpu", target="deps")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]  # the check's own line shows only when its layer is not cached
    assert not CPU_TORCH_REFUSED.search(out)


def test_weights_stage_reads_the_registry_table(offline_build_inputs):
    """CHECKPOINT=<name> is looked up in vda/model/registry.json, the table the code reads: a known name gets its
    repository and file from there (the download itself then fails: no network), an unknown one lists the table."""
    from vda.model.registry import CHECKPOINTS

    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert "COPY vda/model/registry.json" in dockerfile and ".pth" not in dockerfile  # no second table
    build = ("WHEELHOUSE=only", "TORCH_BUILD=cpu")
    ck = next(c for c in CHECKPOINTS if c.name == "metric-vitb")
    r = _offline_build(offline_build_inputs, *build, f"CHECKPOINT={ck.name}", target="weights")
    out = r.stdout + r.stderr
    baking = f"baking {ck.repo_id}/{ck.filename} into /opt/vda/models (license: {ck.license})"
    assert r.returncode != 0 and baking in out, out[-3000:]
    r = _offline_build(offline_build_inputs, *build, "CHECKPOINT=vitz", target="weights")
    out = r.stdout + r.stderr
    names = "|".join(c.name for c in CHECKPOINTS)
    assert r.returncode != 0 and f"unknown CHECKPOINT 'vitz' ({names}|custom|none)" in out, out[-3000:]


def test_plain_build_never_takes_the_wheelhouse(offline_build_inputs):
    """No build args but the base: WHEELHOUSE defaults to off, so offline it fails on the network, not on wheels."""
    r = _offline_build(offline_build_inputs, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-3000:]
    # The lines as the step prints them (the legacy builder also echoes the RUN instruction, which names both).
    assert re.search(r"^installing from the network \(PyPI\)$", out, re.M), out[-3000:]
    assert not re.search(r"^installing offline from \d+ wheels", out, re.M)


def test_make_passes_torch_build_and_index():
    """`make image-cpu` asks for the CPU build, `make image` for CUDA, with TORCH_INDEX passed through."""

    def dry_run(*args: str) -> str:
        r = _run(["make", "-n", "--no-print-directory", "-f", "docker/docker.mk", *args], timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout

    cpu = dry_run("image-cpu", f"PY={sys.executable}")
    assert "--build-arg TORCH_BUILD=cpu" in cpu and "--build-arg WHEELHOUSE=only" in cpu
    gpu = dry_run("image", "TORCH_INDEX=cu126")
    assert "--build-arg TORCH_BUILD=cuda" in gpu
    assert '--build-arg TORCH_INDEX="cu126"' in gpu
    assert "--build-arg WHEELHOUSE=off" in gpu


# ------------------------------------------------------------------------------ (b) compose.yaml


def _compose_env(**overrides) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in COMPOSE_VARS and not k.startswith("COMPOSE_")}
    env.update(overrides)
    return env


def _compose_config(env) -> dict:
    r = _run(["docker", "compose", "-f", str(REPO / "compose.yaml"), "config", "--format", "json"], env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _mount(service: dict, target: str) -> dict:
    (m,) = [v for v in service["volumes"] if v["target"] == target]
    return m


@pytest.mark.parametrize("with_vars", [False, True], ids=["defaults", "env-set"])
def test_compose_config(compose, tmp_path, with_vars):
    """Both services run `vda depth` on the input folder, as the CLI of this tree parses it."""
    from vda.cli.main import parser

    if with_vars:
        env = _compose_env(
            VDA_IMAGE="vda:test",
            INPUT_DIR=str(tmp_path / "in"),
            OUT_DIR=str(tmp_path / "out"),
            GPUS="3",
            DEVICES="cpu,cpu",
            UID="1234",
            GID="4321",
        )
        expect = {
            "image": "vda:test",
            "cpu_image": "vda:test",
            "gpus": "3",
            "devices": "cpu,cpu",
            "user": "1234:4321",
            "input": str(tmp_path / "in"),
            "out": str(tmp_path / "out"),
        }
    else:
        env = _compose_env()
        expect = {
            "image": "vda:latest",
            "cpu_image": "vda:cpu",
            "gpus": "1",
            "devices": "cpu",
            "user": "1000:1000",
            "input": str(REPO / "input"),
            "out": str(REPO / "out"),
        }
    cfg = _compose_config(env)
    gpu, cpu = cfg["services"]["depth"], cfg["services"]["depth-cpu"]

    (dev,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert dev["driver"] == "nvidia"
    assert dev["capabilities"] == ["gpu"]
    assert dev["count"] in (-1, "all")  # every GPU; --gpus picks how many of them the run uses
    assert "deploy" not in cpu  # the CPU service asks for no GPU

    assert gpu["command"] == ["vda", "depth", "/input", "-o", "/work/out", "--gpus", expect["gpus"]]
    assert cpu["command"] == ["vda", "depth", "/input", "-o", "/work/out", "--devices", expect["devices"]]
    for svc in (gpu, cpu):  # a subcommand or flag this tree's `vda` lacks would fail here, not in a user's run
        args = parser().parse_args(svc["command"][1:])
        assert (args.command, args.inputs, args.out) == ("depth", ["/input"], "/work/out")
    assert gpu["image"] == expect["image"] and cpu["image"] == expect["cpu_image"]
    for svc in (gpu, cpu):
        assert svc["network_mode"] == "none"
        assert svc["user"] == expect["user"]
        inp = _mount(svc, "/input")
        assert inp["read_only"] is True
        assert inp["source"] == expect["input"]
        assert _mount(svc, "/models")["read_only"] is True
        out = _mount(svc, "/work/out")
        assert out["source"] == expect["out"] and not out.get("read_only", False)


# ------------------------------------------------------------------------------ (c) no NVIDIA runtime


def test_gpu_service_without_nvidia_runtime_fails(compose, cpu_image, tmp_path):
    r = _run(["docker", "info", "--format", "{{json .Runtimes}}"], timeout=30)
    if "nvidia" in r.stdout:
        pytest.skip("this engine has the NVIDIA runtime: the service would really start here")
    for d in ("in", "out"):
        (tmp_path / d).mkdir()
    env = _compose_env(
        VDA_IMAGE=cpu_image,
        INPUT_DIR=str(tmp_path / "in"),
        OUT_DIR=str(tmp_path / "out"),
        UID=str(os.getuid()),
        GID=str(os.getgid()),
    )
    project = f"vdatest{uuid.uuid4().hex[:8]}"
    base = ["docker", "compose", "-f", str(REPO / "compose.yaml"), "-p", project]
    try:
        r = _run([*base, "run", "--rm", "--pull", "never", "depth"], env=env, timeout=300)
    finally:
        _run([*base, "down", "--remove-orphans"], env=env, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert NVIDIA_ERROR in out, out
    assert not list((tmp_path / "out").iterdir())  # nothing ran


# ------------------------------------------------------------------------------ (d) the image as a Ray node


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_compose_ray_profile_runs_a_batch_across_two_node_containers(compose, cpu_image, tmp_path, checkpoint):
    """`docker compose --profile ray`: a head and a worker container, each a Ray node with one CPU, and `vda depth
    --backend ray` run on the head. Units run on both nodes, and the output equals the local backend's run."""
    from conftest import synthetic_frames, write_video

    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    out.mkdir()
    write_video(inp / "clip.mp4", synthetic_frames(130, 64, 48))  # 6 windows, a unit each
    shutil.copy(checkpoint, inp / "weights.pth")  # not a video: the folder is still one video input
    flags = ["--checkpoint", "/input/weights.pth", "--input-size", "28", "--unit-size", "1", "--format", "npy"]
    env = _compose_env(
        VDA_IMAGE=cpu_image,
        INPUT_DIR=str(inp),
        OUT_DIR=str(out),
        UID=str(os.getuid()),
        GID=str(os.getgid()),
        RAY_PORT=str(_free_port()),
        RAY_OBJECT_STORE_BYTES="200000000",
        RAY_SHM="300m",
    )
    base = ["docker", "compose", "-f", str(REPO / "compose.yaml"), "-p", f"vdatest{uuid.uuid4().hex[:8]}"]
    base += ["--profile", "ray"]
    alive = "import ray; ray.init('auto', log_to_driver=False); print(sum(n['Alive'] for n in ray.nodes()))"
    try:
        r = _run([*base, "up", "-d", "--pull", "never", "ray-head", "ray-worker"], env=env, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        for _ in range(60):  # the worker joins once the head listens
            r = _run([*base, "exec", "-T", "ray-head", "python", "-c", alive], env=env, timeout=120)
            if r.stdout.strip().endswith("2"):
                break
        assert r.stdout.strip().endswith("2"), r.stdout + r.stderr
        cmd = ["vda", "depth", "/input", "-o", "/work/out", "--backend", "ray", "--ray-address", "auto"]
        # worker 0 is slowed (a slow device), so that the other one, however late its actor starts, gets units
        slow = ["-e", "VDA_WORKER_DELAY=0:3"]
        r = _run([*base, "exec", "-T", *slow, "ray-head", *cmd, "--devices", "cpu,cpu", *flags], env=env, timeout=900)
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    finally:
        _run([*base, "down", "--remove-orphans", "--timeout", "5"], env=env, timeout=180)
    record = json.loads((out / "_run" / "processing_results.json").read_text())
    assert len({u["nodes"][0] for u in record["units"]}) == 2  # both node containers computed units
    local = tmp_path / "local"
    local_flags = [*flags[2:], "--checkpoint", str(checkpoint)]
    cmd = [sys.executable, "-m", "vda", "depth", str(inp / "clip.mp4"), "-o", str(local), "--devices", "cpu"]
    r = _run([*cmd, *local_flags], timeout=600)
    assert r.returncode == 0, r.stderr
    frames = sorted(local.glob("depth_*.npy"))
    assert len(frames) == 130
    for f in frames:
        ours, ref = np.load(out / f.name), np.load(f)
        assert float(np.abs(ours - ref).max()) <= 1e-4 * float(np.abs(ref).max())
