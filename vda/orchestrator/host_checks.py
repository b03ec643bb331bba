"""What `vda doctor` checks on a host, each check one pure function of injected probes that returns one `Check`.

A new host fails in a handful of known ways (no engine, no NVIDIA container runtime, a driver older than the CUDA
torch was built for, no checkpoint), each otherwise seen late, as a traceback from deep inside a run. Every outside
fact goes through `Probes`, so tests replace any of them (no GPU where they run). Disk and cores are checked in
vda.orchestrator.capacity.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

GPU_IMAGE = "vda:latest"  # what `make depth GPUS=N` runs (docker/docker.mk VDA_IMAGE)
CPU_IMAGE = "vda:cpu"

# Tags of https://download.pytorch.org/whl/<tag>, for the advice to build the image against an older CUDA.
TORCH_CUDA_TAGS = ("cu118", "cu121", "cu124", "cu126", "cu128", "cu129", "cu130")

_NOT_FOUND, _TIMED_OUT = 127, 124  # Probes.run's codes when the program is missing or does not answer in time


@dataclass(frozen=True)
class Check:
    """One line of the report. ok: True (✓), False (✗: `make depth` would fail), None (information only)."""

    name: str
    ok: bool | None
    detail: str
    fix: str = ""

    def __post_init__(self) -> None:
        if self.ok is False and not self.fix:
            raise ValueError(f"a failed check must name its fix: {self.name}")
        if "\n" in self.detail + self.fix:
            raise ValueError(f"a check is one line: {self.name}")

    def line(self) -> str:
        mark = {True: "✓", False: "✗", None: "-"}[self.ok]
        text = f"{mark} {self.name}: {self.detail}"
        return f"{text}; {self.fix}" if self.fix and self.ok is not True else text


@dataclass(frozen=True)
class Options:
    gpus: int | None = None  # GPUs the user means to use (--gpus N); None: the GPU lines only inform
    encoder: str = "vits"
    metric: bool = False
    video: Path | None = None
    out: Path | None = None
    fmt: str = "png16"
    image: str = GPU_IMAGE


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_mib: int
    compute_cap: str  # "9.0"; "?" from drivers too old to report it


class Probes:
    """The machine as the checks see it. Every outside fact goes through here, so tests can replace any of them."""

    def run(self, cmd: list[str], timeout: float = 60) -> tuple[int, str]:
        """(exit code, stdout); when the command fails, stdout and stderr together, so a check can tell why.

        A missing program gives 127 and a command that does not finish in `timeout` seconds 124, as a shell does.
        """
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError:
            return _NOT_FOUND, f"{cmd[0]}: not found"
        except subprocess.TimeoutExpired:
            return _TIMED_OUT, f"{cmd[0]}: no answer in {timeout:.0f} s"
        except OSError as err:
            return _NOT_FOUND, f"{cmd[0]}: {err.strerror}"
        return proc.returncode, proc.stdout if proc.returncode == 0 else proc.stdout + proc.stderr

    def cpus(self) -> int:
        from vda.system import usable_cpus

        return usable_cpus()

    def free_bytes(self, folder: Path) -> int:
        return shutil.disk_usage(folder).free

    def venv_torch_cuda(self) -> str | None:
        """CUDA version of this environment's torch build; None for a CPU-only build."""
        import torch

        return torch.version.cuda

    def image_torch_cuda(self, image: str) -> str | None:
        """CUDA version of the torch build inside a local image: "" when the image is not there, None for CPU-only."""
        code, _ = self.run(["docker", "image", "inspect", "--format", "{{.Id}}", image], timeout=30)
        if code != 0:
            return ""
        script = "import torch; print(torch.version.cuda or 'none')"
        cmd = ["docker", "run", "--rm", "--pull", "never", "--network", "none", "--entrypoint", "python", image]
        code, out = self.run([*cmd, "-c", script], timeout=180)
        words = out.split()
        return None if code != 0 or not words or words[-1] == "none" else words[-1]


# -- Docker ---------------------------------------------------------------------------------------------------------
def check_engine(p: Probes) -> Check:
    code, out = p.run(["docker", "version", "--format", "{{.Server.Version}}"], timeout=30)
    if code == 0 and out.strip():
        return Check("Docker engine", True, f"version {out.strip()}, reachable")
    if code == _NOT_FOUND:
        return Check(
            "Docker engine",
            False,
            "the docker command is not installed",
            "install Docker Engine (`make engine` as root installs docker.io), or run make depth BACKEND=local",
        )
    if "permission denied" in out.lower():
        return Check(
            "Docker engine",
            False,
            "your user may not use the engine's socket",
            "add it to the docker group (`sudo usermod -aG docker $USER`, then log in again), or run as root",
        )
    return Check(
        "Docker engine",
        False,
        "the engine does not answer",
        "start it (`sudo systemctl start docker`, or `make engine`), or run make depth BACKEND=local",
    )


