"""Host-side planning: probe the input, pin the checkpoint, split the work, write RUN_DIR/plan.json.

A plan already in RUN_DIR is reused only if it describes the same input, checkpoint and settings;
otherwise the run refuses (or, with --overwrite, starts afresh), so results never mix.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict
from pathlib import Path

import torch

from models import find, resolve
from vda.inference import AUTO
from vda.merge import discard_results
from vda.model import CONFIGS, VideoDepthAnything, checkpoint_filter_fn, infer_encoder, read_state_dict
from vda.plan import PLAN_NAME, STREAM_WARMUP, Plan, PlanError, Settings, make_chunks
from vda.preprocess import network_shape
from vda.video import VideoInfo, fit_max_res, probe
from vda.worker import file_sha256


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


def build_settings(
    info: VideoInfo,
    checkpoint: Path | None,
    encoder: str,
    metric: bool,
    input_size: int,
    max_res: int,
    precision: str,
    mode: str,
) -> Settings:
    """The run's settings. `checkpoint` is the file the run pins by name and hash; None for a draft that only sizes
    the work (`vda doctor`), which no worker ever runs."""
    if input_size < 14 or input_size % 14:
        raise PlanError(f"--input-size must be a positive multiple of 14, got {input_size}")
    width, height = fit_max_res(info.width, info.height, max_res)
    net_h, net_w = network_shape(height, width, input_size)
    return Settings(
        encoder,
        metric,
        checkpoint.name if checkpoint else "",
        file_sha256(checkpoint) if checkpoint else "",
        input_size,
        max_res,
        precision,
        mode,
        width,
        height,
        net_h,
        net_w,
    )


def create_plan(
    input_path: str | Path,
    run_dir: str | Path,
    devices: list[str],
    *,
    checkpoint: str | None = None,
    encoder: str | None = None,
    metric: bool = False,
    input_size: int = 518,
    max_res: int = 1280,
    precision: str | None = None,
    mode: str = "window",
    overwrite: bool = False,
    stream_warmup: int = STREAM_WARMUP,
) -> tuple[Plan, bool]:
    """Write (or reuse) RUN_DIR/plan.json. Returns the plan and whether an existing one was resumed."""
    run_dir = Path(run_dir)
    info = probe(input_path)
    info.path = str(Path(input_path).resolve())
    if checkpoint and encoder is None:
        encoder = infer_encoder(read_state_dict(checkpoint))
    encoder = encoder or "vits"
    if encoder not in CONFIGS:
        raise PlanError(f"unknown encoder {encoder!r}; choose one of {', '.join(CONFIGS)}")
    find(encoder, metric)
    ckpt = resolve(encoder, metric, checkpoint)
    check_layout(read_state_dict(ckpt), encoder)  # fail here, on the host, not in every worker
    precision = precision or AUTO  # each worker resolves it for its device: fp16 on GPUs, fp32 on CPUs
    if precision == "fp16" and "cpu" in devices:
        raise PlanError("--precision fp16 needs CUDA devices, and cpu is among the devices; use --precision auto")
    settings = build_settings(info, ckpt, encoder, metric, input_size, max_res, precision, mode)
    chunks = make_chunks(info.frame_count, devices, mode, stream_warmup)
    plan = Plan(info, settings, chunks, uuid.uuid4().hex[:12], extra={"stream_warmup": stream_warmup})
    if (run_dir / PLAN_NAME).is_file():
        old = Plan.load(run_dir)
        if _same_work(old, plan) and not overwrite:
            if mode == "window":  # windows are stored by window, not by chunk: any split reuses every finished one
                old.chunks = plan.chunks
            else:  # stream segments depend on where their chunk starts: only the devices may change
                for c_old, c_new in zip(old.chunks, plan.chunks):
                    c_old.device = c_new.device
            old.input.path = info.path
            old.save(run_dir)
            return old, True
        if not overwrite:
            raise PlanError(
                f"{run_dir} holds a different run ({_difference(old, plan)}); "
                "use another output folder or pass --overwrite"
            )
        discard_results(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    plan.save(run_dir)
    return plan, False


def check_layout(state: dict, encoder: str) -> None:
    """Strict key and shape check of a checkpoint against the model, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = VideoDepthAnything(CONFIGS[encoder])
    checkpoint_filter_fn(state, model)


def _identity(plan: Plan) -> dict:
    """What must match for a rerun to reuse stored results: input, settings and, in stream mode only, the split."""
    info = asdict(plan.input)
    info.pop("path")
    split = [c.units for c in plan.chunks] if plan.settings.mode == "stream" else None
    return {"input": info, "settings": asdict(plan.settings), "units": split, "extra": plan.extra}


def _same_work(a: Plan, b: Plan) -> bool:
    return _identity(a) == _identity(b)


def _difference(old: Plan, new: Plan) -> str:
    a, b = _identity(old), _identity(new)
    if a["input"] != b["input"]:
        return "a different input video"
    diff = [k for k in a["settings"] if a["settings"][k] != b["settings"][k]]
    if diff:
        return "different " + ", ".join(diff)
    return "a different split over devices, which stream mode cannot reuse"
