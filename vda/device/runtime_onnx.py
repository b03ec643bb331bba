"""The network computed by ONNX Runtime: `OnnxNetwork`, a drop-in for `VideoDepthAnything`'s encode and decode.

    folder = cached_export(checkpoint, "vits", False, (518, 924))  # vda.model.onnx_cache: exported once
    net = OnnxNetwork(folder, device="cpu")
    WindowRunner(net, Runtime.create("cpu"), (518, 924))            # the window and stream runners, unchanged

`encode(x, micro_batch)` and `decode(feats, grid, frames, cache, micro_batch)` take and return torch tensors with the
semantics of `VideoDepthAnything.encode/decode` (vda.model.network), at the exported network size only; `config`
and `parameters()` give what the runners read of a model (metric or not, the device). The graphs are fp32 whatever
the runtime's precision: features cached in fp16 are widened to fp32 on the way in; on the TensorRT provider fp16
means its fp16 engine (`trt_fp16_enable`).

Providers: the CPU provider for a CPU device; for a CUDA device TensorRT where this onnxruntime has it, else CUDA,
with the CPU provider last for the nodes neither takes. On a GPU, inputs and outputs are bound on the device (IO
binding: ONNX Runtime reads the torch tensors where they are and writes into tensors allocated by torch), and ONNX
Runtime runs on torch's current stream, so nothing goes through the host and no sync is added. That path is built
and tested here with fakes only (tests marked gpu_logic): running it needs a GPU and onnxruntime-gpu.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from vda.core.preprocess import PATCH
from vda.core.stitch import WINDOW
from vda.device.runtime import Network
from vda.errors import DeviceError, StorageError, UsageError
from vda.model.configs import CONFIGS, ModelConfig
from vda.model.network import infer_encoder, read_state_dict
from vda.model.onnx_export import read_model_json
from vda.model.onnx_graphs import CACHE, FEATURES, STREAM_CONTEXT

TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"


def choose_providers(
    device: torch.device, available: Sequence[str], precision: str = "fp32", stream: int | None = None, trt_cache=None
) -> list[tuple[str, dict]]:
    """ONNX Runtime's providers, in order of preference, with their options, for `device`.

    CPU: the CPU provider. CUDA: TensorRT if available (engines cached in `trt_cache`, fp16 engines for fp16), then
    CUDA (TF32 off in fp32, as torch computes fp32 here: vda.device.compat.ieee_fp32), then CPU; both GPU providers
    run on `stream` (torch's current CUDA stream, as an integer handle) when given. Refused in one line when this
    onnxruntime has no GPU provider (the CPU-only package on a GPU host)."""
    if device.type == "cpu":
        return [(CPU, {})]
    if device.type != "cuda":
        raise UsageError(f"the onnx runtime runs on cpu or cuda devices, not {device}; use --runtime torch there")
    index = device.index or 0
    shared = {"device_id": str(index)}
    if stream is not None:
        shared["user_compute_stream"] = str(stream)
    chosen = []
    if TRT in available:
        trt = {**shared, "trt_fp16_enable": "True" if precision == "fp16" else "False"}
        if trt_cache is not None:
            trt.update(trt_engine_cache_enable="True", trt_engine_cache_path=str(trt_cache))
        chosen.append((TRT, trt))
    if CUDA in available:
        chosen.append((CUDA, {**shared, "use_tf32": "0" if precision == "fp32" else "1"}))
    if not chosen:
        raise DeviceError(
            f"onnxruntime here has no GPU provider ({', '.join(available)}) for {device}; install onnxruntime-gpu "
            "(docs/onnx.md), or use --runtime torch"
        )
    return [*chosen, (CPU, {})]


def output_shapes(session, batch: int) -> list[tuple[int, ...]]:
    """The shapes of a session's outputs, a symbolic (dynamic) dimension taken as `batch` (the encoder's frames)."""
    return [tuple(d if isinstance(d, int) else batch for d in out.shape) for out in session.get_outputs()]


class BoundRunner:
    """Runs a session on a CUDA device through IO binding: inputs read from torch's tensors on the device, outputs
    written into tensors torch allocates there (`empty`: torch.empty; tests pass one that allocates on the CPU).
    Needs a GPU to run for real; tested with a fake session (gpu_logic)."""

    def __init__(self, session, device: torch.device, run_options=None, empty: Callable = torch.empty):
        self.session, self.device, self.run_options, self.empty = session, device, run_options, empty
        self.names = [out.name for out in session.get_outputs()]

    def __call__(self, feeds: dict[str, torch.Tensor], batch: int) -> list[torch.Tensor]:
        binding = self.session.io_binding()
        index = self.device.index or 0
        held = []  # the fp32 copies bound below must outlive the run
        for name, tensor in feeds.items():
            tensor = tensor.float().contiguous()  # [..] on the device: a no-op for fp32 features
            held.append(tensor)
            binding.bind_input(name, "cuda", index, np.float32, tuple(tensor.shape), tensor.data_ptr())
        outs = [
            self.empty(shape, dtype=torch.float32, device=self.device) for shape in output_shapes(self.session, batch)
        ]
        for name, out in zip(self.names, outs):
            binding.bind_output(name, "cuda", index, np.float32, tuple(out.shape), out.data_ptr())
        self.session.run_with_iobinding(binding, self.run_options)
        return outs


class HostRunner:
    """Runs a session on the CPU: torch tensors shared with numpy both ways (no copy for contiguous fp32)."""

    def __init__(self, session):
        self.session = session

    def __call__(self, feeds: dict[str, torch.Tensor], batch: int) -> list[torch.Tensor]:
        arrays = {name: t.detach().float().contiguous().numpy() for name, t in feeds.items()}
        return [torch.from_numpy(out) for out in self.session.run(None, arrays)]


def make_session(path: Path, providers: list[tuple[str, dict]], threads: int | None, ort=None):
    """An InferenceSession of `path` on `providers`; CPU work on `threads` intra-op threads (default: torch's count,
    which VDA_THREADS sets in a worker, so that ONNX Runtime uses the cores this worker was given)."""
    if ort is None:
        import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    names = [name for name, _ in providers]
    return ort.InferenceSession(
        str(path), sess_options=options, providers=names, provider_options=[o for _, o in providers]
    )


class OnnxNetwork(Network):
    """VideoDepthAnything's encode/decode computed by ONNX Runtime from an export folder (see the module)."""

    def __init__(self, folder: str | Path, device="cpu", precision: str = "fp32", threads: int | None = None, ort=None):
        if ort is None:
            import onnxruntime as ort
        folder = Path(folder)
        self.meta = read_model_json(folder)
        missing = [name for name in ("encoder", "head") if name not in self.meta["graphs"]]
        if missing:
            raise StorageError(
                f"{folder} has no {' or '.join(missing)} graph; export it with vda.model.onnx_cache.cached_export, "
                "or `vda export onnx` (all graphs)"
            )
        self.device = torch.device(device)
        self.config = ModelConfig(**{**CONFIGS[self.meta["encoder"]].__dict__, "metric": bool(self.meta["metric"])})
        self.shape = (self.meta["network"]["height"], self.meta["network"]["width"])
        self.grid = (self.shape[0] // PATCH, self.shape[1] // PATCH)
        self.stream = bool(self.meta["stream"])
        self._anchor = torch.empty(0, device=self.device)  # what parameters() yields: the runners read the device
        stream = torch.cuda.current_stream(self.device).cuda_stream if self.device.type == "cuda" else None
        trt_cache = folder / "trt" if self.device.type == "cuda" else None
        providers = choose_providers(self.device, ort.get_available_providers(), precision, stream, trt_cache)
        self._run = {}
        for name in (g for g in self.meta["graphs"] if g != "window"):  # window.onnx is for other programs
            session = make_session(folder / f"{name}.onnx", providers, threads, ort)
            self._run[name] = HostRunner(session) if self.device.type == "cpu" else self._bound(session, ort)

    def _bound(self, session, ort) -> BoundRunner:
        options = ort.RunOptions()
        # ONNX Runtime runs on torch's stream, which orders it with torch's work: no host sync after each run
        options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        return BoundRunner(session, self.device, options)

    @property
    def metric(self) -> bool:
        return self.config.metric

    def parameters(self) -> Iterator[torch.Tensor]:
        """One empty tensor on the network's device: where `next(model.parameters()).device` looks."""
        yield self._anchor

    def eval(self) -> OnnxNetwork:
        return self

    def encode(self, x: torch.Tensor, micro_batch: int | None = None) -> list[torch.Tensor]:
        """4 feature levels [n, h*w, D] of frames x [n, 3, H, W], `micro_batch` frames per run (memory only)."""
        if tuple(x.shape[-2:]) != self.shape:
            raise UsageError(f"frames of {x.shape[-1]}x{x.shape[-2]} given to a {self.shape[1]}x{self.shape[0]} export")
        step = micro_batch or x.shape[0]
        parts = [
            self._run["encoder"]({"frames": x[i : i + step]}, len(x[i : i + step])) for i in range(0, len(x), step)
        ]
        return [torch.cat(level) for level in zip(*parts)] if len(parts) > 1 else parts[0]

    def decode(self, feats, grid, frames, cache=None, micro_batch=None, head=None):
        """(depth [frames, H, W], fresh cache entries) as VideoDepthAnything.decode, for a 32-frame window without a
        cache (fresh: [], window mode never reads it) or one frame with or without stream mode's 31-frame cache.
        `micro_batch` only bounds torch's memory and is not needed here; `head` (a compiled torch head) is refused."""
        if head is not None:
            raise UsageError("--compile compiles torch's head and does not apply to the onnx runtime; drop --compile")
        if tuple(grid) != self.grid:
            raise UsageError(f"patch grid {tuple(grid)} given to an export of grid {self.grid}; export at that size")
        inputs = dict(zip(FEATURES, feats))
        if frames == WINDOW and cache is None and feats[0].shape[0] == WINDOW:
            return self._run["head"](inputs, WINDOW)[0], []
        if frames != 1 or feats[0].shape[0] != 1:
            raise UsageError(f"the onnx head runs windows of {WINDOW} frames or single frames, not {frames}")
        if not self.stream:
            raise UsageError(
                f"stream mode needs the stream graphs, which did not export exactly ({self.meta.get('stream_note')}); "
                "use --mode window or --runtime torch"
            )
        if cache is None:
            depth, *fresh = self._run["stream_first"](inputs, 1)
            return depth, fresh
        if cache[0].shape[1] != STREAM_CONTEXT:
            raise UsageError(f"a stream cache of {cache[0].shape[1]} frames, not {STREAM_CONTEXT}")
        depth, *fresh = self._run["stream"]({**inputs, **dict(zip(CACHE, cache))}, 1)
        return depth, fresh


class OnnxModel:
    """A checkpoint computed by ONNX Runtime: what `vda.load_model(runtime="onnx")` returns. Its graphs are fixed in
    size, so each network shape gets its own `OnnxNetwork`, exported and checked once into the export cache."""

    def __init__(self, checkpoint, *, encoder=None, metric=False, device="cpu", sha256=None, threads=None):
        if not isinstance(checkpoint, (str, Path)):
            raise UsageError("the onnx runtime exports from a checkpoint file; give its path, not a state dict")
        self.checkpoint, self.metric, self.sha256 = Path(checkpoint), metric, sha256
        self.encoder = encoder or infer_encoder(read_state_dict(self.checkpoint))
        self.device, self.threads = torch.device(device), threads
        self._networks: dict[tuple, OnnxNetwork] = {}

    def parameters(self) -> Iterator[torch.Tensor]:
        """One empty tensor on the model's device: where `next(model.parameters()).device` looks."""
        yield torch.empty(0, device=self.device)

    def network_for(self, shape: tuple[int, int], precision: str) -> OnnxNetwork:
        key = (tuple(shape), precision)
        if key not in self._networks:
            from vda.model.onnx_cache import cached_export

            folder = cached_export(self.checkpoint, self.encoder, self.metric, key[0], precision, sha256=self.sha256)
            self._networks[key] = OnnxNetwork(folder, self.device, precision, self.threads)
        return self._networks[key]
