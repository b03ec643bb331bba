"""Torch against ONNX Runtime on the CPU for one window: ms per frame, peak memory, and the export's own time.

    python bench/bench_onnx.py [--encoder vits --net-size 924x518 --repeats 1 --record]

1. `vda export onnx` of synthetic weights at the network size (every graph, each checked against torch): wall time
   and the exporting process's peak RSS.
2. One window [1, 32, 3, H, W] of random frames through torch's forward (fp32, inference mode), then through ONNX
   Runtime's CPU provider on window.onnx, each in its own process (so that each peak RSS, the kernel's high-water
   mark, is its own): the best of --repeats runs in ms per frame, after one untimed run. Both use --threads threads.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from bench_infer import append_results, synthetic_checkpoint  # noqa: E402

from vda.core.stitch import WINDOW  # noqa: E402
from vda.model.onnx_graphs import GRAPHS  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def frames(h: int, w: int):
    import torch

    return torch.randn(1, WINDOW, 3, h, w, generator=torch.Generator().manual_seed(0))


def timed(run, repeats: int, warmup: int) -> float:
    """Best wall seconds of `repeats` runs after `warmup` untimed ones (allocators and thread pools warm)."""
    for _ in range(warmup):
        run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def child_torch(args) -> dict:
    import torch

    from vda.model.network import load_model

    torch.set_num_threads(args.threads)
    model = load_model(args.checkpoint)
    x = frames(args.h, args.w)
    with torch.inference_mode():
        seconds = timed(lambda: model(x), args.repeats, args.warmup)
    return {"ms_per_frame": 1000 * seconds / WINDOW, "peak_rss_mb": peak_rss_mb()}


def child_ort(args) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    options.enable_cpu_mem_arena = False  # one window per run: the arena's rounding up only adds to the peak
    session = ort.InferenceSession(str(args.folder / "window.onnx"), options, providers=["CPUExecutionProvider"])
    x = frames(args.h, args.w).numpy()
    seconds = timed(lambda: session.run(None, {"frames": x}), args.repeats, args.warmup)
    return {"ms_per_frame": 1000 * seconds / WINDOW, "peak_rss_mb": peak_rss_mb()}


def child_export(args) -> dict:
    from vda.model.onnx_export import export_onnx

    start = time.perf_counter()
    graphs = tuple(args.graphs.split(","))
    result = export_onnx(args.checkpoint, args.folder, shape=(args.h, args.w), overwrite=True, graphs=graphs)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "seconds": time.perf_counter() - start,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "graphs": args.graphs,
        "peak_rss_mb": peak_rss_mb(),
        "errors": result.meta["check"]["max_relative_error"],
        "stream": result.meta["stream"],
    }


def in_child(what: str, args) -> dict:
    """Run child `what` in a fresh process at the same settings; its JSON result."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        what,
        "--checkpoint",
        str(args.checkpoint),
        "--folder",
        str(args.folder),
    ]
    cmd += ["--net-size", f"{args.w}x{args.h}", "--threads", str(args.threads), "--repeats", str(args.repeats)]
    cmd += ["--warmup", str(args.warmup), "--graphs", args.graphs]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:  # a negative code is a signal: SIGKILL (-9) is the kernel's OOM killer
        raise SystemExit(f"{what} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{what}: {result}", flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", default="vits")
    ap.add_argument("--net-size", default="924x518", help="WxH, multiples of 14")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    ap.add_argument("--graphs", default=",".join(GRAPHS), help="graphs the export makes and checks")
    ap.add_argument("--record", action="store_true", help="append the figures to bench/RESULTS.md")
    ap.add_argument("--child", choices=("torch", "ort", "export"), help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--folder", type=Path, help="an export to reuse (default: export one now, into a temp folder)")
    args = ap.parse_args()
    args.w, args.h = (int(v) for v in args.net_size.split("x"))
    if args.child:
        print(json.dumps({"torch": child_torch, "ort": child_ort, "export": child_export}[args.child](args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        args.checkpoint = synthetic_checkpoint(Path(tmp), args.encoder)
        export = None
        if args.folder is None:
            args.folder = Path(tmp) / "export"
            export = in_child("export", args)
        torch_row, ort_row = in_child("torch", args), in_child("ort", args)
    report(args, export, torch_row, ort_row)


def report(args, export: dict | None, torch_row: dict, ort_row: dict) -> None:
    speed = torch_row["ms_per_frame"] / ort_row["ms_per_frame"]
    memory = ort_row["peak_rss_mb"] / torch_row["peak_rss_mb"]
    rows = [
        ("torch forward", f"{torch_row['ms_per_frame']:.0f}", f"peak RSS {torch_row['peak_rss_mb']:.0f} MB"),
        ("ONNX Runtime, window.onnx", f"{ort_row['ms_per_frame']:.0f}", f"peak RSS {ort_row['peak_rss_mb']:.0f} MB"),
        ("torch / ONNX Runtime", f"{speed:.2f}x", f"ONNX Runtime is {'faster' if speed > 1 else 'not faster'}; "
         f"its peak RSS is {memory:.2f}x torch's"),
    ]  # fmt: skip
    if export:
        worst = max(export["errors"].values())
        note = f"graphs {export['graphs']}, each checked (max error {worst:.1e} of the range)"
        cost = f"{export['cpu_seconds']:.0f} CPU s; peak RSS {export['peak_rss_mb']:.0f} MB"
        rows.append(("export + check (wall s)", f"{export['seconds']:.0f}", f"{note}; {cost}"))
    for name, value, note in rows:
        print(f"{name:28} {value:>8}  {note}")
    if args.record:
        setup = (
            f"{args.encoder} fp32, synthetic weights, one window [1, 32, 3, {args.h}, {args.w}] of random frames, "
            f"{args.threads} threads each, best of {args.repeats} after {args.warmup} warm-up run(s); load average "
            f"{os.getloadavg()[0]:.1f} at the end (the machine is shared)."
        )
        append_results("bench_onnx.py", setup, ("figure", "ms per frame", "note"), rows)


if __name__ == "__main__":
    main()
