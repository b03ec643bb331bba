"""Host-side planning: pin the checkpoint, probe the input, cut it into queue units, write RUN_DIR/plan.json.

A plan already in RUN_DIR is reused only if it describes the same input, checkpoint and settings; otherwise the
run refuses (or, with --overwrite, starts afresh), so results never mix. The devices are not part of a plan: its
units are the same on any devices, so a rerun on other devices reuses every stored piece.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from vda import config
from vda.core.plan import AUTO, PLAN_NAME, STREAM_WARMUP, Plan, PlanError, Settings, default_unit_size, make_units
from vda.core.preprocess import network_shape
from vda.core.video_info import VideoInfo, fit_max_res
from vda.files import file_sha256, write_json
from vda.io.probe import head_hash, probe
from vda.io.rundir import RunDir
from vda.model.configs import CONFIGS
from vda.model.network import VideoDepthAnything, checkpoint_filter_fn, infer_encoder, read_state_dict
from vda.model.registry import find, resolve

log = logging.getLogger(__name__)


def parse_devices(
    devices: str | None = None,
    gpus: int | None = None,
    gpu_ids: list[int] | None = None,
    visible_gpus: int | None = None,
) -> list[str]:
    """--devices cpu,cuda:1 | --gpus N | --gpu-ids 0 2 -> ['cpu', 'cuda:1', ...], checked against visible GPUs."""
    if sum(x is not None for x in (devices, gpus, gpu_ids)) != 1:
        raise PlanError("give exactly one of --devices, --gpus or --gpu-ids")
    if gpus is not None:
        if gpus < 1:
            raise PlanError(f"--gpus must be at least 1, got {gpus}")
        gpu_ids = list(range(gpus))
    if gpu_ids is not None:
        if len(set(gpu_ids)) != len(gpu_ids) or any(i < 0 for i in gpu_ids):
            raise PlanError(f"--gpu-ids must be distinct non-negative integers, got {gpu_ids}")
        out = [f"cuda:{i}" for i in gpu_ids]
    else:
        out = [d.strip() for d in devices.split(",") if d.strip()]
    for d in out:
        kind, _, idx = d.partition(":")
        if kind not in ("cpu", "cuda") or (kind == "cpu" and idx) or (idx and not idx.isdigit()):
            raise PlanError(f"invalid device {d!r}; use cpu, cuda or cuda:N")
    wanted = sorted({int(d.partition(":")[2] or 0) for d in out if d.startswith("cuda")})
    if wanted and visible_gpus == 0:
        raise PlanError(
            "a GPU was requested but no GPU is visible here (no NVIDIA driver, a CPU-only torch build, or "
            "CUDA_VISIBLE_DEVICES hides them); check with `vda doctor`, or use --devices cpu"
        )
    if wanted and visible_gpus is not None and wanted[-1] >= visible_gpus:
        raise PlanError(
            f"GPU {wanted[-1]} requested but {visible_gpus} GPU(s) are visible; "
            f"use ids 0..{visible_gpus - 1} (see nvidia-smi) or fewer --gpus"
        )
    return out


@dataclass(frozen=True)
class ModelChoice:
    """The checkpoint a run pins, resolved and checked once per batch (reading vitl's 1.3 GB twice costs seconds)."""

    encoder: str
    metric: bool
    path: Path | None  # None: a draft that only sizes the work (`vda doctor`), which no worker runs
    sha256: str


def choose_model(checkpoint: str | None = None, encoder: str | None = None, metric: bool = False) -> ModelChoice:
    """Resolve and check the checkpoint: fail here, on the host, once, not in every worker."""
    state = read_state_dict(checkpoint) if checkpoint and encoder is None else None  # read once, used twice
    if state is not None:
        encoder = infer_encoder(state)
    encoder = encoder or "vits"
    if encoder not in CONFIGS:
        raise PlanError(f"unknown encoder {encoder!r}; choose one of {', '.join(CONFIGS)}")
    find(encoder, metric)
    path = resolve(encoder, metric, checkpoint)
    check_layout(state if state is not None else read_state_dict(path), encoder)
    return ModelChoice(encoder, metric, path, file_sha256(path))


def check_precision(precision: str | None, devices: list[str]) -> str:
    """The run's precision: auto (default) lets each worker choose for its device, fp16 on GPUs and fp32 on CPUs."""
    if precision == "fp16" and "cpu" in devices:
        raise PlanError("--precision fp16 needs CUDA devices, and cpu is among the devices; use --precision auto")
    return precision or AUTO


def build_settings(
    info: VideoInfo,
    model: ModelChoice,
    input_size: int = 518,
    max_res: int = 1280,
    precision: str = AUTO,
    mode: str = "window",
    unit_size: int | None = None,
    stream_warmup: int = STREAM_WARMUP,
) -> Settings:
    """The settings of one video's run."""
    if input_size < 14 or input_size % 14:
        raise PlanError(f"--input-size must be a positive multiple of 14, got {input_size}")
    width, height = fit_max_res(info.width, info.height, max_res)
    net_h, net_w = network_shape(height, width, input_size)
    return Settings(
        model.encoder,
        model.metric,
        model.path.name if model.path else "",
        model.sha256,
        input_size,
        max_res,
        precision,
        mode,
        width,
        height,
        net_h,
        net_w,
        unit_size or default_unit_size(mode),
        stream_warmup,
    )


def create_plan(
    input_path: str | Path,
    run_dir: str | Path,
    model: ModelChoice | None = None,
    *,
    checkpoint: str | None = None,
    encoder: str | None = None,
    metric: bool = False,
    input_size: int = 518,
    max_res: int = 1280,
    precision: str | None = None,
    mode: str = "window",
    unit_size: int | None = None,
    overwrite: bool = False,
    stream_warmup: int = STREAM_WARMUP,
) -> tuple[Plan, bool]:
    """Write (or reuse) RUN_DIR/plan.json. Returns the plan and whether an existing one was resumed.

    `model` is the batch's choice (choose_model); without it, it is chosen here from checkpoint/encoder/metric.
    """
    run = RunDir(run_dir)
    model = model or choose_model(checkpoint, encoder, metric)
    info, recount = probe_input(Path(input_path), run)
    settings = build_settings(info, model, input_size, max_res, precision or AUTO, mode, unit_size, stream_warmup)
    settings.simulated = config.current().faults.simulate_ms is not None
    units = make_units(info.frame_count, mode, settings.unit_size, stream_warmup)
    plan = Plan(info, settings, units, uuid.uuid4().hex[:12])
    if (run.path / PLAN_NAME).is_file():
        old = Plan.load(run.path)
        if recount and not _same_work(old, plan):  # its count came from packets and was wrong: nothing of it holds
            log.warning("%s: planned again by decoding, its stored pieces discarded (the count was wrong)", run.path)
            overwrite = True
        if _same_work(old, plan) and not overwrite:
            if (old.input.path, old.input.counted) != (info.path, info.counted):  # else the plan on disk is this one
                old.input.path, old.input.counted = info.path, info.counted  # a recount needs no second check
                old.save(run.path)
            log.info("%s: resumed run %s (%d units)", run.path, old.run_id, len(old.units))
            return old, True
        if not overwrite:
            raise PlanError(
                f"{run.path} holds a different run ({_difference(old, plan)}); "
                "use another output folder or pass --overwrite"
            )
        run.discard_results()
    run.path.mkdir(parents=True, exist_ok=True)
    plan.save(run.path)
    log.info(
        "%s: planned run %s: %d frames in %d units (%s)", run.path, plan.run_id, plan.frame_count, len(units), mode
    )
    return plan, False


PROBE_SCHEMA = 1


def input_identity(path: Path) -> dict:
    """What says a file (or image folder) is the one probed before: its path, size, modification time, head hash."""
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "head_sha256": head_hash(path)}


