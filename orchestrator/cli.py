"""The `vda` command: plan, run-chunk, merge and the one-shot depth.

Every expected failure ends in one line `vda: error: <problem>; <fix>` and a non-zero exit;
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from orchestrator import doctor, tools_cli

EXIT_ERROR, EXIT_INTERRUPTED = 2, 130  # and EXIT_OUT_OF_MEMORY (4, vda.worker) when a device runs out of memory


def _positive(text: str) -> int:
    """argparse type for counts that must be at least 1 (a 0 would silently mean the default)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="path of a .pth file (default: the published one for --encoder/--metric)")
    p.add_argument(
        "--encoder",
        "--model-size",
        dest="encoder",
        choices=["vits", "vitb", "vitl"],
        help="encoder (default: inferred from --checkpoint, else vits)",
    )
    p.add_argument("--metric", action="store_true", help="use the metric-depth checkpoint")
    p.add_argument("--input-size", type=int, default=518, help="network input size (multiple of 14)")
    p.add_argument("--max-res", type=int, default=1280, help="downscale frames whose long side exceeds this; 0 keeps")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "fp16", "bf16"],
        help="auto (default): fp16 on each GPU, fp32 on each CPU; bf16 needs compute capability 8.0",
    )
    p.add_argument("--mode", choices=["window", "stream"], default="window")


def _device_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--devices", help="comma-separated devices, e.g. cpu,cpu or cuda:0,cuda:1")
    g.add_argument("--gpus", type=int, help="use the first N visible GPUs")
    g.add_argument("--gpu-ids", type=int, nargs="+", help="use these GPU ids")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vda", description="Video Depth Anything over long videos on many devices.")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plan", help="probe the input and split the work into chunks (RUN_DIR/plan.json)")
    p.add_argument("video", help="video file or folder of images (sorted by name)")
    p.add_argument("-o", "--run-dir", required=True)
    _device_flags(p)
    _model_flags(p)
    p.add_argument("--overwrite", action="store_true", help="replace a different run in RUN_DIR")

    p = sub.add_parser("run-chunk", help="compute one chunk of a plan (what each container runs)")
    p.add_argument("run_dir")
    p.add_argument("--chunk", type=int, required=True)
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: the plan's)")
    p.add_argument("--checkpoint", help="checkpoint path (default: resolved from the plan through models/)")
    p.add_argument("--input", help="where the planned input is now (e.g. inside a container); verified by hash")
    p.add_argument("--micro-batch", type=_positive, help="frames per encoder batch, to bound GPU memory")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the encoder (faster after the first window; needs a C compiler)",
    )

    p = sub.add_parser("merge", help="replay alignment and blending over the chunks; write one file per frame")
    p.add_argument("run_dir")
    p.add_argument("-o", "--out", required=True)
    p.add_argument("--format", choices=["png16", "png8", "npy", "npz", "exr"], default="png16")
    p.add_argument("--create-video", action="store_true", help="also write a colourised depth video")
    p.add_argument("--workers", type=int, help="merge processes (default: all CPU cores)")
    p.add_argument("--overwrite", action="store_true", help="replace another run's output in OUT")

    p = sub.add_parser("depth", help="plan, run every chunk in parallel, merge: the one-shot command")
    p.add_argument("video")
    p.add_argument("-o", "--out", required=True)
    p.add_argument("--run-dir", help="working folder (default: OUT/_run)")
    p.add_argument("--backend", choices=["local", "docker"], default="local")
    _device_flags(p)
    _model_flags(p)
    p.add_argument("--format", choices=["png16", "png8", "npy", "npz", "exr"], default="png16")
    p.add_argument("--create-video", action="store_true")
    p.add_argument("--retries", type=int, default=2, help="retries per failed chunk")
    p.add_argument("--overwrite", action="store_true", help="replace a different run in the output folder")
    p.add_argument("--image", default=None, help="docker backend: image (default vda:latest for GPUs, vda:cpu)")
    p.add_argument("--merge-workers", type=int)
    p.add_argument(
        "--micro-batch", type=_positive, help="frames per encoder batch in the workers (default 4); lower on OOM"
    )
    p.add_argument("--no-space-check", action="store_true", help="start even if the disks look too small")
    p.add_argument("--clean", action="store_true", help="delete the stored windows after a successful merge")
    p.add_argument(
        "--compile", action="store_true", help="workers torch.compile the encoder (needs a C compiler where they run)"
    )
    tools_cli.add_parsers(sub)
    doctor.add_parser(sub)
    return ap


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def _devices(args, backend: str = "local") -> list[str]:
    from orchestrator.planning import parse_devices

    needs_gpu = args.gpus is not None or args.gpu_ids is not None or "cuda" in (args.devices or "")
    visible = None
    if needs_gpu:
        if backend == "docker":
            from orchestrator.docker_backend import visible_gpus

            visible = visible_gpus()
        else:
            visible = _visible_gpus()
    return parse_devices(args.devices, args.gpus, args.gpu_ids, visible)