def check_compose(p: Probes, engine: Check) -> Check:
    """Information only: `make depth` drives the engine itself; Compose by hand (docs/docker.md) needs the plugin."""
    if engine.ok is not True and "not installed" in engine.detail:
        return Check("Docker Compose", None, "not checked: no docker command")
    code, out = p.run(["docker", "compose", "version", "--short"], timeout=30)
    if code == 0 and out.strip():
        return Check("Docker Compose", True, f"version {out.strip()}")
    return Check(
        "Docker Compose",
        None,
        "the compose plugin is missing (only the by-hand Compose route needs it)",
        "`make engine` installs it",
    )


def check_gpu_runtime(p: Probes, gpus: list[Gpu] | None, engine: Check, image: str) -> Check:
    """A tiny container with `--gpus all` must list the GPUs: the one real test of the NVIDIA container runtime."""
    name = "NVIDIA container runtime"
    if not gpus:
        return Check(name, None, "not checked: no GPU")
    if engine.ok is not True:
        return Check(name, None, "not checked: no Docker engine")
    from vda.orchestrator.backends.docker import NVIDIA_HINT

    toolkit = NVIDIA_HINT.partition(": ")[2]  # the advice part of the backend's message, the same words a run prints
    local = next(
        (
            img
            for img in dict.fromkeys((image, GPU_IMAGE, CPU_IMAGE))
            if p.run(["docker", "image", "inspect", "--format", "{{.Id}}", img], timeout=30)[0] == 0
        ),
        None,
    )
    if local is None:  # nothing local to run, and the network may be off: the engine's runtimes are the best hint
        code, out = p.run(["docker", "info", "--format", "{{json .Runtimes}}"], timeout=30)
        if code == 0 and '"nvidia"' in out:
            return Check(name, None, "the engine has the nvidia runtime; not tried (no local image: `make image`)")
        return Check(name, False, "the engine has no nvidia runtime", toolkit)
    cmd = ["docker", "run", "--rm", "--pull", "never", "--network", "none", "--gpus", "all"]
    code, out = p.run([*cmd, "--entrypoint", "nvidia-smi", local, "-L"], timeout=180)
    seen = sum(line.startswith("GPU ") for line in out.splitlines())
    if code == 0 and seen:
        return Check(name, True, f"a container sees {seen} GPU(s) (docker run --gpus all {local})")
    if any(s in out for s in ("could not select device driver", "invalid runtime name: nvidia", "nvidia-container")):
        return Check(name, False, "Docker cannot give containers a GPU (no NVIDIA container runtime)", toolkit)
    return Check(
        name,
        False,
        f"a container started with --gpus all sees no GPU (exit {code})",
        f"run `docker run --rm --gpus all {local} nvidia-smi -L` for Docker's reason; if it names the runtime, "
        + toolkit,
    )


# -- GPUs and CUDA --------------------------------------------------------------------------------------------------
def query_gpus(p: Probes) -> list[Gpu] | None:
    """GPUs nvidia-smi lists ([] when it fails, None when it is not installed)."""
    fields = "index,name,memory.total,compute_cap"
    code, out = p.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits"], timeout=60)
    if code == _NOT_FOUND:
        return None
    if code != 0:  # drivers before 510 do not know compute_cap
        code, out = p.run(["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"])
        if code != 0:
            return []
    gpus = []
    for line in out.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 3 or not cells[0].isdigit():
            continue
        memory = re.match(r"\d+", cells[2])
        gpus.append(Gpu(int(cells[0]), cells[1], int(memory.group()) if memory else 0, (cells[3:] or ["?"])[0]))
    return gpus


def driver_cuda(p: Probes) -> tuple[int, int] | None:
    """The newest CUDA the driver supports, from nvidia-smi's header ("CUDA Version: 12.4")."""
    code, out = p.run(["nvidia-smi"], timeout=60)
    found = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", out) if code == 0 else None
    return (int(found.group(1)), int(found.group(2))) if found else None


def check_gpus(gpus: list[Gpu] | None, wanted: int | None) -> Check:
    name = "GPUs"
    cpu_route = "or run on CPU: make depth DEVICES=cpu,cpu"
    if gpus is None:
        detail = "no NVIDIA GPU is visible (no nvidia-smi)"
        if wanted:
            return Check(name, False, f"{detail}, --gpus {wanted} asked for", f"install the NVIDIA driver, {cpu_route}")
        return Check(name, None, f"{detail}; make depth runs here with DEVICES=cpu,cpu")
    if not gpus:
        return Check(
            name,
            False,
            "nvidia-smi is installed but lists no GPU: the driver does not work",
            f"reboot after a driver update, or reinstall the driver until `nvidia-smi` lists the GPUs, {cpu_route}",
        )
    kinds: dict[tuple[str, int, str], int] = {}
    for g in gpus:
        kinds[(g.name, g.memory_mib, g.compute_cap)] = kinds.get((g.name, g.memory_mib, g.compute_cap), 0) + 1
    listed = ", ".join(
        f"{n} x {model} ({mib / 1024:.0f} GiB, compute capability {cap})" for (model, mib, cap), n in kinds.items()
    )
    if wanted and wanted > len(gpus):
        return Check(
            name,
            False,
            f"--gpus {wanted} asked for but {len(gpus)} visible: {listed}",
            f"use GPUS={len(gpus)} or fewer (make depth GPUS=N)",
        )
    return Check(name, True, f"{len(gpus)} visible: {listed}")


