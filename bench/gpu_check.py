"""`make gpu-check`: the first run on a GPU host, checking that the GPU path computes what the CPU path computes.

    make gpu-check [RECORD=1]                  # = cd bench && python gpu_check.py [--record]
    python gpu_check.py --device cpu           # the same steps at a tiny size, without a GPU (the tests run this)

Nothing of this project had run on a GPU when it was written. Sized to finish within 8 minutes on one GPU, with
synthetic vits weights made on the spot (`vda.model.synth`; nothing is read from ../shared or downloaded), it checks:

1. video: a short procedural scene encoded with x264 through PyAV (48 frames at 320x180), decoded back as the
   workers decode it;
2. parity: `infer_video` in window mode on CUDA in fp32 against the CPU in fp32 on those frames, as the relative
   max error `max|cuda - cpu| / max|cpu|`: PASS at or below 1e-4. The fp16 and bf16 (where the GPU supports it)
   deviations from CPU fp32 are printed for information, without a threshold. vda computes fp32 on CUDA with TF32
   off (`vda.device.ieee_fp32`: by default cuDNN runs fp32 convolutions in TF32 on Ampere and newer GPUs,
   which
   alone may exceed 1e-4); a FAIL line still prints torch's TF32 settings;
3. depth-local: `vda depth --devices cuda:0,cuda:0 --unit-size 1` (two worker processes on one GPU sharing the queue
   one window per unit: process isolation, the event and merge paths) in fp32 against the single pass on the same
   decoded frames on the GPU: PASS at or below 1e-4;
4. depth-docker: the same with `--backend docker`, where the Docker engine has the `nvidia` runtime and the image
   vda:latest exists; otherwise one line says why it is skipped;
4b. depth-fp16: `vda depth` in fp16 (the GPU default) against the fp16 single pass: the workers store fp16 windows
   and `infer_video` rounds the same way, so they agree bit for bit where the GPU computes each window alike (it
   says whether they are bitwise equal); PASS at or below 1e-4;
4c. deterministic: the fp16 single pass twice with cuDNN's default algorithms and twice with
   `torch.backends.cudnn.deterministic` (VDA_CUDNN_DETERMINISTIC=1): whether each pair is bitwise equal, and the
   speed of each, for information;
4d. worker-path: `vda work` on a 1080p x264 file (tiny on --device cpu), timed per window by the worker itself
   (VDA_STAGE_TIMES): waiting for the decoder, building the batch, compute (host, and GPU by CUDA events), the
   finiteness sync and the hand-off to the store, printed as one table of milliseconds per window;
5. table: frames/s and peak VRAM per encoder (vits, vitb, vitl) and precision (fp16, bf16, fp32) in window and
   stream mode at input size 518 over synthetic 1920x1080 frames, measured by bench_gpu.py's code (a row that runs
   out of memory reads OOM and the table goes on), and whether vits fp16 window mode stays under the 4 GB goal;
6. record (`--record`): appends the results and the table to bench/RESULTS.md in one write.

A failed step prints one line, `gpu-check: <step>: FAIL <reason>`, and the next steps still run; the summary lists
every check and the exit code is 1 if any failed. Work happens in a temporary folder that is removed at the end, so
running it twice is safe and nothing is left under a final name. The figures it prints must come from a real run on
the GPU they describe: do not copy them anywhere by hand, use `--record`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from bench_gpu import (
    ERROR,
    OOM,
    SQUARE_COLUMN,
    commit,
    free,
    header,
    markdown,
    table_rows,
)
from bench_infer import depth_cmd, sliding_frames, write_x264

from vda.device.clock import STAGES
from vda.device.runtime import BF16_MIN_CAPABILITY
from vda.device.single_pass import infer_video
from vda.io.decode import read_frames
from vda.io.probe import probe
from vda.io.rundir import RunDir
from vda.io.writers import DepthMeta, read_depth
from vda.model.network import load_model
from vda.model.synth import save_checkpoint, synth_state_dict, synthetic_scene

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4  # max |ours - reference| <= TOL * max |reference|, as the test suite compares
GOAL_BYTES = 4e9  # vits fp16 window mode at 518: under 4 GB (the authors' forward needs 6.8 GB)
STEPS = ("parity", "depth-local", "depth-docker", "depth-fp16", "deterministic", "worker-path", "table")
# Sizes per device kind. The CPU profile runs every step's code at a size two cores finish in well under a minute.
PROFILES: dict[str, dict] = {
    "cuda": {
        "frames": 48,
        "width": 320,
        "height": 180,
        "input_size": 126,
        "bench_input_size": 518,
        "bench_frames": 64,
        "bench_width": 1920,
        "bench_height": 1080,
        "encoders": ["vits", "vitb", "vitl"],
        "precisions": ["fp16", "bf16", "fp32"],
        "repeats": 3,
        "timeout": 300,
        "path_frames": 96,
        "path_width": 1920,
        "path_height": 1080,
    },
    "cpu": {
        "frames": 24,
        "width": 64,
        "height": 48,
        "input_size": 28,
        "bench_input_size": 28,
        "bench_frames": 10,
        "bench_width": 320,
        "bench_height": 180,
        "encoders": ["vits"],
        "precisions": ["fp32"],
        "repeats": 1,
        "timeout": 300,
        "path_frames": 40,
        "path_width": 64,
        "path_height": 48,
    },
}


@dataclass
class Outcome:
    step: str
    status: str  # PASS, FAIL, SKIP, INFO
    detail: str


@dataclass
class Report:
    """What each step found; printed as it happens and once more as the summary."""

    outcomes: list[Outcome] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # per step run, for sizing the check to its budget

    @staticmethod
    def say(step: str, text: str) -> None:
        print(f"gpu-check: {step}: {text}", flush=True)

    def add(self, step: str, status: str, detail: str) -> None:
        self.outcomes.append(Outcome(step, status, detail))
        self.say(step, f"{status} {detail}")

    def run(self, step: str, fn: Callable, *args):
        """fn(*args), or one FAIL line with the reason if it raises: the next steps still run."""
        t = time.perf_counter()
        try:
            return fn(*args)
        except Exception as err:
            self.add(step, "FAIL", reason(err))
            return None
        finally:
            self.seconds[step] = time.perf_counter() - t

    @property
    def failed(self) -> bool:
        return any(o.status == "FAIL" for o in self.outcomes)

    def summary(self) -> list[str]:
        width = max((len(o.step) for o in self.outcomes), default=4) + 2
        took = {step: f"  [{s:.0f} s]" for step, s in self.seconds.items()}
        lines = [f"  {o.step:<{width}}{o.status:<6}{o.detail}{took.get(o.step, '')}" for o in self.outcomes]
        failed = sum(o.status == "FAIL" for o in self.outcomes)
        verdict = f"FAIL ({failed} check(s) failed)" if failed else "PASS"
        return ["gpu-check: summary", *lines, f"gpu-check: {verdict}"]


def reason(err: BaseException) -> str:
    """One line for a failure: the exception's type and the first line of its message."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300]}" if text else type(err).__name__


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(np.asarray(ours, np.float64) - ref).max() / np.abs(ref).max())


