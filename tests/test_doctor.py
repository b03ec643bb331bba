"""`vda doctor`: each check's line and the exit code, on the real CLI where the machine allows it.

The Docker lines run against the real engine (marked `docker`: skipped without one unless VDA_REQUIRE_DOCKER=1).
No GPU exists where these tests run, so the GPU lines are tested with a fake `nvidia-smi` on PATH that prints a real
driver's canned output (marked `gpu_logic`).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, synthetic_frames, write_video

from vda.cli.doctor import checks
from vda.core import stitch
from vda.core.preprocess import network_shape
from vda.model.synth import save_checkpoint
from vda.orchestrator.capacity import check_cores, check_disk, draft_plan
from vda.orchestrator.host_checks import (
    Check,
    Gpu,
    Options,
    Probes,
    check_checkpoint,
    check_cuda,
    check_gpu_runtime,
    check_gpus,
    query_gpus,
)
from vda.orchestrator.space import human_size

MARKS = ("✓ ", "✗ ", "- ")
ENGINE_OK = Check("Docker engine", True, "version test, reachable")
ENGINE_DOWN = Check("Docker engine", False, "the engine does not answer", "start it")

HEADER = """\
Tue Nov 25 10:00:00 2026
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 550.54.15              Driver Version: 550.54.15      CUDA Version: {cuda}     |
|-----------------------------------------+------------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |
"""


def fake_nvidia_smi(folder: Path, gpus: int = 8, cuda: str = "12.4", broken: bool = False) -> Path:
    """A `nvidia-smi` script printing what a driver prints for -L, --query-gpu=... and the plain header."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{i}, NVIDIA H200, 143771 MiB, 9.0\\n" for i in range(gpus))
    listing = "".join(f"GPU {i}: NVIDIA H200 (UUID: GPU-{i:08d}-0000-0000-0000-000000000000)\\n" for i in range(gpus))
    header = HEADER.format(cuda=cuda).replace("\n", "\\n")
    body = (
        'echo "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver." >&2; exit 9'
        if broken
        else f"""case "$*" in
  *--query-gpu=*) printf '{rows}' ;;
  -L) printf '{listing}' ;;
  "") printf '{header}' ;;
  *) echo "fake nvidia-smi: unexpected $*" >&2; exit 2 ;;
esac"""
    )
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return folder