def build_cuda(p: Probes, image: str, engine: Check) -> tuple[str | None, str]:
    """CUDA version of the torch that the GPU workers will run, and where it was read.

    The image's torch when the image exists (that is what `make depth` runs), else this venv's torch (from the same
    pinned spec, so on a GPU host usually the same build); None when neither is a CUDA build.
    """
    if engine.ok is True:
        found = p.image_torch_cuda(image)
        if found != "":
            return found, f"torch in {image}"
    return p.venv_torch_cuda(), "torch in this venv"


def check_cuda(p: Probes, gpus: list[Gpu] | None, image: str, engine: Check) -> Check:
    """The driver must support the CUDA torch was built with (major.minor), or no kernel runs."""
    name = "CUDA driver vs torch"
    if not gpus:
        return Check(name, None, "not checked: no GPU")
    driver = driver_cuda(p)
    if driver is None:
        return Check(
            name,
            False,
            "nvidia-smi does not say which CUDA the driver supports",
            "update the NVIDIA driver (its header must show `CUDA Version: X.Y`)",
        )
    built, where = build_cuda(p, image, engine)
    have = f"the driver supports CUDA {driver[0]}.{driver[1]}"
    if built is None:
        return Check(name, None, f"{have}; no CUDA torch to compare with yet (`make image`, then run this again)")
    need = tuple(int(x) for x in re.findall(r"\d+", built)[:2])
    if driver >= need:
        return Check(name, True, f"{have}, {where} is built for CUDA {built}")
    if driver[0] == need[0]:  # CUDA's minor-version compatibility: a 12.x build runs on any 12.x driver
        return Check(name, True, f"{have}, {where} is built for CUDA {built} (same major version: compatible)")
    older = [t for t in TORCH_CUDA_TAGS if (int(t[2:-1]), int(t[-1])) <= driver]
    index = (
        f"`make image TORCH_INDEX={older[-1]}`" if older else "`make image TORCH_INDEX=cuXY` with X.Y <= the driver's"
    )
    return Check(
        name,
        False,
        f"{have}, older than CUDA {built} that {where} is built for",
        f"update the NVIDIA driver to one for CUDA {built} or newer, or build the image with an older CUDA wheel "
        f"index: {index}",
    )


# -- checkpoints ----------------------------------------------------------------------------------------------------
def locate(ck) -> Path | None:
    """Where `vda.model.registry.resolve` would find the file, without downloading and without its licence banner."""
    from vda.model.registry import local_file

    local = local_file(ck)
    if local is not None:
        return local
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    cached = try_to_load_from_cache(ck.repo_id, ck.filename)  # the cache only: never the network
    return Path(cached) if isinstance(cached, str) else None


def check_checkpoint(encoder: str, metric: bool, required: bool, where_is: Callable = locate) -> Check:
    """Found where, its licence, and whether it loads into the model (strict names and shapes, on the meta device)."""
    from vda.model.network import CheckpointError, read_state_dict
    from vda.model.registry import find as published
    from vda.model.registry import models_dir
    from vda.orchestrator.planning import check_layout

    ck = published(encoder, metric)
    name = f"{'metric ' if metric else ''}{encoder} checkpoint"
    path = where_is(ck)
    replace = f"replace it with {ck.filename} from {ck.url}"
    if path is None:
        where = f"{models_dir() / ck.filename}"
        if required:
            return Check(
                name,
                False,
                f"{ck.filename} not found (models folder, $VDA_MODELS_DIR, Hugging Face cache)",
                f"download it from {ck.url} and place it at {where}, or pass --checkpoint PATH to vda depth",
            )
        return Check(name, None, f"{ck.filename} not found (optional; {ck.license}); to use it, put it at {where}")
    try:
        state = read_state_dict(path)
    except CheckpointError:
        return Check(name, False, f"{path} cannot be read as a checkpoint", replace)
    try:
        check_layout(state, encoder)
    except CheckpointError as err:
        counts = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else "wrong tensors"
        return Check(name, False, f"{path} does not match the layout of {encoder} ({counts})", replace)
    licence = ck.license + (": non-commercial use only" if "NC" in ck.license else "")
    return Check(name, True, f"{path} ({licence}), layout ok")
