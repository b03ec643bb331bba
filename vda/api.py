"""The Python API, re-exported at the top of the package: `vda.load_model`, `vda.infer_video`, `vda.run`, `vda.read`.

Each is a thin front over what the CLI runs, so that a notebook gets the CLI's results and the CLI's rules (the
checkpoint search, fp16 on GPUs with precision "auto", the batch's resume and fault handling) without reaching into
the sub-packages. `vda.run` is `vda depth` without its printing: it returns what became of each input. torch, cv2 and
the backends are imported when a function is called, so that `import vda` stays cheap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import fields
from pathlib import Path

from vda.errors import InputError, StorageError, UsageError

# The backends `vda depth --backend` and `vda.run(backend=)` offer: module and class, imported only when chosen.
BACKENDS = {
    "local": ("vda.orchestrator.backends.local", "LocalBackend"),
    "docker": ("vda.orchestrator.backends.docker", "DockerBackend"),
    "ray": ("vda.orchestrator.backends.ray", "RayBackend"),
}
# vda.run's settings that are not DepthRequest fields of the same name.
WORKER_SETTINGS = ("micro_batch", "compile", "runtime")
BACKEND_SETTINGS = ("image", "ray_address")
RUNTIMES = ("torch", "onnx")  # what computes the network: `vda depth --runtime`, `vda.load_model(runtime=)`


def backend_class(name: str):
    """The backend class for `name` (imported now: Docker's and Ray's modules need their client libraries)."""
    if name not in BACKENDS:
        raise UsageError(f"unknown backend {name!r}; choose one of {', '.join(sorted(BACKENDS))}")
    module, cls = BACKENDS[name]
    return getattr(importlib.import_module(module), cls)


def default_device() -> str:
    """The accelerator torch finds here (its first device), else the CPU."""
    import torch

    found = torch.accelerator.current_accelerator(check_available=True)
    return str(found) if found is not None else "cpu"


def check_runtime(runtime: str, compile: bool = False) -> str:
    """`runtime` if it is one of RUNTIMES and can run with `compile`; else one line naming the fix."""
    if runtime not in RUNTIMES:
        raise UsageError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if runtime == "onnx" and compile:
        raise UsageError("--compile compiles torch's graphs and does not apply to --runtime onnx; drop one of them")
    return runtime


def load_model(
    checkpoint=None, *, encoder: str | None = None, metric: bool = False, device: str | None = None, runtime="torch"
):
    """The network in eval mode on `device` (default: `default_device()`), computed by `runtime`: "torch", or "onnx"
    (ONNX Runtime; its graphs are exported and checked once per network size, into the export cache).

    `checkpoint`: a .pth path or a state dict, whose encoder is read from its tensors unless `encoder` says it; without
    one, the published checkpoint of `encoder` (default vits) and `metric` is found as the CLI finds it (models/,
    $VDA_MODELS_DIR, the Hugging Face cache, downloading when online).
    """
    from vda.model import network, registry

    check_runtime(runtime)
    if checkpoint is None:
        checkpoint = registry.resolve(encoder or "vits", metric)
    device = device or default_device()
    if runtime == "onnx":
        from vda.device.runtime_onnx import OnnxModel

        return OnnxModel(checkpoint, encoder=encoder, metric=metric, device=device)
    return network.load_model(checkpoint, encoder=encoder, metric=metric, device=device)


def infer_video(
    model,
    frames: Iterable,
    *,
    input_size: int = 518,
    mode: str = "window",
    precision: str = "auto",
    device: str | None = None,
    micro_batch: int | None = None,
    compile: bool = False,
    output_size: str | tuple[int, int] = "source",
    tensors: bool = False,
) -> Iterator:
    """One float32 depth map per frame of `frames` (HxWx3 uint8 RGB arrays), in order, lazily.

    `precision` "auto" is the CLI's rule: fp16 on a GPU, fp32 on a CPU. `output_size`: "source" (each frame's size),
    "net" (the network's resolution, no upsampling, the cheapest) or (width, height) / "WxH". `tensors=True` yields
    torch tensors where the model is, for a caller that goes on computing there. `device`: the model's by default.
    """
    from vda.device.single_pass import infer_video as single_pass
    from vda.io.writers import parse_output_size

    if not isinstance(output_size, str):
        output_size = "x".join(str(int(v)) for v in output_size)
    spec = parse_output_size(output_size)
    size = None if spec == "source" else spec if spec == "net" else tuple(int(v) for v in reversed(spec.split("x")))
    device = device or str(next(model.parameters()).device)
    options = {"input_size": input_size, "mode": mode, "precision": precision, "micro_batch": micro_batch}
    return single_pass(model, frames, device=device, compile=compile, out_size=size, tensors=tensors, **options)


def resolve_devices(cls, devices=None, gpus=None, gpu_ids=None, address: str | None = None) -> list[str]:
    """The devices of a batch for the backend class `cls`, from one of `devices` ("cpu,cuda:1" or a list), `gpus`
    (the first N) or `gpu_ids`; none of them: every GPU of a cluster backend, refused by the others."""
    from vda.orchestrator.planning import parse_devices

    devices = ",".join(devices) if devices is not None and not isinstance(devices, str) else devices
    needs_gpu = gpus is not None or gpu_ids is not None or "cuda" in (devices or "")
    take_all = cls.all_gpus_by_default and devices is None and gpus is None and gpu_ids is None
    visible = cls.visible_gpus(address) if needs_gpu or take_all else None
    if take_all:
        if not visible:
            raise UsageError(f"{cls.gpu_pool} offers no GPU; give --devices cpu,cpu for CPU workers, or add GPUs")
        gpus = visible
    return parse_devices(devices, gpus, gpu_ids, visible)


def check_writable(out: Path) -> None:
    """Refuse an output folder that cannot be written, in one line, before any planning."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".vda_write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise StorageError(f"output folder {out} is not writable ({err.strerror}); choose another -o") from None


def depth_request(inputs: Sequence, out: Path, devices: list[str], **settings):
    """A DepthRequest from keyword settings (its field names; `format` for `fmt`); an unknown name is refused."""
    from vda.io.writers import check_png_scale, parse_output_size
    from vda.orchestrator.batch import DepthRequest
    from vda.orchestrator.launch import WorkerOptions

    settings = dict(settings)
    if "format" in settings:
        settings["fmt"] = settings.pop("format")
    worker = {k: settings.pop(k) for k in WORKER_SETTINGS if k in settings}
    known = {f.name for f in fields(DepthRequest)} - {"inputs", "out", "devices", "options"}
    unknown = sorted(set(settings) - known)
    if unknown:
        names = ", ".join(sorted(known | set(WORKER_SETTINGS) | {"format"}))
        raise UsageError(f"unknown setting {unknown[0]!r}; vda.run takes {names}")
    check_png_scale(settings.get("png_scale"), settings.get("fmt", "png16"), bool(settings.get("metric")))
    if "output_size" in settings:
        settings["output_size"] = parse_output_size(settings["output_size"])
    if settings.get("checkpoint") is not None:
        settings["checkpoint"] = str(settings["checkpoint"])  # a Path from Python, as the flag gives it
    if settings.get("run_dir") is not None:
        settings["run_dir"] = Path(settings["run_dir"])
    runtime = check_runtime(worker.get("runtime") or "torch", bool(worker.get("compile")))
    options = WorkerOptions(settings.get("checkpoint"), worker.get("micro_batch"), bool(worker.get("compile")))
    options = dataclasses.replace(options, runtime=runtime)
    return DepthRequest([str(i) for i in inputs], Path(out), devices, options=options, **settings)


def run(
    inputs,
    out,
    *,
    devices=None,
    gpus: int | Sequence[int] | None = None,
    backend: str = "local",
    progress: bool = False,
    **settings,
):
    """Compute depth for every input into `out`, as `vda depth` does, and return a RunResult (per video: name,
    status, output folder, frames, error). Silent unless `progress`; raises VdaError when nothing can run. While it
    runs, this process's torch and numpy BLAS threads are bounded to one (the merge's pass 1, vda.system.host_threads)
    and put back after; the devices compute in worker processes of their own.

    `inputs`: a path or a list of them (video files, folders of images, folders of videos). `devices`: "cpu,cpu" or
    a list; `gpus`: a number (the first N) or a list of ids. `settings`: `vda depth`'s flags by name (checkpoint,
    encoder, metric, input_size, max_res, precision, mode, unit_size, format, create_video, output_size, png_scale,
    retries, overwrite, merge_workers, space_check, clean, run_dir, micro_batch, compile, runtime, image,
    ray_address).
    """
    from vda.orchestrator.batch import run_batch

    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    extra = {k: settings.pop(k) for k in BACKEND_SETTINGS if k in settings}
    cls = backend_class(backend)
    ids = None if gpus is None or isinstance(gpus, int) else list(gpus)
    found = resolve_devices(cls, devices, gpus if ids is None else None, ids, extra.get("ray_address"))
    request = depth_request(inputs, Path(out), found, **settings)
    check_writable(request.out)
    stream = sys.stderr if progress else io.StringIO()
    worker = cls(found, request.options, extra.get("image"), extra.get("ray_address"))
    with contextlib.nullcontext() if progress else contextlib.redirect_stderr(stream):
        result = run_batch(request, worker, stream)
    if result.videos and not any(v.status != "refused" for v in result.videos):
        first = result.videos[0]
        raise InputError(f"none of the {len(result)} inputs can run; the first: {first.input}: {first.error}")
    return result


def read(out):
    """A merged output folder as float32 maps (any format; png16/png8 dequantised): `len`, indexing, iteration and
    `.meta` (its DepthMeta)."""
    from vda.io.writers import DepthFrames

    return DepthFrames(out)