def _plan(args, run_dir, devices: list[str]):
    """create_plan from the model and device flags that `plan` and `depth` share."""
    from orchestrator.planning import create_plan

    return create_plan(
        args.video,
        run_dir,
        devices,
        checkpoint=args.checkpoint,
        encoder=args.encoder,
        metric=args.metric,
        input_size=args.input_size,
        max_res=args.max_res,
        precision=args.precision,
        mode=args.mode,
        overwrite=args.overwrite,
    )


def cmd_plan(args) -> int:
    plan, resumed = _plan(args, args.run_dir, _devices(args))
    word = "kept existing" if resumed else "wrote"
    print(f"{word} {Path(args.run_dir) / 'plan.json'}: {plan.frame_count} frames, {len(plan.chunks)} chunk(s)")
    return 0


def cmd_run_chunk(args) -> int:
    import torch

    from vda.worker import run_chunk

    if os.environ.get("VDA_THREADS"):
        torch.set_num_threads(int(os.environ["VDA_THREADS"]))
    run_chunk(
        args.run_dir,
        args.chunk,
        device=args.device,
        checkpoint=args.checkpoint,
        input_path=args.input,
        micro_batch=args.micro_batch,
        compile=args.compile,
    )
    return 0


def cmd_merge(args) -> int:
    from vda.merge import merge

    merge(
        args.run_dir,
        args.out,
        args.format,
        create_video=args.create_video,
        workers=args.workers,
        overwrite=args.overwrite,
    )
    return 0


def cmd_depth(args) -> int:
    from orchestrator.scheduler import Progress, run_chunks
    from vda.merge import discard_results, follow, merge

    out = Path(args.out)
    run_dir = Path(args.run_dir) if args.run_dir else out / "_run"
    _check_writable(out)
    devices = _devices(args, args.backend)
    plan, resumed = _plan(args, run_dir, devices)
    need = ""
    if not args.no_space_check:
        from orchestrator.space import check_space, human_size

        space = check_space(plan, run_dir, out, args.format)
        need = f", needs about {human_size(space.run_bytes + space.out_bytes)} of disk"
    print(
        f"vda: {'resuming' if resumed else 'planned'} {plan.frame_count} frames in {len(plan.chunks)} chunk(s) "
        f"on {', '.join(devices)} ({args.backend}); run folder {run_dir}{need}",
        file=sys.stderr,
    )
    if args.backend == "docker":
        from orchestrator.docker_backend import DockerBackend

        backend = DockerBackend(
            plan,
            run_dir,
            image=args.image,
            checkpoint=args.checkpoint,
            micro_batch=args.micro_batch,
            compile=args.compile,
        )
    else:
        from orchestrator.local import LocalBackend

        backend = LocalBackend(checkpoint=args.checkpoint, micro_batch=args.micro_batch, compile=args.compile)
    if args.compile:
        backend.check_compiler()  # one line now, rather than every worker failing alike
    # The merge's sequential first pass follows the workers in a thread here, so little of it is left at the end.
    stop = threading.Event()
    follower = threading.Thread(target=follow, args=(run_dir, stop), name="vda-first-pass", daemon=True)
    follower.start()
    try:
        try:
            run_chunks(plan, run_dir, backend, devices, retries=args.retries, progress=Progress(plan))
        finally:
            stop.set()
            follower.join()
        if args.backend == "docker":
            backend.merge(out, args.format, args.create_video, args.overwrite)
        else:
            merge(
                run_dir,
                out,
                args.format,
                create_video=args.create_video,
                workers=args.merge_workers,
                overwrite=args.overwrite,
            )
    finally:
        if hasattr(backend, "close"):
            backend.close()
    if args.clean:  # only after a successful merge: the windows are what a re-merge or a resume would need
        discard_results(run_dir)
    return 0


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".vda_write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise OSError(f"output folder {out} is not writable ({err.strerror}); choose another -o") from None


COMMANDS = {"plan": cmd_plan, "run-chunk": cmd_run_chunk, "merge": cmd_merge, "depth": cmd_depth, **tools_cli.COMMANDS}
COMMANDS["doctor"] = doctor.cmd_doctor


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("\nvda: interrupted; every worker was stopped. Run the same command again to resume.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        if args.debug or not _expected(err):
            raise
        print(f"vda: error: {str(err).strip()}", file=sys.stderr)
        from vda.worker import EXIT_OUT_OF_MEMORY, DeviceOutOfMemory

        return EXIT_OUT_OF_MEMORY if isinstance(err, DeviceOutOfMemory) else EXIT_ERROR


def _expected(err: Exception) -> bool:
    from models import WeightsError
    from orchestrator.scheduler import RunFailed
    from vda.inference import FrameError, NonFiniteDepth
    from vda.model import CheckpointError
    from vda.plan import PlanError
    from vda.video import VideoError
    from vda.worker import DeviceOutOfMemory, InjectedFault

    known = (
        WeightsError,
        RunFailed,
        FrameError,
        CheckpointError,
        PlanError,
        VideoError,
        OSError,
        ValueError,
        InjectedFault,
        DeviceOutOfMemory,
        NonFiniteDepth,
    )
    extra = ()
    try:
        from orchestrator.docker_backend import DockerError

        extra = (DockerError,)
    except ImportError:
        pass
    return isinstance(err, known + extra)


if __name__ == "__main__":
    sys.exit(main())