@pytest.fixture()
def gpu_path(tmp_path, monkeypatch) -> Path:
    """PATH with the fake nvidia-smi (8 H200s, driver for CUDA 12.4) first."""
    folder = fake_nvidia_smi(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return folder


class NoMachine(Probes):
    """Neither docker nor nvidia-smi: every command is missing."""

    def run(self, cmd, timeout=60):
        return 127, f"{cmd[0]}: not found"


class Build(Probes):
    """The real commands (so the fake nvidia-smi on PATH), with a chosen CUDA for the torch build."""

    def __init__(self, image: str | None = "", venv: str | None = None):
        self.image, self.venv = image, venv

    def image_torch_cuda(self, image):
        return self.image

    def venv_torch_cuda(self):
        return self.venv


class Cores(Probes):
    def __init__(self, n: int):
        self.n = n

    def cpus(self):
        return self.n


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A models folder holding the synthetic vits checkpoint under its published name."""
    folder = tmp_path_factory.mktemp("models")
    save_checkpoint(folder, "vits")
    return folder


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", synthetic_frames(60, 320, 240))


def doctor(*args, models_dir: Path, home: Path, path_first: Path | None = None, cores: int | None = None):
    """`vda doctor` in a subprocess, offline, with only `models_dir` (and an empty HF cache) to find weights in."""
    env = {**os.environ, "VDA_MODELS_DIR": str(models_dir), "HF_HUB_OFFLINE": "1", "HF_HOME": str(home)}
    if path_first:
        env["PATH"] = f"{path_first}{os.pathsep}{env['PATH']}"
    cpus = sorted(os.sched_getaffinity(0))[:cores] if cores else None
    proc = subprocess.run(
        [sys.executable, "-m", "vda", "doctor", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )
    lines = proc.stdout.splitlines()
    assert_report(lines)
    return proc.returncode, lines, proc.stderr


def assert_report(lines: list[str]) -> None:
    """Every line is one check (no continuation lines), and every ✗ names its fix after '; '."""
    assert lines
    for line in lines:
        assert line.startswith(MARKS), line
        if line.startswith("✗ "):
            assert "; " in line and line.rsplit("; ", 1)[1].strip(), line


def line_of(lines: list[str], name: str) -> str:
    (found,) = [line for line in lines if line[2:].startswith(f"{name}:")]
    return found


def _engine() -> None:
    code = subprocess.run(["docker", "version"], capture_output=True).returncode if shutil.which("docker") else 1
    if code != 0:
        if os.environ.get("VDA_REQUIRE_DOCKER") == "1":
            pytest.fail("Docker engine unreachable but VDA_REQUIRE_DOCKER=1")
        pytest.skip("no reachable Docker engine")


# -- the CPU path, real engine --------------------------------------------------------------------------------------
@pytest.mark.docker
def test_a_ready_cpu_host_passes(tmp_path, models, clip):
    _engine()
    code, lines, err = doctor("--video", clip, "-o", tmp_path / "out", models_dir=models, home=tmp_path / "hf")
    assert line_of(lines, "Docker engine").startswith("✓ Docker engine: version ")
    assert line_of(lines, "Docker Compose").startswith("✓ Docker Compose: version ")
    vits = line_of(lines, "vits checkpoint")
    assert vits == f"✓ vits checkpoint: {models / 'video_depth_anything_vits.pth'} (Apache-2.0), layout ok"
    assert line_of(lines, "vitb checkpoint").startswith("- vitb checkpoint: video_depth_anything_vitb.pth not found")
    assert line_of(lines, "disk").startswith("✓ disk: 60 frames at 320x240 need about ")
    assert "vda: using" not in err  # no licence banner from vda.model.registry.resolve
    if shutil.which("nvidia-smi") is None:
        assert line_of(lines, "NVIDIA container runtime") == "- NVIDIA container runtime: not checked: no GPU"
        assert line_of(lines, "GPUs").startswith("- GPUs: no NVIDIA GPU is visible")
        assert line_of(lines, "CPU cores") == "- CPU cores: not checked: no GPU"
        assert code == 0, "\n".join(lines)


def test_a_missing_default_checkpoint_fails_and_says_where_to_put_it(tmp_path):
    empty = tmp_path / "models"
    empty.mkdir()
    code, lines, _ = doctor(models_dir=empty, home=tmp_path / "hf")
    assert code == 1
    vits = line_of(lines, "vits checkpoint")
    assert vits.startswith("✗ vits checkpoint: video_depth_anything_vits.pth not found")
    assert f"place it at {empty / 'video_depth_anything_vits.pth'}" in vits
    assert "https://huggingface.co/depth-anything/Video-Depth-Anything-Small" in vits
    assert line_of(lines, "vitl checkpoint").startswith("- vitl checkpoint:")  # optional: information only


def test_a_corrupt_checkpoint_fails(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    bad = folder / "video_depth_anything_vits.pth"
    bad.write_bytes(b"<html>404 not found</html>")  # what a failed download leaves behind
    code, lines, _ = doctor(models_dir=folder, home=tmp_path / "hf")
    assert code == 1
    vits = line_of(lines, "vits checkpoint")
    assert vits.startswith(f"✗ vits checkpoint: {bad} cannot be read as a checkpoint; replace it with ")


def test_a_checkpoint_of_another_layout_fails(tmp_path, monkeypatch, models):
    monkeypatch.setenv("VDA_MODELS_DIR", str(tmp_path))
    wrong = tmp_path / "video_depth_anything_vitb.pth"  # the vits weights under vitb's name
    shutil.copy(models / "video_depth_anything_vits.pth", wrong)
    check = check_checkpoint("vitb", False, required=False)
    assert check.ok is False  # a broken file fails even for an optional encoder: someone meant to use it
    assert check.line().startswith(f"✗ vitb checkpoint: {wrong} does not match the layout of vitb (")
    assert "misshaped" in check.line() and "replace it with video_depth_anything_vitb.pth from https://" in check.line()
    torch.save({"x": torch.zeros(1)}, wrong)
    assert "does not match the layout of vitb (" in check_checkpoint("vitb", False, required=True).line()


def test_metric_checks_the_metric_checkpoints_and_requires_the_named_one(tmp_path, monkeypatch, models):
    monkeypatch.setenv("VDA_MODELS_DIR", str(models))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    found = {c.name: c for c in checks(Options(metric=True), NoMachine())}
    assert found["vits checkpoint"].ok is True
    assert found["metric vits checkpoint"].ok is False  # --metric: the metric vits is what the run needs
    assert "metric_video_depth_anything_vits.pth" in found["metric vits checkpoint"].fix
    assert found["metric vitl checkpoint"].ok is None
    found = {c.name: c for c in checks(Options(encoder="vitb"), NoMachine())}
    assert found["vits checkpoint"].ok is True and found["vitb checkpoint"].ok is False


def test_without_docker_the_engine_line_fails_and_the_gpu_lines_are_skipped():
    found = {c.name: c for c in checks(Options(), NoMachine())}
    assert found["Docker engine"].line().startswith("✗ Docker engine: the docker command is not installed; install")
    assert found["Docker Compose"].ok is None
    assert found["NVIDIA container runtime"].line() == "- NVIDIA container runtime: not checked: no GPU"
    assert found["GPUs"].ok is None  # no --gpus: a CPU host is not a failure
    found = {c.name: c for c in checks(Options(gpus=2), NoMachine())}
    assert found["GPUs"].line().startswith("✗ GPUs: no NVIDIA GPU is visible (no nvidia-smi), --gpus 2 asked for; ")


def test_a_check_is_one_line_and_a_failure_names_its_fix():
    with pytest.raises(ValueError):
        Check("x", False, "broken")
    with pytest.raises(ValueError):
        Check("x", False, "broken\nreally", "fix it")
    assert Check("x", None, "absent", "put it there").line() == "- x: absent; put it there"
    assert Check("x", True, "fine", "unused").line() == "✓ x: fine"


# -- GPU lines, with a fake nvidia-smi ------------------------------------------------------------------------------
@pytest.mark.gpu_logic
def test_the_gpu_line_lists_the_gpus(gpu_path):
    """nvidia-smi is a fake (8 H200s): no GPU exists here."""
    gpus = query_gpus(Probes())
    assert gpus == [Gpu(i, "NVIDIA H200", 143771, "9.0") for i in range(8)]
    line = check_gpus(gpus, None).line()
    assert line == "✓ GPUs: 8 visible: 8 x NVIDIA H200 (140 GiB, compute capability 9.0)"
    assert check_gpus(gpus, 8).ok is True
    line = check_gpus(gpus, 9).line()
    assert line.startswith("✗ GPUs: --gpus 9 asked for but 8 visible: ") and line.endswith(
        "; use GPUS=8 or fewer (make depth GPUS=N)"
    )


@pytest.mark.gpu_logic
def test_a_broken_driver_fails_the_gpu_line(tmp_path, monkeypatch):
    """nvidia-smi is a fake that fails as it does when the driver is not loaded: no GPU exists here."""
    monkeypatch.setenv("PATH", f"{fake_nvidia_smi(tmp_path, broken=True)}{os.pathsep}{os.environ['PATH']}")
    gpus = query_gpus(Probes())
    assert gpus == []
    line = check_gpus(gpus, None).line()
    assert line.startswith("✗ GPUs: nvidia-smi is installed but lists no GPU: the driver does not work; reboot")


@pytest.mark.gpu_logic
def test_the_driver_must_support_the_cuda_of_the_torch_build(gpu_path):
    """nvidia-smi is a fake (driver for CUDA 12.4): no GPU exists here; the torch build's CUDA is given."""
    gpus = query_gpus(Probes())
    ok = check_cuda(Build(image="12.1"), gpus, "vda:latest", ENGINE_OK)
    assert (
        ok.line() == "✓ CUDA driver vs torch: the driver supports CUDA 12.4, torch in vda:latest is built for CUDA 12.1"
    )
    assert check_cuda(Build(image="11.8"), gpus, "vda:latest", ENGINE_OK).ok is True
    assert check_cuda(Build(image="12.4"), gpus, "vda:latest", ENGINE_OK).ok is True
    minor = check_cuda(Build(image="12.6"), gpus, "vda:latest", ENGINE_OK)  # minor-version compatibility
    assert minor.ok is True and "same major version: compatible" in minor.detail
    old = check_cuda(Build(image="13.0"), gpus, "vda:latest", ENGINE_OK).line()
    assert old.startswith("✗ CUDA driver vs torch: the driver supports CUDA 12.4, older than CUDA 13.0 that torch in ")
    assert "update the NVIDIA driver to one for CUDA 13.0 or newer" in old
    assert "older CUDA wheel index: `make image TORCH_INDEX=cu124`" in old
    # No image yet (or no engine): the venv's torch, from the same pinned spec, stands in for it.
    venv = check_cuda(Build(image="", venv="13.0"), gpus, "vda:latest", ENGINE_OK).line()
    assert venv.startswith(
        "✗ CUDA driver vs torch: the driver supports CUDA 12.4, older than CUDA 13.0 that torch in th"
    )
    assert check_cuda(Build(image="13.0", venv="12.1"), gpus, "vda:latest", ENGINE_DOWN).ok is True
    unknown = check_cuda(Build(image="", venv=None), gpus, "vda:latest", ENGINE_OK)
    assert unknown.ok is None and "`make image`, then run this again" in unknown.detail


@pytest.mark.gpu_logic
def test_too_few_cores_per_gpu_fail(gpu_path):
    """nvidia-smi is a fake (8 GPUs): no GPU exists here. Cores are sized from each stage's measured cost at the real
    sizes (a 1080p input: 1280x720 out, network 518x924), and the line names the stage that binds."""
    from vda.orchestrator.capacity import DEFAULT_SIZES, VITS_MS_PER_FRAME, host_cost

    cost = host_cost("png16", *DEFAULT_SIZES)
    assert set(cost.stages) == {"decode", "store", "pass 1", "render + write png16"} and min(cost.stages.values()) > 0
    per_gpu = cost.total / VITS_MS_PER_FRAME
    need = math.ceil(8 * per_gpu)
    line = check_cores(Cores(2), 8, "png16").line()
    assert line.startswith("✗ CPU cores: 2 usable for 8 GPU(s); 1920x1080 in, png16 at 1280x720 out, network 924x518: ")
    assert f"{cost.total:.1f} ms of CPU per frame (decode {cost.stages['decode']:.1f}, store " in line
    assert f"about {per_gpu:.1f} per GPU ({need})" in line and f"; {cost.binding} binds" in line
    assert cost.stages[cost.binding] == max(cost.stages.values())
    assert "npy needs" in line and "slower" in line  # npy renders for less than png16
    assert check_cores(Cores(need), 8, "png16").ok is True and check_cores(Cores(need - 1), 8, "png16").ok is False
    assert f"use at most {int(10 / per_gpu)} GPU(s) per host" in check_cores(Cores(10), 8, "png16").line()
    uhd = host_cost("png16", (3840, 2160), (1280, 720), (924, 518))
    assert (
        uhd.stages["decode"] == pytest.approx(4 * cost.stages["decode"]) and uhd.total > cost.total
    )  # decode scales with the input
    assert check_cores(Cores(2), 0, "png16").line() == "- CPU cores: not checked: no GPU"
    tiny = host_cost("png16", (320, 240), (320, 240), (686, 518))  # the network's maps are larger than the frames
    assert tiny.stages["render + write png16"] == pytest.approx(
        cost.stages["render + write png16"] * 686 * 518 / 921600
    )


@pytest.mark.gpu_logic
def test_doctor_on_a_fake_8_gpu_host_with_one_core(tmp_path, models):
    """nvidia-smi is a fake (8 H200s, driver for CUDA 12.4): no GPU exists here. One core: the merge cannot keep up."""
    code, lines, _ = doctor(
        models_dir=models, home=tmp_path / "hf", path_first=fake_nvidia_smi(tmp_path / "bin"), cores=1
    )
    assert code == 1
    assert line_of(lines, "GPUs") == "✓ GPUs: 8 visible: 8 x NVIDIA H200 (140 GiB, compute capability 9.0)"
    assert line_of(lines, "CPU cores").startswith("✗ CPU cores: 1 usable for 8 GPU(s);")
    cuda_line = line_of(lines, "CUDA driver vs torch")  # its mark depends on this machine's torch build, not the fake
    assert cuda_line[:2] in ("- ", "✓ ", "✗ ")
    assert cuda_line[2:].startswith("CUDA driver vs torch: the driver supports CUDA 12.4")
    assert line_of(lines, "vits checkpoint").startswith("✓ vits checkpoint:")


@pytest.mark.gpu_logic
@pytest.mark.docker
def test_an_engine_without_the_nvidia_runtime_fails_the_runtime_line(gpu_path):
    """nvidia-smi is a fake: no GPU exists here, and this engine has no NVIDIA runtime, as a fresh GPU host has not."""
    _engine()
    gpus = query_gpus(Probes())
    line = check_gpu_runtime(Probes(), gpus, ENGINE_OK, "vda:latest").line()
    assert line.startswith("✗ NVIDIA container runtime: ")
    assert "; install nvidia-container-toolkit (https://docs.nvidia.com/" in line and "nvidia-ctk runtime" in line


@pytest.mark.gpu_logic
def test_the_runtime_line_without_a_local_image_reads_the_engine_runtimes():
    """Commands are faked (no image to run, the engine's runtimes): no GPU exists here."""

    class Engine(Probes):
        def __init__(self, runtimes: str):
            self.runtimes = runtimes

        def run(self, cmd, timeout=60):
            if cmd[1:3] == ["image", "inspect"]:
                return 1, "Error: No such image"
            assert cmd[1] == "info", cmd  # nothing is started without an image
            return 0, self.runtimes

    gpus = [Gpu(0, "NVIDIA A100", 81920, "8.0")]
    no = check_gpu_runtime(Engine('{"runc":{"path":"runc"}}'), gpus, ENGINE_OK, "vda:latest")
    assert no.ok is False and no.fix.startswith("install nvidia-container-toolkit")
    yes = check_gpu_runtime(Engine('{"nvidia":{"path":"nvidia-container-runtime"}}'), gpus, ENGINE_OK, "vda:latest")
    assert yes.ok is None and "not tried" in yes.detail
    assert check_gpu_runtime(NoMachine(), gpus, ENGINE_DOWN, "x").line().endswith("not checked: no Docker engine")


# -- disk -----------------------------------------------------------------------------------------------------------
def test_the_disk_line_counts_windows_and_frames(tmp_path, clip):
    opts = Options(video=clip, out=tmp_path / "out", fmt="png16")
    plan = draft_plan(clip, ["cpu"], "vits")
    check = check_disk(Probes(), plan, opts)
    net_h, net_w = network_shape(240, 320, 518)
    windows = stitch.num_windows(60) * (32 * net_h * net_w * 4 + 128 + 512)  # fp32 on a CPU
    frames = 60 * (int(320 * 240 * 1.5) + 128)
    assert check.ok is True
    assert check.detail.startswith(f"60 frames at 320x240 need about {human_size(windows + frames)} (")
    assert f"{human_size(frames)} of png16) in {tmp_path / 'out'}; {tmp_path} has " in check.detail
    fp16 = check_disk(Probes(), draft_plan(clip, ["cuda:0", "cuda:1"], "vits"), opts)
    half = stitch.num_windows(60) * (32 * net_h * net_w * 2 + 128 + 512)
    assert f"({human_size(half)} of windows" in fp16.detail  # GPUs store fp16 windows


def test_an_unreadable_video_fails_the_disk_line(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    found = {c.name: c for c in checks(Options(video=bad), NoMachine())}
    assert found["disk"].line().startswith(f"✗ disk: {bad} cannot be read as a video or image folder; ")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="mounting a tmpfs needs root")
def test_too_small_a_disk_fails(tmp_path, models, clip):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        code, lines, _ = doctor("--video", clip, "-o", small / "out", models_dir=models, home=tmp_path / "hf")
    finally:
        subprocess.run(["umount", str(small)], check=False)
    assert code == 1
    disk = line_of(lines, "disk")
    assert disk.startswith("✗ disk: 60 frames at 320x240 need about ")
    assert f"in {small / 'out'}, but {small} has 1.0 MB free; free space or choose another output folder" in disk
