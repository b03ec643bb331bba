"""The sections of `gpu_check.py` (its docstring says what each checks), sharing frames, models and checkpoints.

Needs torch, numpy and OpenCV (what a GPU host has) and PyAV (for the sections that decode a video); not isal, docker,
huggingface-hub or ray, which vda imports lazily or optionally (tests/test_gpu_check.py runs it without them).
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from bench_infer import depth_cmd, sliding_frames, write_x264

from vda.core import stitch
from vda.core.preprocess import network_shape
from vda.device.clock import STAGES
from vda.device.compat import out_of_memory_error
from vda.device.feed import FrameFeed
from vda.device.runtime import BF16_MIN_CAPABILITY, Runtime, check_compiler
from vda.device.single_pass import infer_video
from vda.device.window import WindowRunner, launch_settled
from vda.model import registry
from vda.model.dinov2 import DinoV2
from vda.model.network import load_model
from vda.model.synth import save_checkpoint, synth_state_dict, synthetic_scene

TOL = 1e-4  # max |ours - reference| <= TOL * max |reference|, as the test suite compares
GOAL_BYTES = 4e9  # vits fp16 window mode at the default micro-batch: under 4 GB
PUBLISHED_MS = {("vits", "fp16"): 7.5, ("vits", "fp32"): 9.1, ("vitl", "fp16"): 14.0, ("vitl", "fp32"): 67.0}
SECTIONS = (
    "env",
    "parity",
    "depth",
    "fault",
    "throughput",
    "stream",
    "compile",
    "worker-path",
    "onnx",
    "deterministic",
)
# Expected seconds per section: (one H100, --quick on a 2-core CPU). The H100 figures are estimates until the first
# run; its JSON records each section's real time ("sections"), to set them from.
EXPECTED = {
    "env": (5, 2),
    "parity": (30, 8),
    "depth": (60, 30),
    "fault": (15, 5),
    "throughput": (90, 15),
    "stream": (15, 4),
    "compile": (120, 600),  # inductor on two loaded CPU cores takes minutes: the default budget skips it there
    "worker-path": (75, 15),
    "onnx": (30, 1),
    "deterministic": (15, 1),
}
PROFILES: dict[str, dict] = {
    "full": {
        "frames": 48,  # depth: 48 frames 320x180 x264 at input size 126 (3 windows, one unit each)
        "parity_frames": 48,  # parity, fault: the first frames of that scene
        "width": 320,
        "height": 180,
        "input_size": 126,
        "bench_frames": 64,  # throughput, stream, compile: 1920x1080 frames, network 518x924
        "bench_width": 1920,
        "bench_height": 1080,
        "bench_input_size": 518,
        "encoders": ["vits", "vitb", "vitl"],
        "micro_batches": [4, 16],
        "path_frames": 240,  # worker-path: 1080p x264
        "path_width": 1920,
        "path_height": 1080,
        "path_encoders": ["vits", "vitl"],
    },
    "quick": {
        "frames": 23,  # two windows: two units for two workers
        "parity_frames": 12,
        "width": 64,
        "height": 48,
        "input_size": 28,
        "bench_frames": 4,
        "bench_width": 96,
        "bench_height": 54,
        "bench_input_size": 28,
        "encoders": ["vits"],
        "micro_batches": [4, 8],
        "path_frames": 40,
        "path_width": 64,
        "path_height": 48,
        "path_encoders": ["vits"],
    },
}


def environment(device: torch.device, weights: dict[str, Path | None]) -> dict:
    """Versions and the device, as figures (the JSON's top level) and one `describe` line."""
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "numpy": np.__version__,
        "opencv": _version("cv2"),
        "av": _version("av"),
        "onnxruntime": _version("onnxruntime"),
        "weights": {enc: str(path) if path else "synthetic" for enc, path in weights.items()},
        "host": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs",
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {
            "gpu": props.name,
            "capability": f"{props.major}.{props.minor}",
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "driver": nvidia_smi("driver_version"),
        }
        what = f"{props.name} (cc {props.major}.{props.minor}, {info['gpu_memory_gib']} GiB), driver {info['driver']}"
    else:
        what = f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"
    info["describe"] = (
        f"{what}; torch {info['torch']}, CUDA {info['cuda']}, cuDNN {info['cudnn']}, Python {info['python']}"
    )
    return info


def _version(module: str) -> str | None:
    """A module's version without importing more than it (None when it is not installed)."""
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return getattr(__import__(module), "__version__", "unknown")
    except ImportError as err:
        return f"broken ({err})"


def nvidia_smi(field: str) -> str:
    if not shutil.which("nvidia-smi"):
        return "unknown (no nvidia-smi)"
    done = subprocess.run(
        ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
    )
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else "unknown"


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(np.asarray(ours, np.float64) - ref).max() / np.abs(ref).max())


