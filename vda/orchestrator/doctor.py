"""`vda doctor`: the first command on a new GPU host, before `make depth` spends minutes building an image.

A new host fails in a handful of known ways (no engine, no NVIDIA container runtime, a driver older than the CUDA
torch was built for, no checkpoint, too little disk, too few cores to decode, store and merge), and each one
otherwise shows up late, as a traceback from deep inside a run. Here each is one pure function of injected probes
(`Probes`: commands, CPU count, free disk, the venv's torch) that returns one `Check`, and `doctor` prints one line
per check:

    ✓ <what>            fine
    ✗ <what>; <fix>     `make depth` would fail (or, for the host's cores, crawl); the fix is ours, one line
    - <what>            information only (no GPU on this host, an optional checkpoint that is absent)

The exit code is 0 when nothing is ✗, 1 otherwise. Tests pass fakes (an `nvidia-smi` script on PATH, a Probes
subclass) because the machines they run on have no GPU.
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vda.errors import UsageError
from vda.io.writers import FORMATS
from vda.model.registry import ENCODERS

GPU_IMAGE = "vda:latest"  # what `make depth GPUS=N` runs (docker/docker.mk VDA_IMAGE)
CPU_IMAGE = "vda:cpu"

# Host CPU per output frame, stage by stage, from bench/RESULTS.md: bench_host.py's "stages" table (AFTER, issue 22),
# on a 1920x1080 x264 input at the defaults: decoded and resized to 1280x720 (max-res 1280), windows of 518x924
# stored in fp16 as a GPU stores them, and rendered + written at 1280x720 on one core. Each stage's cost is taken as
# proportional to the pixels it works on: the source's (decode), the network's (store, pass 1), the output's (render).
# Measured at commit 66f96ad on the 2-core build machine, rendering at one thread as a render process does (earlier
# figures rendered with torch's default threads, whose idle spinning tripled the CPU time): decode 15.21, store 1.74,
# pass 1 2.96, render + write npy 9.51 and png16 12.18 ms; pass 1 again at ba13975, at one thread of torch and of
# numpy's BLAS as `vda depth` runs it (vda.system.host_threads): 0.84 ms. png8, npz and exr were not run by
# bench_host.py: they are npy's render plus the difference of their writer's own cost from npy's at 1080p
# (bench_stages.py, "write <format> (1 core)": npy 562, png8 154, npz 3.1, exr 59.5 frames/s), scaled to 1280x720.
STAGE_MS = {"decode": 15.21, "store": 1.74, "pass 1": 0.84}
RENDER_MS = {"npy": 9.51, "png16": 12.18}
RENDER_MS.update(
    {
        f: 9.51 + (1000 / fps - 1000 / 562.0) * (1280 * 720) / (1920 * 1080)
        for f, fps in {"png8": 154.4, "npz": 3.1, "exr": 59.5}.items()
    }
)
BENCH_SOURCE, BENCH_NET, BENCH_OUT = 1920 * 1080, 518 * 924, 1280 * 720
# The authors' published vits latency (their README: fp16, A100, 32 frames at 518x518): 7.5 ms per frame, so one GPU
# makes about 133 frames/s.
VITS_MS_PER_FRAME = 7.5
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
    """Information only: `make depth` drives the engine itself; the by-hand Compose route (README) needs the plugin."""
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


# -- disk and cores -------------------------------------------------------------------------------------------------
def draft_plan(video: Path, devices: list[str], encoder: str, input_size: int = 518, max_res: int = 1280):
    """The plan `vda depth` would write, in memory only (no checkpoint needed), and the devices it would run on: what
    the space estimate reads."""
    from vda.core.plan import Plan, make_units
    from vda.io.probe import probe
    from vda.orchestrator.planning import ModelChoice, build_settings

    info = probe(video)
    settings = build_settings(info, ModelChoice(encoder, False, None, ""), input_size, max_res)
    return Plan(info, settings, make_units(info.frame_count, "window", settings.unit_size), "doctor"), devices


def video_plan(opts: Options, n_gpus: int):
    """The draft plan for --video on the GPUs (or a CPU), or the ✗ line when the video cannot be read."""
    from vda.io.probe import VideoError

    try:
        return draft_plan(opts.video, [f"cuda:{i}" for i in range(n_gpus)] or ["cpu"], opts.encoder)
    except VideoError:
        return Check(
            "disk",
            False,
            f"{opts.video} cannot be read as a video or image folder",
            "check the path, or re-encode it (`ffmpeg -i in.mp4 -c:v libx264 out.mp4`)",
        )


def check_disk(p: Probes, plan, opts: Options) -> Check:
    """What a fresh run of `plan` writes (windows in OUT/_run, frames in OUT) against the free space where OUT goes."""
    from vda.orchestrator.space import estimate, human_size

    plan, devices = plan
    need = estimate(plan, opts.fmt, plan.all_pieces(), plan.frame_count, devices)
    total = need.run_bytes + need.out_bytes
    out = opts.out or Path("out") / Path(plan.input.path).stem  # make depth's default OUT
    folder = Path(out).absolute()
    while not folder.exists():
        folder = folder.parent
    free = p.free_bytes(folder)
    s = plan.settings
    what = (
        f"{plan.frame_count} frames at {s.frame_width}x{s.frame_height} need about {human_size(total)} "
        f"({human_size(need.run_bytes)} of windows + {human_size(need.out_bytes)} of {opts.fmt}) in {out}"
    )
    if free < total:
        return Check(
            "disk",
            False,
            f"{what}, but {folder} has {human_size(free)} free",
            "free space or choose another output folder (-o OUT; make depth OUT=...), or write png8",
        )
    return Check("disk", True, f"{what}; {folder} has {human_size(free)} free")


@dataclass(frozen=True)
class HostCost:
    """Host CPU per output frame of each stage, in ms, for one video's sizes and format (`host_cost`)."""

    stages: dict[str, float]

    @property
    def total(self) -> float:
        return sum(self.stages.values())

    @property
    def binding(self) -> str:
        """The stage that takes the most CPU: the one to make cheaper (or give cores) first."""
        return max(self.stages, key=self.stages.get)

    def cores_per_gpu(self, gpu_ms: float = VITS_MS_PER_FRAME) -> float:
        return self.total / gpu_ms


