"""`make gpu-check`: the first run on a GPU host, in one run of under eight minutes, ending with one summary table.

    make gpu-check PY=/path/to/python [WHEELS=gpu-wheels]   # the host's torch as it is (docs/gpu.md)
    python gpu_check.py --out DIR [--device cuda:0]         # from bench/, with vda importable
    python gpu_check.py --out DIR --device cpu --quick      # every section at a tiny size, without a GPU (the tests)

Sections, in this order so that a run cut short keeps the most important ones; each is guarded (a failure is one
FAIL row and the next section runs), and skipped (one SKIP row) when its expected time would take the run past
`--budget` seconds (450: eight minutes less the start and the table):

 env          GPU, driver, CUDA, torch, cuDNN, Python, library versions, and which weights (real or synthetic);
 parity       infer_video (window mode) on the device in fp32 against the CPU in fp32 on the same decoded frames:
              PASS at or below 1e-4 relative max error; fp16 and bf16 against fp32 as figures;
 depth        `vda depth` on two workers sharing the device against the single pass: fp32 within 1e-4, fp16 (bf16
              on a CPU) bit for bit where the device computes each window alike;
 fault        a non-finite encoder output injected on the device in fp16 (bf16 on a CPU) costs one fp32 recompute of
              one window, and the depth stays finite;
 throughput   frames/s, ms/frame and peak VRAM of infer_video in window mode for vits, vitb, vitl x fp16, fp32 on
              1920x1080 frames (network 518x924), at the default micro-batch and a larger one;
 stream       vits in stream mode; compile: vits with torch.compile, the first run (compile included), then speed;
 worker-path  `vda depth` on a 1080p x264 file per encoder: per-window decode wait, batch, compute, GPU time (CUDA
              events), finiteness sync and hand-off, and the GPU busy fraction (GPU time over wall time);
 onnx         vda's ONNX runtime on the CUDA and TensorRT providers, where vda has one and onnxruntime-gpu imports;
 deterministic  whether two fp16 passes are bitwise equal with cuDNN's default and deterministic algorithms.

Figures go to `<out>/gpu-check.json` (rewritten after each section), the full log to `<out>/gpu-check.log` and each
command's output to `<out>/logs/`. Weights: the published checkpoints where `models/` holds them, otherwise the
synthetic ones of `vda.model.synth` (speed and memory do not depend on the values; the table says which). Work files
go to a temporary folder that is removed at the end. Exit code 1 if any check failed.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

import torch
from gpu_report import Logged, Report
from gpu_sections import EXPECTED, PROFILES, SECTIONS, Check, environment

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0].strip("`"))
    ap.add_argument("--out", type=Path, default=ROOT / "gpu-check-out", help="folder of the log and the JSON")
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a CPU smoke run of every section)")
    ap.add_argument("--budget", type=float, default=450.0, help="seconds; a section that would pass it is skipped")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="run only these")
    ap.add_argument("--skip", nargs="+", choices=SECTIONS, default=[], help="sections not to run")
    ap.add_argument("--encoders", nargs="+", choices=["vits", "vitb", "vitl"], help="throughput encoders")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds allowed to each `vda depth`")
    ap.add_argument("--record", action="store_true", help="append the summary table to bench/RESULTS.md")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.profile = dict(PROFILES["quick" if args.quick else "full"])
    if args.encoders:
        args.profile["encoders"] = args.encoders
    return args


def pick_device(name: str) -> torch.device | str:
    """The device to check, or the one line that says why there is none."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
        return (
            f"gpu-check: no CUDA GPU is visible (torch {torch.__version__}, {build}); run it on a GPU host, "
            "or pass --device cpu --quick for a smoke run"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        return f"gpu-check: {device} asked for but {torch.cuda.device_count()} GPU(s) are visible"
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def run_sections(check: Check, report: Report, names: list[str], budget: float) -> None:
    """Each section in order: skipped (recorded) when its expected time would pass the budget; a raise is one FAIL
    row; the JSON is rewritten after each."""
    quick = check.args.quick
    for name in names:
        expected = EXPECTED[name][1 if quick else 0]
        left = budget - report.elapsed()
        if expected > left:
            why = f"expected {expected:g} s, {max(0.0, left):.0f} s left of the {budget:g} s budget"
            report.add(name, name, "SKIP", why)
            report.section_done(name, 0.0, expected, skipped=why)
            continue
        t = time.perf_counter()
        try:
            getattr(check, name.replace("-", "_"))()
        except Exception as err:
            report.add(name, name, "FAIL", reason(err))
        finally:
            check.release()
        report.section_done(name, time.perf_counter() - t, expected)


def reason(err: BaseException) -> str:
    """One line for a failure: the exception's type and the first line of its message."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300]}" if text else type(err).__name__


def record(report: Report, results: Path, describe: str) -> None:
    """Append the summary table to bench/RESULTS.md, in one write (a second run appends a second block)."""
    head = f"\n## gpu_check.py, {datetime.date.today()}\n\n{describe}\n\n"
    with open(results, "a") as fh:
        fh.write(head + "\n".join(report.table()) + "\n")
    report.say("record", f"appended to {results}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = pick_device(args.device)
    if isinstance(device, str):
        print(device, file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "logs").mkdir(exist_ok=True)
    names = [s for s in SECTIONS if s in args.sections and s not in args.skip]
    report = Report(args.out, meta={"device": str(device), "quick": args.quick, "budget_s": args.budget})
    with Logged(args.out / "gpu-check.log"):
        print(f"gpu-check: {datetime.datetime.now():%Y-%m-%d %H:%M:%S}, device {device}, sections {' '.join(names)}")
        # ignore_cleanup_errors: a file that cannot be removed must not turn the summary into a traceback
        with tempfile.TemporaryDirectory(prefix="vda-gpu-check-", ignore_cleanup_errors=True) as tmp:
            check = Check(args, device, Path(tmp), report)
            report.meta.update(environment(device, check.weights))
            run_sections(check, report, names, args.budget)
        if args.record:
            record(report, args.results, report.meta.get("describe", str(device)))
        report.write_json(finished=True)
        print("gpu-check: summary", *report.table(), sep="\n")
        print(f"{report.verdict()} ({report.elapsed():.0f} s; figures in {args.out / 'gpu-check.json'})", flush=True)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
