"""Whether a host holds a run: the disk it writes, and the host's CPU per output frame, stage by stage, for a video's
sizes and format (how many cores a GPU needs).

Each stage's cost is read from one table of measured figures (host_costs.json, with the machine and the command that
regenerates it) and scaled by the pixels the stage works on: the source's (decode), the network's (store, pass 1),
the output's (render + write).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from vda.orchestrator.host_checks import Check, Options, Probes

COSTS_FILE = Path(__file__).with_name("host_costs.json")
# The authors' published vits latency (fp16, A100, 32 frames at 518x518): one GPU makes about 133 frames/s.
VITS_MS_PER_FRAME = 7.5
DEFAULT_SIZES = ((1920, 1080), (1280, 720), (924, 518))  # a 1080p input at the defaults: source, output, network


@dataclass(frozen=True)
class CostTable:
    """Measured ms of host CPU per output frame, at the sizes they were measured at ((w, h) each)."""

    stage_ms: dict[str, float]  # decode, store, pass 1
    render_ms: dict[str, float]  # render + write, per format
    source: tuple[int, int]
    network: tuple[int, int]
    output: tuple[int, int]
    machine: str = ""
    command: str = ""

    @classmethod
    def read(cls, path: Path = COSTS_FILE) -> CostTable:
        data = json.loads(path.read_text())
        sizes = {k: tuple(v) for k, v in data["sizes"].items()}
        return cls(
            data["stage_ms"], data["render_ms"], sizes["source"], sizes["network"], sizes["output"],
            data.get("machine", ""), data.get("command", ""),
        )  # fmt: skip


@cache
def measured() -> CostTable:
    """The table shipped with the package."""
    return CostTable.read()


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


def host_cost(
    fmt: str, source: tuple[int, int], out: tuple[int, int], net: tuple[int, int], table: CostTable | None = None
) -> HostCost:
    """Each stage's measured cost scaled to these sizes: the source frames (w, h), the output frames after --max-res,
    and the network's maps. Rendering never costs less than the maps every frame reads."""
    t = table or measured()
    area = lambda size: size[0] * size[1]  # noqa: E731
    src, net_px, out_px = area(source), area(net), max(area(out), area(net))
    return HostCost(
        {
            "decode": t.stage_ms["decode"] * src / area(t.source),
            "store": t.stage_ms["store"] * net_px / area(t.network),
            "pass 1": t.stage_ms["pass 1"] * net_px / area(t.network),
            f"render + write {fmt}": t.render_ms[fmt] * out_px / area(t.output),
        }
    )


# -- the checks: disk and cores -------------------------------------------------------------------------------------
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