def decode(video: Path) -> list[np.ndarray]:
    """All frames, decoded by the same reader the workers use."""
    info = probe(video)
    return [f for _, f in read_frames(info, range(info.frame_count))]


def tf32_note() -> str:
    """How this torch computes "fp32" on a GPU: TF32 convolutions alone can exceed the 1e-4 tolerance."""
    conv = getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None)
    conv = conv or ("tf32" if torch.backends.cudnn.allow_tf32 else "ieee")
    return f"cuDNN conv fp32 precision {conv}, float32 matmul precision {torch.get_float32_matmul_precision()}"


def bf16_supported(device: torch.device) -> bool:
    """bf16 in hardware, as `vda.device.Runtime` requires it (torch would also report emulated bf16)."""
    if device.type != "cuda":
        return False
    try:
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # an older torch without the argument
        native = torch.cuda.is_bf16_supported()
    return native and tuple(torch.cuda.get_device_capability(device)) >= BF16_MIN_CAPABILITY


def describe(device: torch.device) -> str:
    if device.type != "cuda":
        return f"Device cpu ({platform.machine()}, {torch.get_num_threads()} threads), torch {torch.__version__}"
    major, minor = torch.cuda.get_device_capability(device)
    return (
        f"Device {torch.cuda.get_device_name(device)} ({device}, compute capability {major}.{minor}), "
        f"torch {torch.__version__}, CUDA {torch.version.cuda}; {tf32_note()}"
    )