def host_cost(fmt: str, source: tuple[int, int], out: tuple[int, int], net: tuple[int, int]) -> HostCost:
    """Each stage's measured cost (STAGE_MS, RENDER_MS) scaled to these sizes: the source frames (w, h), the output
    frames after --max-res, and the network's maps. Rendering never costs less than the maps every frame reads."""
    src, net_px = source[0] * source[1], net[0] * net[1]
    out_px = max(out[0] * out[1], net_px)
    return HostCost(
        {
            "decode": STAGE_MS["decode"] * src / BENCH_SOURCE,
            "store": STAGE_MS["store"] * net_px / BENCH_NET,
            "pass 1": STAGE_MS["pass 1"] * net_px / BENCH_NET,
            f"render + write {fmt}": RENDER_MS[fmt] * out_px / BENCH_OUT,
        }
    )


DEFAULT_SIZES = ((1920, 1080), (1280, 720), (924, 518))  # a 1080p input at the defaults: source, output, network


def check_cores(p: Probes, n_gpus: int, fmt: str, sizes: tuple | None = None) -> Check:
    """Decoding, storing and merging run on the host's CPU: fewer cores than the GPUs need makes the host the pace.

    sizes: (source, output, network) sizes as (w, h); default a 1080p input at the defaults (DEFAULT_SIZES).
    """
    name = "CPU cores"
    if n_gpus <= 0:
        return Check(name, None, "not checked: no GPU")
    source, out, net = sizes or DEFAULT_SIZES
    cost = host_cost(fmt, source, out, net)
    per_gpu = cost.cores_per_gpu()
    need, cpus = math.ceil(n_gpus * per_gpu), p.cpus()
    parts = ", ".join(f"{k} {v:.1f}" for k, v in cost.stages.items())
    what = (
        f"{cpus} usable for {n_gpus} GPU(s); {source[0]}x{source[1]} in, {fmt} at {out[0]}x{out[1]} out, network "
        f"{net[0]}x{net[1]}: {cost.total:.1f} ms of CPU per frame ({parts}), so about {per_gpu:.1f} per GPU "
        f"({need}) to keep up with vits at {VITS_MS_PER_FRAME} ms/frame; {cost.binding} binds"
    )
    if cpus >= need:
        return Check(name, True, what)
    fit = int(cpus / per_gpu)
    fewer = f"use at most {fit} GPU(s) per host" if fit else "use fewer GPUs per host (these cores keep up with < 1)"
    cheaper = [
        f"{f} needs {c:.1f}/GPU"
        for f in ("png8", "npy")
        if (c := host_cost(f, source, out, net).cores_per_gpu()) < per_gpu
    ]
    formats = f", write a cheaper format ({', '.join(cheaper)})" if cheaper else ""
    slower = f"accept a run about {need / cpus:.1f}x slower than the GPUs"
    return Check(name, False, what, f"{fewer}{formats}, or {slower}")


