"""Frames/s and peak VRAM per encoder, precision and mode on a GPU, next to the authors' published figures.

    python bench/bench_gpu.py [--encoders vits vitb vitl] [--precisions fp16 bf16] [--frames 128] [--record]

For each encoder and precision it measures:
- the forward of one [1, 32, 3, 518, 518] window, as the authors' README measures it (A100), in ms per frame, and
  its peak VRAM;
- `infer_video` in window mode and in stream mode over synthetic 1920x1080 frames at input size 518: frames/s end
  to end (preprocess, model, alignment, upsampling to 1080p) and peak VRAM, with the default micro-batch;
- the peak VRAM of window mode on 518x518 frames, the authors' shape (the goal: under 4 GB for vits in fp16,
  where their forward needs 6.8 GB).
Peak VRAM is torch's peak allocation, weights included; nvidia-smi shows a few hundred MB more (CUDA context).
Weights are the synthetic ones (speed and memory do not depend on their values). `--device cpu` with a small
`--input-size` runs the same code without a GPU, as the test suite does to keep this script working.
A row that runs out of GPU memory (vitl in fp32 on a small GPU) is printed as OOM and the table goes on.
The measuring functions are shared with `gpu_check.py` (`make gpu-check`), so both print the same table.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from bench_infer import sliding_frames, synthetic_state

from vda.device.runtime import PRECISIONS
from vda.device.runtime_torch import TorchNetwork
from vda.device.single_pass import infer_video
from vda.model.network import load_model

ROOT = Path(__file__).resolve().parents[1]
# The authors' README: one A100, input 1 x 32 x 518 x 518; latency in ms (per frame), VRAM in GB.
PUBLISHED = {
    ("vits", "fp32"): (9.1, 7.3),
    ("vits", "fp16"): (7.5, 6.8),
    ("vitl", "fp32"): (67.0, 26.7),
    ("vitl", "fp16"): (14.0, 23.6),
}
OOM = "OOM"  # the cell of a figure that ran out of GPU memory
ERROR = "error"  # the cell of a figure whose measurement failed otherwise (only when the caller collects errors)
SQUARE = 518  # the authors' frame shape for the VRAM goal
SQUARE_COLUMN = "window 518x518 peak GiB"


def synced(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def free(device: torch.device) -> None:
    """Give back what a failed row held, so that the next row starts from the same memory as the others.

    Called after the except block has ended: the traceback keeps the failed frames' tensors alive until then.
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def gib(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def forward_ms(model, device: torch.device, precision: str, size: int, repeats: int) -> tuple[float, float | None]:
    """(ms per frame, peak GiB) of model(x) for x [1, 32, 3, size, size], under autocast as the CLI runs it."""
    x = torch.randn(1, 32, 3, size, size, device=device)
    with (
        torch.inference_mode(),
        TorchNetwork(model, device).autocast(precision),
    ):  # as infer_video runs it (fp32: no TF32)
        model(x)  # warm-up: kernels, cuDNN autotuning
        reset_peak(device)
        t = synced(device)
        for _ in range(repeats):
            model(x)
        seconds = (synced(device) - t) / repeats
    return seconds / 32 * 1000, peak_gib(device)


def video_fps(
    model, device, precision: str, mode: str, frames: list[np.ndarray], size: int
) -> tuple[float, float | None]:
    """(frames/s, peak GiB) of infer_video over `frames`, after one short warm-up run."""

    def run(clip) -> int:
        return sum(1 for _ in infer_video(model, clip, input_size=size, mode=mode, precision=precision, device=device))

    run(frames[:8])
    reset_peak(device)
    t = synced(device)
    n = run(frames)
    return n / (synced(device) - t), peak_gib(device)


def header(modes: list[str]) -> list[str]:
    cells = ["encoder", "precision", "forward ms/frame", "forward peak GiB", "published (A100)"]
    for mode in modes:
        cells += [f"{mode} frames/s", f"{mode} peak GiB"]
    return [*cells, SQUARE_COLUMN]


def published_cell(encoder: str, precision: str, input_size: int) -> str:
    published = PUBLISHED.get((encoder, precision)) if input_size == 518 else None
    return f"{published[0]:.1f} ms, {published[1]:.1f} GB" if published else "-"


def measure_row(
    model,
    device: torch.device,
    encoder: str,
    precision: str,
    frames: list[np.ndarray],
    input_size: int,
    modes: list[str],
    repeats: int,
) -> list[str]:
    """One table row: the forward, infer_video per mode over `frames`, and window mode on 518x518 crops."""
    ms, fwd_gib = forward_ms(model, device, precision, input_size, repeats)
    cells = [encoder, precision, f"{ms:.2f}", gib(fwd_gib), published_cell(encoder, precision, input_size)]
    for mode in modes:
        fps, peak = video_fps(model, device, precision, mode, frames, input_size)
        cells += [f"{fps:.1f}", gib(peak)]
    square = [np.ascontiguousarray(f[:SQUARE, :SQUARE]) for f in frames[:40]]
    cells.append(gib(video_fps(model, device, precision, "window", square, input_size)[1]))
    return cells


def failed_row(encoder: str, precision: str, input_size: int, modes: list[str], word: str) -> list[str]:
    """A row whose figures are all `word` (OOM, error); the published figures stay, for comparison."""
    cells = [encoder, precision, word, word, published_cell(encoder, precision, input_size)]
    return cells + [word] * (len(header(modes)) - len(cells))


def table_rows(
    device: torch.device,
    encoders: list[str],
    precisions: list[str],
    modes: list[str],
    frames: list[np.ndarray],
    input_size: int,
    repeats: int,
    *,
    on_row: Callable[[list[str]], None] | None = None,
    errors: list[str] | None = None,
) -> list[list[str]]:
    """Every (encoder, precision) row; a CUDA out-of-memory row is printed as OOM and the next row goes on.

    Other failures propagate, unless `errors` is given: then the row reads `error`, its reason is appended to
    `errors` and the table goes on (gpu_check.py wants every row it can get from a one-off GPU session).
    """
    rows = []
    for enc in encoders:
        model, oom = None, False
        try:
            model = load_model(synthetic_state(enc), encoder=enc, device=device)
        except torch.cuda.OutOfMemoryError:
            oom = True
        for prec in precisions:
            failed = OOM if oom else None
            if model is not None:
                try:
                    cells = measure_row(model, device, enc, prec, frames, input_size, modes, repeats)
                except torch.cuda.OutOfMemoryError:
                    failed = OOM
                except Exception as err:
                    if errors is None:
                        raise
                    errors.append(f"{enc} {prec}: {type(err).__name__}: {str(err).strip()[:200]}")
                    failed = ERROR
            if failed:
                free(device)
                cells = failed_row(enc, prec, input_size, modes, failed)
            rows.append(cells)
            if on_row:
                on_row(cells)
        del model
        free(device)
        reset_peak(device)
    return rows


def markdown(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoders", nargs="+", default=["vits", "vitb", "vitl"])
    ap.add_argument("--precisions", nargs="+", default=["fp16", "bf16"], choices=list(PRECISIONS))
    ap.add_argument("--modes", nargs="+", default=["window", "stream"], choices=["window", "stream"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--input-size", type=int, default=518)
    ap.add_argument("--frames", type=int, default=128, help="synthetic 1920x1080 frames per infer_video run")
    ap.add_argument("--repeats", type=int, default=5, help="timed forwards per figure")
    ap.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(
            "bench_gpu.py: no CUDA GPU here; run it on a GPU host (or pass --device cpu --input-size 56 to try it)"
        )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, input size {args.input_size}", flush=True)
    frames = list(sliding_frames(args.frames, 1920, 1080, shift=9))
    rows = table_rows(
        device,
        args.encoders,
        args.precisions,
        args.modes,
        frames,
        args.input_size,
        args.repeats,
        on_row=lambda cells: print("  ".join(cells), flush=True),
    )
    table = markdown(header(args.modes), rows)
    print("\n".join(table))
    if args.record:
        head = (
            f"\n## bench_gpu.py, {datetime.date.today()}, commit {commit()}\n\n"
            f"Device {name}, torch {torch.__version__}. Forward: [1, 32, 3, {args.input_size}, {args.input_size}]. "
            f"infer_video: {args.frames} frames 1920x1080, input size {args.input_size}.\n"
        )
        with open(ROOT / "bench" / "RESULTS.md", "a") as fh:
            fh.write(head + "\n" + "\n".join(table) + "\n")


if __name__ == "__main__":
    main()