def bf16_supported(device: torch.device) -> bool:
    """bf16 in hardware, as `vda.pipeline.inference.Runtime` requires it (torch would also report emulated bf16)."""
    if device.type != "cuda":
        return True  # the CPU build computes bf16 under autocast
    try:
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # an older torch without the argument
        native = torch.cuda.is_bf16_supported()
    return native and tuple(torch.cuda.get_device_capability(device)) >= BF16_MIN_CAPABILITY


def synced(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None


def gib(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} GiB"


def timed(model, device: torch.device, frames: list[np.ndarray], size: int, **options) -> tuple[float, float | None]:
    """(frames/s, peak GiB) of one infer_video over `frames` (options: precision, mode, micro_batch, compile)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = synced(device)
    n = sum(1 for _ in infer_video(model, frames, input_size=size, device=device, **options))
    return n / (synced(device) - t), peak_gib(device)


def run_command(cmd: list[str], timeout: float, log: Path, env: dict[str, str] | None = None) -> float:
    """Run `cmd` (with `env` added), its output to `log`; seconds it took. Past `timeout`, SIGTERM first, so that
    `vda depth` stops its workers itself; a non-zero exit raises with the last line it printed."""
    full = {**os.environ, **(env or {})}
    t = time.perf_counter()
    with open(log, "w") as fh:
        fh.write(" ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True, env=full)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise TimeoutError(f"{cmd[3]} ran past {timeout:g} s and was stopped (--timeout); log {log}") from None
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd[3:5])} exited with {code}: {last_line(log.read_text())} (log {log})")
    return time.perf_counter() - t


def last_line(text: str) -> str:
    """The last non-empty line of a program's output (progress bars redraw with carriage returns)."""
    lines = [line.rsplit("\r", 1)[-1].strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    return lines[-1][:300] if lines else "(no output)"


def stage_means(rows: list[dict]) -> dict[str, float | None]:
    """Milliseconds per window of each stage, over the windows after the first (which pays for allocation)."""
    steady = rows[1:] or rows
    out: dict[str, float | None] = {}
    for stage in (*STAGES, "total", "gpu"):
        values = [r[stage] for r in steady if r.get(stage) is not None]
        out[stage] = round(1000 * sum(values) / len(values), 2) if values else None
    return out


def busy_fraction(rows: list[dict], wall: float) -> tuple[float | None, float | None]:
    """(GPU time by events over the workers' window loops, over the wall time of the whole command); None on CPU."""
    gpu = [r["gpu"] for r in rows if r.get("gpu") is not None]
    if not gpu:
        return None, None
    loop = sum(r["total"] for r in rows)
    return round(sum(gpu) / loop, 3), round(sum(gpu) / wall, 3)


def vda_onnx_runtime() -> bool:
    """Whether this vda's `vda depth` has a --runtime option (the ONNX runtime another change adds)."""
    from vda.cli.main import parser

    sub = next(a for a in parser()._actions if a.dest == "command")
    return any("--runtime" in a.option_strings for a in sub.choices["depth"]._actions)


class Fault:
    """A forward hook on every DinoV2 encoder: `inf` in the first feature of its first call under autocast on
    `device_type` (the reduced-precision pass; the fp32 recompute runs without autocast, so it is clean)."""

    def __init__(self, device_type: str):
        self.device_type, self.calls, self.fired = device_type, 0, 0

    def __call__(self, module, args, output):
        if not isinstance(module, DinoV2) or not torch.is_autocast_enabled(self.device_type):
            return None
        self.calls += 1
        if self.calls != 1:
            return None
        self.fired += 1
        out = [level.clone() for level in output]
        out[0][0, 0, 0] = float("inf")
        return out


class Check:
    """The sections, as methods named after them, sharing frames, models and checkpoints; each adds its rows."""

    def __init__(self, args, device: torch.device, work: Path, report):
        self.args, self.p, self.device, self.work, self.report = args, args.profile, device, work, report
        self.cuda = device.type == "cuda"
        self.reduced = "fp16" if self.cuda else "bf16"  # the CPU build's autocast computes bf16, not fp16
        self.name = f"cuda:{device.index or 0}" if self.cuda else "cpu"
        encoders = sorted({*self.p["encoders"], *self.p["path_encoders"], "vits"})
        self.weights = {enc: registry.local_file(registry.find(enc, False)) for enc in encoders}
        self._video: Path | None = None
        self._decoded: list[np.ndarray] | None = None
        self._model = None
        self._single: dict[str, np.ndarray] = {}
        self._eager_fps: float | None = None
        self._states: dict[str, dict] = {}
        self.warm = not args.quick  # a warm-up run before each timed one (kernels, allocator); not on --quick

    # -- shared ----------------------------------------------------------------------------------------------------
    def state(self, encoder: str):
        """The published weights where models/ holds them, else the synthetic ones (what `weights` says)."""
        path = self.weights.get(encoder)
        if path:
            return path
        if encoder not in self._states:
            self._states[encoder] = synth_state_dict(encoder, 0)
        return self._states[encoder]

    def checkpoint(self, encoder: str) -> Path:
        path = self.weights.get(encoder)
        return path if path else save_checkpoint(self.work / "ckpt", encoder, 0)

    def model(self):
        """vits on the checked device, built once per section (`release` lets it go)."""
        if self._model is None:
            self._model = load_model(self.state("vits"), encoder="vits", device=self.device)
        return self._model

    def release(self) -> None:
        """After each section: no model or cached block of one section counts in the next one's peak VRAM."""
        self._model = None
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def frames(self, n: int | None = None) -> list[np.ndarray]:
        return list(synthetic_scene(n or self.p["frames"], self.p["height"], self.p["width"]))

    def video(self) -> tuple[Path, list[np.ndarray]]:
        """The x264 test video (several keyframes: the second worker seeks) and its frames as the workers decode
        them."""
        if self._video is None:
            if importlib.util.find_spec("av") is None:
                raise RuntimeError("PyAV (av) is not importable; `make gpu-check` installs it (offline: WHEELS=)")
            from vda.io.decode import read_frames  # PyAV: only the video sections need it
            from vda.io.probe import probe

            path = write_x264(self.work / "scene.mp4", self.frames(), gop=12)
            info = probe(path)
            self._decoded = [f for _, f in read_frames(info, range(info.frame_count))]
            self._video = path
        return self._video, self._decoded

    def infer(self, model, frames, precision: str, device: torch.device) -> np.ndarray:
        size = self.p["input_size"]
        return np.stack(list(infer_video(model, frames, input_size=size, precision=precision, device=device)))

    def bench_frames(self, n: int | None = None) -> list[np.ndarray]:
        p = self.p
        return list(sliding_frames(n or p["bench_frames"], p["bench_width"], p["bench_height"], shift=9))

    # -- env -------------------------------------------------------------------------------------------------------
    def env(self) -> None:
        meta = self.report.meta
        self.report.add("env", "device", "INFO", meta["describe"], **{k: meta[k] for k in meta if k != "weights"})
        synthetic = sorted(enc for enc, path in self.weights.items() if path is None)
        real = sorted(enc for enc, path in self.weights.items() if path is not None)
        detail = (f"published {', '.join(real)} from models/; " if real else "") + (
            f"SYNTHETIC {', '.join(synthetic)} (vda.model.synth: no checkpoint in models/; speed and memory hold, "
            "parity holds for these weights only)"
            if synthetic
            else "no synthetic weights"
        )
        self.report.add("env", "weights", "INFO", detail, synthetic=synthetic, real=real)
        libs = ", ".join(f"{k} {meta[k]}" for k in ("numpy", "opencv", "av", "onnxruntime"))
        self.report.add("env", "libraries", "INFO", libs)

    # -- parity ----------------------------------------------------------------------------------------------------
    def parity(self) -> None:
        frames, cpu = self.frames(self.p["parity_frames"]), torch.device("cpu")
        ref = self.infer(load_model(self.state("vits"), encoder="vits", device=cpu), frames, "fp32", cpu)
        err = rel_err(self.infer(self.model(), frames, "fp32", self.device), ref)
        shape = f"{len(frames)} frames {self.p['width']}x{self.p['height']}, input size {self.p['input_size']}"
        detail = f"relative max error {err:.2e} (tolerance {TOL:.0e}; {self.name} fp32 vs cpu fp32, {shape})"
        self.report.add("parity", "fp32", "PASS" if err <= TOL else "FAIL", detail, rel_err=err)
        for precision in ("fp16", "bf16") if self.cuda else ("bf16",):
            if precision == "bf16" and not bf16_supported(self.device):
                self.report.add("parity", precision, "SKIP", "this GPU has no bf16 in hardware")
                continue
            err = rel_err(self.infer(self.model(), frames, precision, self.device), ref)
            self.report.add("parity", precision, "INFO", f"relative max error {err:.2e} vs cpu fp32", rel_err=err)

    # -- depth -----------------------------------------------------------------------------------------------------
    def depth(self) -> None:
        for precision in ("fp32", self.reduced):
            try:
                self.depth_run(precision)
            except Exception as err:
                self.report.add("depth", precision, "FAIL", f"{type(err).__name__}: {str(err).strip()[:300]}")

    def depth_run(self, precision: str) -> None:
        """`vda depth` on two workers on the checked device, one window per unit, against the single pass."""
        from vda.io.rundir import RunDir
        from vda.io.writers import DepthMeta, read_depth

        video, decoded = self.video()
        out, devices = self.work / f"depth-{precision}", f"{self.name},{self.name}"
        extra = ["--format", "npy", "--input-size", str(self.p["input_size"]), "--precision", precision]
        cmd = depth_cmd(video, out, self.checkpoint("vits"), devices, *extra, "--unit-size", "1")
        seconds = run_command(cmd, self.args.timeout, self.args.out / "logs" / f"depth-{precision}.log")
        meta = DepthMeta.load(out)
        depth = np.stack([read_depth(out, i, meta) for i in range(meta.frame_count)])
        if precision not in self._single:
            self._single[precision] = self.infer(self.model(), decoded, precision, self.device)
        single = self._single[precision]
        if depth.shape != single.shape:
            raise ValueError(f"vda depth wrote {depth.shape}, the single pass has {single.shape}")
        results = json.loads(RunDir(out / "_run").results.read_text())
        per_worker = "+".join(str(d["units"]) for d in results["devices"])
        err, bitwise = rel_err(depth, single), bool(np.array_equal(depth, single))
        status = "PASS" if err <= TOL else "FAIL"  # bitwise is a figure: the merge's float64 fits may round apart
        detail = (
            f"{'bitwise equal' if bitwise else 'not bitwise equal'}, relative max error {err:.2e} against the "
            f"{precision} single pass (--devices {devices}, {per_worker} units per worker, {seconds:.0f} s)"
        )
        self.report.add("depth", precision, status, detail, rel_err=err, bitwise=bitwise, seconds=seconds)

    # -- fault -----------------------------------------------------------------------------------------------------
    def fault(self) -> None:
        """The worker's launch/settle path with one non-finite encoder output in the reduced precision: one fp32
        recompute of window 0, finite depth, window 0 as fp32 computes it."""
        frames = self.frames(self.p["parity_frames"])
        n, shape = len(frames), network_shape(self.p["height"], self.p["width"], self.p["input_size"])
        runs = {}
        for precision, inject in ((self.reduced, True), ("fp32", False)):
            hook = Fault(self.device.type)
            handle = torch.nn.modules.module.register_module_forward_hook(hook) if inject else None
            try:
                runner = WindowRunner(self.model(), Runtime.create(self.device, precision), shape)
                feed = FrameFeed(enumerate(frames), total=n)
                settled = launch_settled(runner, range(stitch.num_windows(n)), feed, n)
                runs[precision] = (runner, [d.float().cpu().numpy() for _, d, _, _ in settled], hook)
            finally:
                if handle is not None:
                    handle.remove()
        runner, depths, hook = runs[self.reduced]
        expected_frames = len(set(stitch.window_inputs(0, n)))
        finite = all(np.isfinite(d).all() for d in depths)
        err = rel_err(depths[0], runs["fp32"][1][0])
        ok = hook.fired == 1 and runner.recomputed == [0] and runner.fp32_frames == expected_frames and finite
        detail = (
            f"{hook.fired} injected inf in {self.reduced}: windows recomputed {runner.recomputed} "
            f"({runner.fp32_frames} frames in fp32, expected {expected_frames}), redone {runner.redone}, depth "
            f"{'finite' if finite else 'NOT finite'}; window 0 vs fp32 relative max error {err:.2e}"
        )
        ok = ok and err <= TOL
        self.report.add("fault", self.reduced, "PASS" if ok else "FAIL", detail, recomputed=runner.recomputed)

    # -- throughput ------------------------------------------------------------------------------------------------
    def throughput(self) -> None:
        """infer_video in window mode per encoder, precision and micro-batch; a row out of memory reads OOM."""
        p, oom = self.p, out_of_memory_error()
        frames = self.bench_frames()
        h, w = network_shape(p["bench_height"], p["bench_width"], p["bench_input_size"])
        self.report.say("throughput", f"{len(frames)} frames {p['bench_width']}x{p['bench_height']}, network {h}x{w}")
        for enc in p["encoders"]:
            try:
                model = load_model(self.state(enc), encoder=enc, device=self.device)
            except oom:
                self.report.add("throughput", enc, "INFO", "OOM loading the model")
                continue
            for precision in (self.reduced, "fp32"):
                for mb in p["micro_batches"]:
                    self.throughput_row(model, enc, precision, mb, frames, (h, w))
            del model
            self.release()

    def throughput_row(self, model, enc: str, precision: str, mb: int, frames, net: tuple[int, int]) -> None:
        check, size = f"{enc} {precision} mb{mb}", self.p["bench_input_size"]
        try:
            if self.warm:
                timed(model, self.device, frames[:8], size, precision=precision, micro_batch=mb)
            fps, peak = timed(model, self.device, frames, size, precision=precision, micro_batch=mb)
        except out_of_memory_error():
            self.report.add("throughput", check, "INFO", "OOM")
            return
        finally:
            gc.collect()
        ms = 1000 / fps
        published = PUBLISHED_MS.get((enc, precision))
        note = f"; authors' A100 {published} ms (518x518 forward only)" if published and size == 518 else ""
        detail = f"{ms:.2f} ms/frame, {fps:.1f} frames/s, peak {gib(peak)} at {net[0]}x{net[1]}{note}"
        self.report.add("throughput", check, "INFO", detail, ms_per_frame=ms, fps=fps, peak_gib=peak)
        if enc == "vits" and precision == self.reduced and mb == self.p["micro_batches"][0]:
            self._eager_fps = fps
            if self.cuda and peak is not None:
                met = peak * 2**30 < GOAL_BYTES
                goal = f"{'met' if met else 'NOT met'}: vits fp16 window mode peaks at {peak:.2f} GiB (goal < 4 GB)"
                self.report.add("throughput", "4GB goal", "INFO", goal, met=met)

    # -- stream, compile -------------------------------------------------------------------------------------------
    def stream(self) -> None:
        frames, size = self.bench_frames(), self.p["bench_input_size"]
        if self.warm:
            timed(self.model(), self.device, frames[:8], size, precision=self.reduced, mode="stream")
        fps, peak = timed(self.model(), self.device, frames, size, precision=self.reduced, mode="stream")
        detail = f"vits {self.reduced} stream mode: {1000 / fps:.2f} ms/frame, {fps:.1f} frames/s, peak {gib(peak)}"
        self.report.add("stream", f"vits {self.reduced}", "INFO", detail, fps=fps, peak_gib=peak)

    def compile(self) -> None:
        """vits with --compile in window mode: the first run pays the compile (a fresh inductor cache, so it is a
        real first compile), the second is the speed after."""
        try:
            check_compiler(gpu=self.cuda)
        except Exception as err:
            self.report.add("compile", f"vits {self.reduced}", "SKIP", str(err))
            return
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(self.work / "inductor")
        frames, size = self.bench_frames(), self.p["bench_input_size"]
        options = {"precision": self.reduced, "micro_batch": self.p["micro_batches"][0], "compile": True}
        t = time.perf_counter()
        timed(self.model(), self.device, frames[:32], size, **options)
        first = time.perf_counter() - t
        fps, peak = timed(self.model(), self.device, frames, size, **options)
        eager = f", eager {self._eager_fps:.1f} frames/s (throughput)" if self._eager_fps else ""
        detail = f"first run {first:.1f} s (compile included); then {fps:.1f} frames/s, peak {gib(peak)}{eager}"
        self.report.add("compile", f"vits {self.reduced}", "INFO", detail, first_s=first, fps=fps, peak_gib=peak)

    # -- worker path -----------------------------------------------------------------------------------------------
    def worker_path(self) -> None:
        """`vda depth` on one device over a 1080p x264 file, per encoder, timed per window by the worker itself
        (VDA_STAGE_TIMES): the stages, and the GPU's busy fraction."""
        p = self.p
        frames = sliding_frames(p["path_frames"], p["path_width"], p["path_height"], 9)
        video = write_x264(self.work / "path.mp4", frames)
        for enc in p["path_encoders"]:
            try:
                self.worker_path_run(video, enc)
            except Exception as err:
                self.report.add("worker-path", enc, "FAIL", f"{type(err).__name__}: {str(err).strip()[:300]}")

    def worker_path_run(self, video: Path, enc: str) -> None:
        p, stem = self.p, self.work / f"stages-{enc}"
        precision = self.reduced if self.cuda else "fp32"  # the CLI's default precision on each device
        out, extra = self.work / f"path-{enc}", ["--encoder", enc, "--precision", precision]
        cmd = depth_cmd(video, out, self.checkpoint(enc), self.name, *extra, "--input-size", str(p["bench_input_size"]))
        log = self.args.out / "logs" / f"worker-path-{enc}.log"
        wall = run_command(cmd, self.args.timeout, log, env={"VDA_STAGE_TIMES": str(stem)})
        files = sorted(stem.parent.glob(f"{stem.name}.*.json"))
        if not files:
            raise RuntimeError(f"the workers wrote no stage times ({stem}.<pid>.json); log {log}")
        rows = [r for f in files for r in json.loads(f.read_text())["rows"]]
        ms = stage_means(rows)
        loop, whole = busy_fraction(rows, wall)
        stages = ", ".join(f"{k} {'-' if v is None else f'{v:.1f}'}" for k, v in ms.items())
        busy = (
            f"GPU busy {100 * loop:.0f}% of the window loop, {100 * whole:.0f}% of the whole `vda depth`"
            if loop is not None
            else "GPU busy: - (no CUDA events on a CPU)"
        )
        detail = (
            f"{enc} {precision}, {p['path_frames']} frames {p['path_width']}x{p['path_height']}, {len(rows)} windows, "
            f"{wall:.0f} s; ms per window: {stages}; {busy}"
        )
        self.report.add("worker-path", enc, "INFO", detail, ms=ms, busy_loop=loop, busy_wall=whole, wall_s=wall)

    # -- onnx ------------------------------------------------------------------------------------------------------
    def onnx(self) -> None:
        """vda's ONNX runtime on the CUDA and TensorRT providers; skipped (one row) until vda has one."""
        have_ort = importlib.util.find_spec("onnxruntime") is not None
        providers = __import__("onnxruntime").get_available_providers() if have_ort else []
        if not vda_onnx_runtime():
            why = f"vda has no ONNX runtime yet (no `vda depth --runtime`); onnxruntime providers: {providers or '-'}"
            self.report.add("onnx", "runtime", "SKIP", why, providers=providers)
            return
        wanted = [p for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") if p in providers]
        if not wanted:
            self.report.add("onnx", "runtime", "SKIP", f"onnxruntime-gpu not importable (providers {providers or '-'})")
            return
        self.onnx_run()

    def onnx_run(self) -> None:
        """`vda depth --runtime onnx` against the fp32 single pass (the runtime picks its provider)."""
        from vda.io.writers import DepthMeta, read_depth

        video, decoded = self.video()
        out = self.work / "onnx"
        extra = ["--format", "npy", "--input-size", str(self.p["input_size"]), "--runtime", "onnx"]
        cmd = depth_cmd(video, out, self.checkpoint("vits"), self.name, *extra)
        seconds = run_command(cmd, self.args.timeout, self.args.out / "logs" / "onnx.log")
        meta = DepthMeta.load(out)
        depth = np.stack([read_depth(out, i, meta) for i in range(meta.frame_count)])
        err = rel_err(depth, self.infer(self.model(), decoded, "fp32", self.device))
        detail = f"relative max error {err:.2e} against the fp32 single pass, {len(depth)} frames in {seconds:.1f} s"
        self.report.add("onnx", "vits", "INFO", detail, rel_err=err, seconds=seconds)

    # -- deterministic ---------------------------------------------------------------------------------------------
    def deterministic(self) -> None:
        """Whether two fp16 passes are bitwise equal with cuDNN's default algorithms and with deterministic ones."""
        if not self.cuda:
            self.report.add("deterministic", "cudnn", "SKIP", "cuDNN is a GPU library: measured on GPU hosts only")
            return
        frames, saved = (
            self.frames(self.p["parity_frames"]),
            (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark),
        )
        try:
            for flag in (False, True):
                torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flag, False
                a, b = (self.infer(self.model(), frames, "fp16", self.device) for _ in range(2))
                same = bool(np.array_equal(a, b))
                text = "bitwise equal" if same else f"differ by {rel_err(b, a):.1e}"
                self.report.add("deterministic", f"cudnn.deterministic={flag}", "INFO", text, bitwise=same)
        finally:
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved
