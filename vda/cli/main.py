"""The `vda` command: plan, work (a device worker), merge, the one-shot depth, and the analysis commands.

The error contract (vda.errors): a `VdaError` ends in one line `vda: error: <problem>; <fix>` and its exit code (2,
or 4 for out of memory). Any other exception is a bug: one `vda: error: this is a bug in vda (...)` line, exit 70,
with its traceback on stderr under `--debug` and always in the run's log (vda.logs). Settings are read once
(vda.config) before any command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from pathlib import Path

from vda import api, config, logs
from vda.cli import doctor, export, tools
from vda.cli import report as report_cli
from vda.core.plan import MODES, PLAN_NAME, PRECISION_CHOICES
from vda.errors import EXIT_BUG, EXIT_ERROR, EXIT_INTERRUPTED, UsageError, VdaError, one_line
from vda.io.rundir import RunDir
from vda.io.writers import FORMATS, VIDEO_KINDS, parse_output_size
from vda.model.registry import ENCODERS

FORMAT_CHOICES = list(FORMATS)
log = logging.getLogger(__name__)


def _at_least(low: int):
    """argparse type for counts that must be at least `low` (a 0 where 1 is the least would silently mean the
    default, a negative count means nothing)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


_positive = _at_least(1)


def _output_size(text: str) -> str:
    try:
        return parse_output_size(text)
    except UsageError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _png_scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of metres per step (0.001: millimetres)")
    return value


def _output_flags(p: argparse.ArgumentParser) -> None:
    """What the merge writes: format, size, png scale, preview video (`vda depth` and `vda merge`)."""
    p.add_argument("--format", choices=FORMAT_CHOICES, default="png16", help="npy-stack: one [N,H,W] float32 file")
    p.add_argument(
        "--output-size",
        type=_output_size,
        default="source",
        help="source (the frame's size after --max-res), net (the network's, no upsampling: the cheapest) or WxH",
    )
    p.add_argument(
        "--png-scale",
        type=_png_scale,
        help="metric png at a fixed scale, metres per step (0.001: millimetres, up to 65.535 m in png16)",
    )
    p.add_argument(
        "--create-video",
        nargs="?",
        const=VIDEO_KINDS[0],
        choices=VIDEO_KINDS,
        help="also write depth_vis.mp4: colourised depth, or side-by-side with the RGB frames",
    )


def _model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="path of a .pth file (default: the published one for --encoder/--metric)")
    p.add_argument(
        "--encoder",
        "--model-size",
        dest="encoder",
        choices=ENCODERS,
        help="encoder (default: inferred from --checkpoint, else vits)",
    )
    p.add_argument("--metric", action="store_true", help="use the metric-depth checkpoint")
    p.add_argument("--input-size", type=int, default=518, help="network input size (multiple of 14)")
    p.add_argument("--max-res", type=int, default=1280, help="downscale frames whose long side exceeds this; 0 keeps")
    p.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        help="auto (default): fp16 on each GPU, fp32 on each CPU; bf16 needs compute capability 8.0",
    )
    p.add_argument("--mode", choices=MODES, default="window")
    p.add_argument(
        "--unit-size",
        type=_positive,
        help="work per queue unit: windows in window mode (default 8, 176 frames), frames in stream mode (default 400)",
    )


def _device_flags(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--devices", help="comma-separated devices, e.g. cpu,cpu or cuda:0,cuda:1")
    g.add_argument("--gpus", type=int, help="use the first N visible GPUs")
    g.add_argument("--gpu-ids", type=int, nargs="+", help="use these GPU ids")


def _diagnostic_flags(p: argparse.ArgumentParser, default=False) -> None:
    """-v and --debug, before the command or after it (a subcommand's SUPPRESS default keeps the first's value)."""
    p.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="log what vda does (stderr and the run's log)"
    )
    p.add_argument("--debug", action="store_true", default=default, help="log everything, and show tracebacks")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vda", description="Video Depth Anything over long videos on many devices.")
    _diagnostic_flags(ap)
    sub = ap.add_subparsers(dest="command", required=True)
    _plan_parser(sub)
    _work_parser(sub)
    _merge_parser(sub)
    _depth_parser(sub)
    tools.add_parsers(sub)
    export.add_parsers(sub)
    doctor.add_parser(sub)
    report_cli.add_parser(sub)
    for p in {id(p): p for p in sub.choices.values()}.values():  # an alias names the same parser
        _diagnostic_flags(p, argparse.SUPPRESS)
    return ap


def _plan_parser(sub) -> None:
    p = sub.add_parser("plan", help="probe the input and cut it into queue units (RUN_DIR/plan.json)")
    p.add_argument("video", help="video file or folder of images (sorted by name)")
    p.add_argument("-o", "--run-dir", required=True)
    _device_flags(p, required=False)  # only to refuse fp16 with a CPU among them: a plan does not depend on devices
    _model_flags(p)
    p.add_argument("--overwrite", action="store_true", help="replace a different run in RUN_DIR")


def _work_parser(sub) -> None:
    p = sub.add_parser("work", help="a device worker: compute queue units (what each worker process or container runs)")
    p.add_argument(
        "run_dirs",
        nargs="*",
        metavar="RUN_DIR",
        help="compute every unfinished unit of these run folders here; without any, take units from the host on stdin",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--slot", type=int, default=0, help="this worker's number in the run (for its log and tests)")
    p.add_argument("--checkpoint", help="checkpoint path (default: resolved from the plan through models/)")
    p.add_argument("--input", help="RUN_DIR: where the planned input is now (e.g. in a container); verified by hash")
    p.add_argument("--micro-batch", type=_positive, help="frames per encoder batch, to bound GPU memory")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the encoder (faster after the first window; needs a C compiler)",
    )
    _runtime_flag(p)


def _merge_parser(sub) -> None:
    p = sub.add_parser("merge", help="replay alignment and blending over the stored windows; write one file per frame")
    p.add_argument("run_dir")
    p.add_argument("-o", "--out", required=True)
    _output_flags(p)
    p.add_argument("--input", help="side-by-side: where the planned input is now (default: the plan's path)")
    p.add_argument("--workers", type=_positive, help="merge processes (default: all CPU cores)")
    p.add_argument("--overwrite", action="store_true", help="replace another run's output in OUT")


def _depth_parser(sub) -> None:
    p = sub.add_parser("depth", help="plan, compute every unit on the devices, merge: the one-shot command")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="video files, folders of images, folders of videos")
    p.add_argument("-o", "--out", required=True, help="output folder (several inputs: OUT/<name> each)")
    p.add_argument("--run-dir", help="working folder (default: OUT/_run)")
    p.add_argument("--backend", choices=sorted(api.BACKENDS), default="local")
    p.add_argument(
        "--ray-address",
        help="ray backend: the cluster, auto (one started on this machine) or HOST:PORT (default: a private local Ray)",
    )
    _device_flags(p, required=False)  # none: --backend ray takes every GPU of its cluster, the others refuse
    _model_flags(p)
    _output_flags(p)
    p.add_argument("--retries", type=_at_least(0), default=2, help="retries per failed unit, then its video fails")
    p.add_argument("--overwrite", action="store_true", help="replace a different run in the output folder")
    p.add_argument("--image", default=None, help="docker backend: image (default vda:latest for GPUs, vda:cpu)")
    p.add_argument("--merge-workers", type=_positive, help="merge processes per video (default: all CPU cores)")
    p.add_argument(
        "--micro-batch", type=_positive, help="frames per encoder batch in the workers (default 4); lower on OOM"
    )
    p.add_argument("--no-space-check", action="store_true", help="start even if the disks look too small")
    p.add_argument("--clean", action="store_true", help="delete the stored windows after a successful merge")
    p.add_argument(
        "--compile", action="store_true", help="workers torch.compile the encoder (needs a C compiler where they run)"
    )
    _runtime_flag(p)


def _runtime_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--runtime",
        choices=api.RUNTIMES,
        default="torch",
        help="what computes the network: torch, or onnx (ONNX Runtime; graphs exported once per size, docs/onnx.md)",
    )


def _devices(args, backend: str = "local") -> list[str]:
    address = getattr(args, "ray_address", None)  # `vda plan` has no backend, so no cluster
    return api.resolve_devices(api.backend_class(backend), args.devices, args.gpus, args.gpu_ids, address)


def cmd_plan(args) -> int:
    from vda.orchestrator.planning import check_precision, create_plan

    given = args.devices is not None or args.gpus is not None or args.gpu_ids is not None
    devices = _devices(args) if given else []
    with logs.run_log(RunDir(Path(args.run_dir)).host_log):
        plan, resumed = create_plan(
            args.video,
            args.run_dir,
            checkpoint=args.checkpoint,
            encoder=args.encoder,
            metric=args.metric,
            input_size=args.input_size,
            max_res=args.max_res,
            precision=check_precision(args.precision, devices),
            mode=args.mode,
            unit_size=args.unit_size,
            overwrite=args.overwrite,
        )
    word = "kept existing" if resumed else "wrote"
    print(f"{word} {Path(args.run_dir) / 'plan.json'}: {plan.frame_count} frames, {len(plan.units)} unit(s)")
    return 0