def _read_probe(run: RunDir) -> dict:
    try:
        data = json.loads(run.probe.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("schema_version") == PROBE_SCHEMA else {}


def probe_input(path: Path, run: RunDir) -> tuple[VideoInfo, bool]:
    """The input's probe, read back from RUN_DIR/probe.json when it is the same input (a resume decodes nothing), and
    whether it was counted again by decoding because the count from its packets proved wrong (require_decode)."""
    path = path.resolve()
    if not path.exists():
        return probe(path), False  # the probe's own line: not found
    identity, cached = input_identity(path), _read_probe(run)
    same = cached.get("identity") == identity
    if same and not cached.get("recount") and isinstance(cached.get("info"), dict):
        try:
            info = VideoInfo(**cached["info"])
            info.keyframes = [tuple(k) for k in info.keyframes]
            return info, False
        except TypeError:
            pass  # an older layout: probe again
    decode = same and bool(cached.get("decode"))
    info = probe(path, decode=decode)
    info.path = str(path)
    run.path.mkdir(parents=True, exist_ok=True)
    write_json(
        run.probe, {"schema_version": PROBE_SCHEMA, "identity": identity, "decode": decode, "info": asdict(info)}
    )
    return info, same and bool(cached.get("recount"))


def require_decode(run: RunDir) -> None:
    """A worker found the count taken from packets wrong: the next plan of this input counts it by decoding."""
    cached = _read_probe(run)
    if cached:
        write_json(run.probe, {**cached, "decode": True, "recount": True})


def check_layout(state: dict, encoder: str) -> None:
    """Strict key and shape check of a checkpoint against the model, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = VideoDepthAnything(CONFIGS[encoder])
    checkpoint_filter_fn(state, model)


def _identity(plan: Plan) -> dict:
    """What must match for a rerun to reuse stored results: the input and the settings (unit size included)."""
    info = asdict(plan.input)
    info.pop("path")
    for how in ("counted", "keyframes"):  # how it was counted: the same file counted another way is the same input
        info.pop(how)
    return {"input": info, "settings": asdict(plan.settings)}


def _same_work(a: Plan, b: Plan) -> bool:
    return _identity(a) == _identity(b)


def _difference(old: Plan, new: Plan) -> str:
    a, b = _identity(old), _identity(new)
    if a["input"] != b["input"]:
        return "a different input video"
    return "different " + ", ".join(k for k in a["settings"] if a["settings"][k] != b["settings"][k])