def depth_command(
    video: Path, out: Path, checkpoint: Path, devices: str, input_size: int, backend: str, precision: str = "fp32"
) -> list[str]:
    """`vda depth` as a user runs it, in the precision of the single pass it is compared with; one window per unit,
    so that both workers compute some of the video's windows."""
    extra = ["--format", "npy", "--input-size", str(input_size), "--precision", precision, "--backend", backend]
    extra += ["--unit-size", "1"]
    return depth_cmd(video, out, checkpoint, devices, *extra)


def run_command(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `cmd` (with `env` added to this environment); past `timeout`, SIGTERM first, so that `vda depth` stops its
    workers and containers itself."""
    full = {**os.environ, **env} if env else None
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        raise TimeoutError(f"vda {cmd[3]} ran past {timeout:g} s and was stopped (--timeout)") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


STAGE_COLUMNS = (*STAGES, "total", "gpu")


def stage_table(rows: list[dict]) -> list[str]:
    """Milliseconds per window of each stage of the worker path: the mean over the windows after the first (which
    pays for allocation and, under --compile, compilation), the first alone, and each stage's share of the total."""
    steady = rows[1:] or rows

    def mean(stage: str, part: list[dict]) -> float | None:
        values = [r[stage] for r in part if r.get(stage) is not None]
        return 1000 * sum(values) / len(values) if values else None

    total = mean("total", steady) or 1.0
    lines = ["| stage | ms per window | share | first window ms |", "|---|---|---|---|"]
    for stage in STAGE_COLUMNS:
        ms, first = mean(stage, steady), mean(stage, rows[:1])
        if ms is None:
            lines.append(f"| {stage} | - | - | - |")
        else:
            lines.append(f"| {stage} | {ms:.1f} | {100 * ms / total:.0f}% | {first:.1f} |")
    return lines


def stage_summary(rows: list[dict]) -> str:
    """The stage that takes the most host time per window, for the one-line result."""
    steady = rows[1:] or rows
    totals = {stage: sum(r[stage] for r in steady) for stage in STAGES}
    top = max(totals, key=totals.get)
    share = totals[top] / max(1e-9, sum(r["total"] for r in steady))
    return f"most host time per window in {top} ({100 * share:.0f}%)"


def last_line(text: str) -> str:
    """The last non-empty line of a program's stderr (progress bars redraw with carriage returns)."""
    lines = [line.rsplit("\r", 1)[-1].strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    return lines[-1][:300] if lines else "(no output)"


def read_output(out: Path) -> np.ndarray:
    meta = DepthMeta.load(out)
    return np.stack([read_depth(out, i, meta) for i in range(meta.frame_count)])


def docker_skip_reason(image: str, run: Callable = subprocess.run, which: Callable = shutil.which) -> str | None:
    """Why the docker check cannot run here (None when it can): no docker, no engine, no nvidia runtime, no image."""
    if not which("docker"):
        return "no docker command on this host"
    info = run(["docker", "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        return f"the Docker engine is not reachable ({last_line(info.stderr)})"
    if '"nvidia"' not in info.stdout:
        return (
            "the Docker engine has no nvidia runtime (docker info Runtimes); install nvidia-container-toolkit and run "
            "`sudo nvidia-ctk runtime configure --runtime=docker`"
        )
    if run(["docker", "image", "inspect", image], capture_output=True, text=True, timeout=60).returncode != 0:
        return f"image {image} not found; build it with `make image`"
    return None


class Check:
    """The steps, sharing the video, the checkpoint and the single pass between them."""

    def __init__(self, args: argparse.Namespace, device: torch.device, work: Path, report: Report):
        self.args, self.device, self.work, self.report = args, device, work, report
        self.video: Path | None = None
        self.frames: list[np.ndarray] | None = None
        self.state = synth_state_dict("vits", 0)
        self.checkpoint = save_checkpoint(work / "ckpt", "vits", 0)
        self._model = None
        self._single: dict[str, np.ndarray] = {}
        self.rows: list[list[str]] = []
        self.stage_rows: list[dict] = []

    # -- 1 -------------------------------------------------------------------------------------------------------
    def make_video(self) -> None:
        a = self.args
        scene = synthetic_scene(a.frames, a.height, a.width)
        self.video = write_x264(self.work / "scene.mp4", scene, gop=12)  # several keyframes: the second worker seeks
        self.frames = decode(self.video)
        h, w = self.frames[0].shape[:2]
        if len(self.frames) != a.frames:
            raise ValueError(f"wrote {a.frames} frames but decoded {len(self.frames)}")
        self.report.add("video", "PASS", f"{len(self.frames)} frames {w}x{h}, x264 through PyAV, decoded back")

    def need_frames(self) -> list[np.ndarray]:
        if self.frames is None:
            raise RuntimeError("no video (the video step failed)")
        return self.frames

    def infer(self, model, precision: str, device: torch.device) -> np.ndarray:
        frames = self.need_frames()
        size = self.args.input_size
        return np.stack(list(infer_video(model, frames, input_size=size, precision=precision, device=device)))

    def single_pass(self, precision: str = "fp32") -> np.ndarray:
        """Window mode on the checked device over the decoded frames: what `vda depth` must reproduce."""
        if precision not in self._single:
            self._single[precision] = self.infer(self.model(), precision, self.device)
        return self._single[precision]

    def model(self):
        """The vits model on the checked device, built once."""
        if self._model is None:
            self._model = load_model(self.state, encoder="vits", device=self.device)
        return self._model

    # -- 2 -------------------------------------------------------------------------------------------------------
    def parity(self) -> None:
        a, dev = self.args, self.device
        cpu_ref = self.infer(load_model(self.state, encoder="vits", device="cpu"), "fp32", torch.device("cpu"))
        ours = self.single_pass()
        err = rel_err(ours, cpu_ref)
        what = f"{dev} fp32 vs cpu fp32"
        detail = (
            f"relative max error {err:.2e} (tolerance {TOL:.0e}; {what}, {len(cpu_ref)} frames, "
            f"input size {a.input_size})"
        )
        if err <= TOL:
            self.report.add("parity", "PASS", detail)
        else:
            hint = f"; {tf32_note()}" if dev.type == "cuda" else ""
            self.report.add("parity", "FAIL", detail + hint)
        others = [p for p in a.precisions if p != "fp32"]
        if dev.type != "cuda":
            self.report.say("parity", f"fp16/bf16 deviation not measured on {dev} (informational on GPUs only)")
            return
        for precision in others:
            step = f"parity-{precision}"
            if precision == "bf16" and not bf16_supported(dev):
                self.report.add(step, "SKIP", "this GPU does not support bf16")
            else:
                self.report.run(step, self.deviation, step, precision, cpu_ref)

    def deviation(self, step: str, precision: str, cpu_ref: np.ndarray) -> None:
        """How far fp16 / bf16 are from CPU fp32: informational, as reduced precision is expected to differ."""
        err = rel_err(self.infer(self.model(), precision, self.device), cpu_ref)
        self.report.add(step, "INFO", f"relative max error {err:.2e} ({self.device} {precision} vs cpu fp32)")

    # -- 3 and 4 -------------------------------------------------------------------------------------------------
    def depth(self, backend: str, precision: str = "fp32") -> None:
        step = f"depth-{backend}" if precision == "fp32" else f"depth-{precision}"
        if precision != "fp32" and self.device.type != "cuda":
            self.report.add(step, "SKIP", f"{precision} needs a GPU (the CPU build computes fp32 and bf16 only)")
            return
        if backend == "docker":
            why = (
                "--device cpu: it runs on GPU hosts (nvidia runtime, vda:latest); `make smoke` runs the CPU containers"
                if self.device.type != "cuda"
                else docker_skip_reason(self.args.docker_image)
            )
            if why:
                self.report.add(step, "SKIP", why)
                return
        if self.video is None:
            raise RuntimeError("no video (the video step failed)")
        name = "cpu" if self.device.type == "cpu" else f"cuda:{self.device.index or 0}"
        devices = f"{name},{name}"
        out = self.work / step
        cmd = depth_command(self.video, out, self.checkpoint, devices, self.args.input_size, backend, precision)
        if backend == "docker":
            cmd += ["--image", self.args.docker_image]
        t = time.perf_counter()
        done = run_command(cmd, self.args.timeout)
        seconds = time.perf_counter() - t
        if done.returncode != 0:
            raise RuntimeError(f"vda depth exited with {done.returncode}: {last_line(done.stderr)}")
        depth, single = read_output(out), self.single_pass(precision)
        if depth.shape != single.shape:
            raise ValueError(f"vda depth wrote {depth.shape}, the single pass has {single.shape}")
        results = json.loads(RunDir(out / "_run").results.read_text())
        per_device = "+".join(str(d["units"]) for d in results["devices"])
        err = rel_err(depth, single)
        ok = err <= TOL
        bitwise = "bitwise equal" if np.array_equal(depth, single) else "not bitwise equal"
        detail = (
            f"relative max error {err:.2e} against the {precision} single pass, {bitwise} (tolerance {TOL:.0e}; "
            f"--devices {devices}, {len(results['units'])} units, {per_device} per worker, {len(depth)} frames, "
            f"{seconds:.0f} s)"
        )
        self.report.add(step, "PASS" if ok else "FAIL", detail)

    # -- 4c ------------------------------------------------------------------------------------------------------
    def deterministic(self) -> None:
        """Whether fp16 repeats bit for bit with cuDNN's default algorithms and with deterministic ones, and at what
        speed: what the README may promise about fp16 across runs (it says 1e-4 until this has run on a GPU)."""
        if self.device.type != "cuda":
            self.report.add("deterministic", "SKIP", "cuDNN is a GPU library: measured on GPU hosts only")
            return
        saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
        parts = []
        try:
            for flag in (False, True):
                torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flag, False
                runs, t = [], time.perf_counter()
                for _ in range(2):
                    runs.append(self.infer(self.model(), "fp16", self.device))
                fps = 2 * len(runs[0]) / (time.perf_counter() - t)
                same = "bitwise equal" if np.array_equal(*runs) else f"differ by {rel_err(runs[1], runs[0]):.1e}"
                parts.append(f"cudnn.deterministic={flag}: two fp16 passes {same}, {fps:.1f} frames/s")
        finally:
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved
        self.report.add("deterministic", "INFO", "; ".join(parts))

    # -- 4d ------------------------------------------------------------------------------------------------------
    def worker_path(self) -> None:
        """`vda work` on an x264 file, timed per window by the worker (VDA_STAGE_TIMES), as one table."""
        a = self.args
        video = write_x264(self.work / "path.mp4", sliding_frames(a.path_frames, a.path_width, a.path_height, 9))
        run, times = self.work / "path-run", self.work / "stages.json"
        name = "cpu" if self.device.type == "cpu" else f"cuda:{self.device.index or 0}"
        vda = [sys.executable, "-m", "vda.cli.main"]
        sizes = ["--checkpoint", str(self.checkpoint), "--input-size", str(a.bench_input_size)]
        plan = run_command([*vda, "plan", str(video), "-o", str(run), "--devices", name, *sizes], a.timeout)
        if plan.returncode != 0:
            raise RuntimeError(f"vda plan exited with {plan.returncode}: {last_line(plan.stderr)}")
        cmd = [*vda, "work", str(run), "--device", name, "--checkpoint", str(self.checkpoint)]
        done = run_command(cmd, a.timeout, env={"VDA_STAGE_TIMES": str(times)})
        if done.returncode != 0:
            raise RuntimeError(f"vda work exited with {done.returncode}: {last_line(done.stderr)}")
        rows = json.loads(times.read_text())["rows"]
        print("\n".join(stage_table(rows)), flush=True)
        self.stage_rows = rows
        self.report.add(
            "worker-path",
            "PASS",
            f"{len(rows)} windows of {a.path_width}x{a.path_height} x264 timed in `vda work` at input size "
            f"{a.bench_input_size}; {stage_summary(rows)}",
        )

    # -- 5 -------------------------------------------------------------------------------------------------------
    def table(self) -> None:
        a, dev = self.args, self.device
        self._model = None  # the parity model would otherwise count in every row's peak VRAM
        free(dev)
        precisions = list(a.precisions)
        if dev.type == "cuda" and "bf16" in precisions and not bf16_supported(dev):
            precisions.remove("bf16")
            self.report.say("table", "bf16 rows skipped: this GPU does not support bf16")
        frames = list(sliding_frames(a.bench_frames, a.bench_width, a.bench_height, shift=9))
        self.report.say(
            "table",
            f"{a.bench_frames} synthetic frames {a.bench_width}x{a.bench_height} per run, input size "
            f"{a.bench_input_size}, forward [1, 32, 3, {a.bench_input_size}, {a.bench_input_size}]",
        )
        head = header(a.modes)
        print("\n".join(markdown(head, [])), flush=True)
        errors: list[str] = []
        self.rows = table_rows(
            dev,
            a.encoders,
            precisions,
            a.modes,
            frames,
            a.bench_input_size,
            a.repeats,
            on_row=lambda cells: print(markdown(head, [cells])[2], flush=True),
            errors=errors,
        )
        oom = sum(OOM in r for r in self.rows)
        self.goal(head)
        if errors:
            raise RuntimeError(f"{len(errors)} row(s) failed, first: {errors[0]}")
        self.report.add("table", "PASS", f"{len(self.rows)} row(s) measured" + (f", {oom} OOM" if oom else ""))

    def goal(self, head: list[str]) -> None:
        """Whether vits fp16 window mode at 518 stays under 4 GB; informational (a goal, not a correctness check)."""
        row = next((r for r in self.rows if r[:2] == ["vits", "fp16"]), None)
        if row is None or self.args.bench_input_size != 518 or self.device.type != "cuda":
            self.report.add("4GB-goal", "INFO", "not measured (needs a vits fp16 row at input size 518 on a GPU)")
            return
        square = row[head.index(SQUARE_COLUMN)]
        wide = row[head.index("window peak GiB")] if "window peak GiB" in head else "-"
        if square in (OOM, ERROR):
            self.report.add("4GB-goal", "INFO", f"not met: vits fp16 window mode at 518 was {square}")
            return
        met = float(square) * 2**30 < GOAL_BYTES
        self.report.add(
            "4GB-goal",
            "INFO",
            f"{'met' if met else 'NOT met'}: vits fp16 window mode at 518 peaks at {square} GiB on 518x518 frames "
            f"({wide} GiB on {self.args.bench_width}x{self.args.bench_height}); goal under 4 GB = "
            f"{GOAL_BYTES / 2**30:.2f} GiB",
        )

    # -- 6 -------------------------------------------------------------------------------------------------------
    def record(self, results: Path) -> None:
        a = self.args
        lines = [
            f"\n## gpu_check.py, {datetime.date.today()}, commit {commit()}\n",
            f"{describe(self.device)}. Synthetic vits weights; {a.frames} frames {a.width}x{a.height} x264, input "
            f"size {a.input_size}, window mode.\n",
            "| check | result | detail |",
            "|---|---|---|",
            *[f"| {o.step} | {o.status} | {o.detail.replace('|', '/')} |" for o in self.report.outcomes],
        ]
        if self.stage_rows:
            lines += [
                "",
                f"`vda work` on {a.path_frames} frames {a.path_width}x{a.path_height} x264, input size "
                f"{a.bench_input_size}, per window:\n",
                *stage_table(self.stage_rows),
            ]
        if self.rows:
            lines += [
                "",
                f"infer_video over {a.bench_frames} synthetic frames {a.bench_width}x{a.bench_height}, input size "
                f"{a.bench_input_size}; forward [1, 32, 3, {a.bench_input_size}, {a.bench_input_size}]. "
                "Peak GiB is torch's peak allocation, weights included.\n",
                *markdown(header(a.modes), self.rows),
            ]
        with open(results, "a") as fh:  # one write: a second run appends a second block, never a half one
            fh.write("\n".join(lines) + "\n")
        self.report.say("record", f"appended to {results}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0].strip("`"))
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a smoke run at a tiny size")
    ap.add_argument("--frames", type=int, help="frames of the test video (48 on cuda, 24 on cpu)")
    ap.add_argument("--width", type=int, help="test video width (320 on cuda, 64 on cpu)")
    ap.add_argument("--height", type=int, help="test video height (180 on cuda, 48 on cpu)")
    ap.add_argument("--input-size", type=int, help="input size of the parity and depth checks (126 on cuda, 28 on cpu)")
    ap.add_argument("--bench-input-size", type=int, help="input size of the table (518 on cuda, 28 on cpu)")
    ap.add_argument("--bench-frames", type=int, help="frames per infer_video run in the table (64 on cuda)")
    ap.add_argument("--bench-width", type=int, help="table frame width (1920 on cuda, 320 on cpu)")
    ap.add_argument("--bench-height", type=int, help="table frame height (1080 on cuda, 180 on cpu)")
    ap.add_argument("--encoders", nargs="+", choices=["vits", "vitb", "vitl"], help="table encoders")
    ap.add_argument("--precisions", nargs="+", choices=["fp16", "bf16", "fp32"], help="table and parity precisions")
    ap.add_argument("--modes", nargs="+", choices=["window", "stream"], default=["window", "stream"])
    ap.add_argument("--repeats", type=int, help="timed forwards per table row")
    ap.add_argument("--path-frames", type=int, help="frames of the worker-path video (96 on cuda, 40 on cpu)")
    ap.add_argument("--path-width", type=int, help="worker-path video width (1920 on cuda, 64 on cpu)")
    ap.add_argument("--path-height", type=int, help="worker-path video height (1080 on cuda, 48 on cpu)")
    ap.add_argument("--timeout", type=float, help="seconds allowed to each `vda depth` run (300)")
    ap.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS), help="run only these checks")
    ap.add_argument("--docker-image", default="vda:latest", help="image of the docker check")
    ap.add_argument("--record", action="store_true", help="append the results and the table to bench/RESULTS.md")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    profile = PROFILES["cpu" if args.device == "cpu" else "cuda"]
    for key, value in profile.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
        print(
            f"gpu-check: no CUDA GPU is visible (torch {torch.__version__}, {build}); run it on a GPU host, "
            "or pass --device cpu for a smoke run",
            file=sys.stderr,
        )
        return 1
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        print(f"gpu-check: {device} asked for but {torch.cuda.device_count()} GPU(s) are visible", file=sys.stderr)
        return 1
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    print(f"gpu-check: {describe(device)}", flush=True)
    report = Report()
    started = time.perf_counter()
    # ignore_cleanup_errors: a container's file that cannot be removed must not turn the summary into a traceback
    with tempfile.TemporaryDirectory(prefix="vda-gpu-check-", ignore_cleanup_errors=True) as tmp:
        check = report.run("setup", Check, args, device, Path(tmp), report)
        if check is not None:
            if {"parity", "depth-local", "depth-docker", "depth-fp16", "deterministic"} & set(args.steps):
                report.run("video", check.make_video)
            if "parity" in args.steps:
                report.run("parity", check.parity)
            for backend in ("local", "docker"):
                if f"depth-{backend}" in args.steps:
                    report.run(f"depth-{backend}", check.depth, backend)
            if "depth-fp16" in args.steps:
                report.run("depth-fp16", check.depth, "local", "fp16")
            if "deterministic" in args.steps:
                report.run("deterministic", check.deterministic)
            if "worker-path" in args.steps:
                report.run("worker-path", check.worker_path)
            if "table" in args.steps:
                report.run("table", check.table)
            if args.record:
                report.run("record", check.record, args.results)
    print("\n".join(report.summary()), f"({time.perf_counter() - started:.0f} s)", flush=True)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