def cmd_work(args) -> int:
    from vda.device.serve import serve_stdin, work_runs
    from vda.system import keep_freed_memory, limit_threads

    threads = config.current().threads
    if threads:
        limit_threads(threads)
    keep_freed_memory()  # decoded frames and pieces come and go by the thousand: reuse their memory
    api.check_runtime(args.runtime, args.compile)
    options = {"checkpoint": args.checkpoint, "micro_batch": args.micro_batch, "compile": args.compile}
    options["runtime"] = args.runtime
    if args.run_dirs:
        work_runs(args.run_dirs, args.device, input_path=args.input, slot=args.slot, **options)
    else:
        serve_stdin(args.device, slot=args.slot, **options)
    return 0


def cmd_merge(args) -> int:
    from vda.merge import merge

    run = RunDir(Path(args.run_dir))
    # a mistyped RUN_DIR is refused by merge, and gets no logs/ folder made for it
    with logs.run_log(run.host_log) if (run.path / PLAN_NAME).is_file() else contextlib.nullcontext():
        merge(
            args.run_dir,
            args.out,
            args.format,
            create_video=args.create_video or False,
            workers=args.workers,
            overwrite=args.overwrite,
            output_size=args.output_size,
            png_scale=args.png_scale,
            input_path=args.input,
        )
    return 0


# `vda depth` flags that are DepthRequest fields of the same name (the rest: below, in cmd_depth).
REQUEST_FLAGS = (
    "checkpoint", "encoder", "metric", "input_size", "max_res", "precision", "mode", "unit_size", "format",
    "retries", "overwrite", "merge_workers", "clean", "micro_batch", "compile", "runtime", "output_size", "png_scale",
)  # fmt: skip


def cmd_depth(args) -> int:
    from vda.orchestrator.batch import run_depth

    out = Path(args.out)
    api.check_writable(out)
    devices = _devices(args, args.backend)
    request = api.depth_request(
        args.inputs,
        out,
        devices,
        run_dir=Path(args.run_dir) if args.run_dir else None,
        create_video=args.create_video or False,
        space_check=not args.no_space_check,
        **{name: getattr(args, name) for name in REQUEST_FLAGS},
    )
    backend = api.backend_class(args.backend)(devices, request.options, args.image, args.ray_address)
    return run_depth(request, backend)


COMMANDS = {"plan": cmd_plan, "work": cmd_work, "merge": cmd_merge, "depth": cmd_depth, **tools.COMMANDS}
COMMANDS["doctor"] = doctor.cmd_doctor
COMMANDS["report"] = report_cli.cmd_report
COMMANDS.update(export.COMMANDS)


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        logs.setup(config.load(verbose=args.verbose, debug=args.debug))
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("\nvda: interrupted; every worker was stopped. Run the same command again to resume.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except VdaError as err:
        log.debug("failed: %s", err, exc_info=True)
        print(f"vda: error: {one_line(err)}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        if not err.filename:
            return _bug(err, args.debug or args.command == "work")
        # a path the user gave or we made from one: unreadable, unwritable, missing (the OS's words, our fix)
        log.debug("failed: %s", err, exc_info=True)
        print(f"vda: error: {err.filename}: {err.strerror}; check the path and its permissions", file=sys.stderr)
        return EXIT_ERROR
    except Exception as err:  # not one of ours: a bug, whatever it says
        # A worker's stderr is its log (RUN_DIR/logs/worker_<slot>.log): the traceback goes there, whatever the flags.
        return _bug(err, args.debug or args.command == "work")


def _bug(err: Exception, debug: bool) -> int:
    log.error("bug: %s: %s", type(err).__name__, err, exc_info=err, extra={logs.QUIET: not debug})
    print(f"vda: error: {bug_line(err, debug)}", file=sys.stderr)
    return EXIT_BUG


def bug_line(err: BaseException, debug: bool) -> str:
    """The line for an exception that is not a VdaError: short, and where to find the traceback."""
    where = "the traceback is above" if debug else "rerun with --debug for the traceback"
    if logs.last_run_log():
        where += f" (also in {logs.last_run_log()})"
    what = one_line(err)
    what = what if len(what) <= 200 else what[:197] + "..."
    return f"this is a bug in vda ({type(err).__name__}: {what}); {where}, and please report it"


if __name__ == "__main__":
    sys.exit(main())