# -- the report -----------------------------------------------------------------------------------------------------
def checks(opts: Options, p: Probes, debug: bool = False) -> Iterator[Check]:
    """Every check in order, each as soon as it is known (a `docker run` can take seconds).

    A check that breaks unexpectedly becomes one ✗ line of its own and the others still run (--debug: the traceback).
    """

    def guard(name: str, fn: Callable, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            if debug:
                raise
            return Check(
                name, False, f"the check itself failed ({type(err).__name__})", "rerun with --debug to see why"
            )

    engine = guard("Docker engine", check_engine, p)
    yield engine
    yield guard("Docker Compose", check_compose, p, engine)
    gpus = guard("GPUs", query_gpus, p)
    if isinstance(gpus, Check):
        yield gpus
        gpus = None
    else:
        yield guard("NVIDIA container runtime", check_gpu_runtime, p, gpus, engine, opts.image)
        yield guard("GPUs", check_gpus, gpus, opts.gpus)
    yield guard("CUDA driver vs torch", check_cuda, p, gpus, opts.image, engine)
    for metric in sorted({False, opts.metric}):
        for encoder in ENCODERS:
            required = (encoder, metric) == (opts.encoder, opts.metric)
            label = f"{'metric ' if metric else ''}{encoder} checkpoint"
            yield guard(label, check_checkpoint, encoder, metric, required)
    n_gpus = opts.gpus or len(gpus or [])
    plan = guard("disk", video_plan, opts, n_gpus) if opts.video else None
    if plan is None:
        yield Check("disk", None, "not checked: give --video PATH (and -o OUT) to compare a run's size with free space")
    elif isinstance(plan, Check):
        yield plan
        plan = None
    else:
        yield guard("disk", check_disk, p, plan, opts)
    s, info = (plan[0].settings, plan[0].input) if plan else (None, None)
    sizes = ((info.width, info.height), (s.frame_width, s.frame_height), (s.net_width, s.net_height)) if s else None
    yield guard("CPU cores", check_cores, p, n_gpus, opts.fmt, sizes)


def doctor(opts: Options, p: Probes | None = None, out=None, debug: bool = False) -> int:
    """Print one line per check; 0 when nothing failed, 1 otherwise."""
    failed = False
    for check in checks(opts, p or Probes(), debug):
        failed |= check.ok is False
        print(check.line(), file=out or sys.stdout, flush=True)
    return 1 if failed else 0


def add_parser(sub) -> None:
    """The `doctor` subparser, for vda.cli.main."""
    p = sub.add_parser(
        "doctor",
        help="check this host for make depth: Docker, NVIDIA runtime, GPUs and CUDA, checkpoints, disk, cores",
        description="One line per check: ✓ fine, ✗ what fails and the fix, - information. Exit 0 when nothing "
        "fails, 1 otherwise.",
    )
    p.add_argument("--gpus", type=int, help="GPUs you will use: then a missing GPU fails (default: GPUs only inform)")
    p.add_argument("--encoder", choices=ENCODERS, default="vits", help="the checkpoint that must exist")
    p.add_argument("--metric", action="store_true", help="also check the metric checkpoints (and require --encoder's)")
    p.add_argument("--video", type=Path, help="compare what a run on this video writes with the free disk space")
    p.add_argument("-o", "--out", type=Path, help="output folder for --video (default: make depth's out/<video>)")
    p.add_argument("--format", dest="fmt", choices=list(FORMATS), default="png16")
    p.add_argument(
        "--image", default=GPU_IMAGE, help=f"GPU image whose torch CUDA build is checked (default {GPU_IMAGE})"
    )


def cmd_doctor(args: argparse.Namespace) -> int:
    if args.gpus is not None and args.gpus < 1:
        raise UsageError(f"--gpus must be at least 1, got {args.gpus}")
    opts = Options(args.gpus, args.encoder, args.metric, args.video, args.out, args.fmt, args.image)
    return doctor(opts, debug=getattr(args, "debug", False))
