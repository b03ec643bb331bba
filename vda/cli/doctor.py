"""`vda doctor`: the first command on a new GPU host, before `make depth` spends minutes building an image.

One line per check (vda.orchestrator.host_checks, vda.orchestrator.capacity):

    ✓ <what>            fine
    ✗ <what>; <fix>     `make depth` would fail (or, for the host's cores, crawl); the fix is ours, one line
    - <what>            information only (no GPU on this host, an optional checkpoint that is absent)

The exit code is 0 when nothing is ✗, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from vda.errors import UsageError
from vda.io.writers import FORMATS
from vda.model.registry import ENCODERS
from vda.orchestrator.capacity import check_cores, check_disk, video_plan
from vda.orchestrator.host_checks import (
    GPU_IMAGE,
    Check,
    Options,
    Probes,
    check_checkpoint,
    check_compose,
    check_cuda,
    check_engine,
    check_gpu_runtime,
    check_gpus,
    query_gpus,
)


def checks(opts: Options, p: Probes, debug: bool = False) -> Iterator[Check]:
    """Every check in order, each as soon as it is known (a `docker run` can take seconds).

    A check that breaks unexpectedly becomes one ✗ line of its own and the others still run (--debug: the traceback).
    """

    def guard(name: str, fn: Callable, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            if debug:
                raise
            return Check(
                name, False, f"the check itself failed ({type(err).__name__})", "rerun with --debug to see why"
            )

    engine = guard("Docker engine", check_engine, p)
    yield engine
    yield guard("Docker Compose", check_compose, p, engine)
    gpus = guard("GPUs", query_gpus, p)
    if isinstance(gpus, Check):
        yield gpus
        gpus = None
    else:
        yield guard("NVIDIA container runtime", check_gpu_runtime, p, gpus, engine, opts.image)
        yield guard("GPUs", check_gpus, gpus, opts.gpus)
    yield guard("CUDA driver vs torch", check_cuda, p, gpus, opts.image, engine)
    for metric in sorted({False, opts.metric}):
        for encoder in ENCODERS:
            required = (encoder, metric) == (opts.encoder, opts.metric)
            label = f"{'metric ' if metric else ''}{encoder} checkpoint"
            yield guard(label, check_checkpoint, encoder, metric, required)
    n_gpus = opts.gpus or len(gpus or [])
    plan = guard("disk", video_plan, opts, n_gpus) if opts.video else None
    if plan is None:
        yield Check("disk", None, "not checked: give --video PATH (and -o OUT) to compare a run's size with free space")
    elif isinstance(plan, Check):
        yield plan
        plan = None
    else:
        yield guard("disk", check_disk, p, plan, opts)
    s, info = (plan[0].settings, plan[0].input) if plan else (None, None)
    sizes = ((info.width, info.height), (s.frame_width, s.frame_height), (s.net_width, s.net_height)) if s else None
    yield guard("CPU cores", check_cores, p, n_gpus, opts.fmt, sizes)


def doctor(opts: Options, p: Probes | None = None, out=None, debug: bool = False) -> int:
    """Print one line per check; 0 when nothing failed, 1 otherwise."""
    failed = False
    for check in checks(opts, p or Probes(), debug):
        failed |= check.ok is False
        print(check.line(), file=out or sys.stdout, flush=True)
    return 1 if failed else 0


def add_parser(sub) -> None:
    """The `doctor` subparser, for vda.cli.main."""
    p = sub.add_parser(
        "doctor",
        help="check this host for make depth: Docker, NVIDIA runtime, GPUs and CUDA, checkpoints, disk, cores",
        description="One line per check: ✓ fine, ✗ what fails and the fix, - information. Exit 0 when nothing "
        "fails, 1 otherwise.",
    )
    p.add_argument("--gpus", type=int, help="GPUs you will use: then a missing GPU fails (default: GPUs only inform)")
    p.add_argument("--encoder", choices=ENCODERS, default="vits", help="the checkpoint that must exist")
    p.add_argument("--metric", action="store_true", help="also check the metric checkpoints (and require --encoder's)")
    p.add_argument("--video", type=Path, help="compare what a run on this video writes with the free disk space")
    p.add_argument("-o", "--out", type=Path, help="output folder for --video (default: make depth's out/<video>)")
    p.add_argument("--format", dest="fmt", choices=list(FORMATS), default="png16")
    p.add_argument(
        "--image", default=GPU_IMAGE, help=f"GPU image whose torch CUDA build is checked (default {GPU_IMAGE})"
    )


def cmd_doctor(args: argparse.Namespace) -> int:
    if args.gpus is not None and args.gpus < 1:
        raise UsageError(f"--gpus must be at least 1, got {args.gpus}")
    opts = Options(args.gpus, args.encoder, args.metric, args.video, args.out, args.fmt, args.image)
    return doctor(opts, debug=getattr(args, "debug", False))
