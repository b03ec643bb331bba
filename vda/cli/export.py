"""`vda export onnx -o DIR`: the model as ONNX graphs at one network size (subparser for vda.cli.main).

The checkpoint is chosen as `vda depth` chooses it (--checkpoint, --encoder, --metric); the network size is the
planner's for a frame of aspect W:H at --input-size (vda.core.preprocess.network_shape, what `vda plan` writes as
net_width x net_height), or given as --net-size WxH. What is written: vda.model.onnx_export; docs/onnx.md.
"""

from __future__ import annotations

import argparse
import sys

from vda.model.registry import ENCODERS


def _pair(separator: str, example: str):
    """argparse type for two positive whole numbers `A<separator>B`, returned as (A, B)."""

    def parse(text: str) -> tuple[int, int]:
        try:
            a, b = (int(v) for v in text.lower().split(separator))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not of the form {example}") from None
        if a <= 0 or b <= 0:
            raise argparse.ArgumentTypeError(f"{text!r}: both numbers must be positive, e.g. {example}")
        return a, b

    return parse


def add_parsers(sub) -> None:
    """Add `export` (with its one format, `onnx`) to an argparse subparsers object."""
    p = sub.add_parser("export", help="export the model for other runtimes (ONNX)")
    formats = p.add_subparsers(dest="format", required=True)
    onnx = formats.add_parser(
        "onnx",
        help="window.onnx and the runtime's graphs at one network size, checked against torch, with model.json",
        description="Export the model to ONNX at one network size; every graph is checked by ONNX Runtime on the "
        "CPU against torch before the folder gets its name (docs/onnx.md).",
    )
    onnx.add_argument("-o", "--out", required=True, help="output folder (must not exist, unless --overwrite)")
    onnx.add_argument("--checkpoint", help="path of a .pth file (default: the published one for --encoder/--metric)")
    onnx.add_argument("--encoder", "--model-size", dest="encoder", choices=ENCODERS, help="default: from the file")
    onnx.add_argument("--metric", action="store_true", help="the metric-depth checkpoint")
    onnx.add_argument("--input-size", type=int, default=518, help="network input size, as vda depth (default 518)")
    size = onnx.add_mutually_exclusive_group(required=True)
    size.add_argument("--aspect", type=_pair(":", "16:9"), help="W:H of the frames: the planner's size at --input-size")
    size.add_argument("--net-size", type=_pair("x", "924x518"), help="WxH, both multiples of 14")
    onnx.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    for flag in ("-v", "--verbose"), ("--debug",):  # accepted after the subcommand too, as every vda command does
        onnx.add_argument(*flag, action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def network_size(args) -> tuple[int, int]:
    """(H, W) asked for: --net-size as given, or the planner's shape for a W:H frame at --input-size."""
    from vda.core.preprocess import network_shape

    if args.net_size:
        return args.net_size[1], args.net_size[0]
    w, h = args.aspect
    return network_shape(h, w, args.input_size)


def cmd_export(args) -> int:
    from vda.model.onnx_export import export_onnx

    shape = network_size(args)
    result = export_onnx(
        args.checkpoint, args.out, shape=shape, encoder=args.encoder, metric=args.metric, overwrite=args.overwrite
    )
    meta = result.meta
    errors = ", ".join(f"{k} {v:.1e}" for k, v in meta["check"]["max_relative_error"].items())
    stream = "exported" if meta["stream"] else f"not exported ({meta['stream_note']})"
    print(f"wrote {result.folder}: {meta['encoder']} {shape[1]}x{shape[0]} in {result.seconds:.0f} s", file=sys.stderr)
    print(f"  ONNX Runtime vs torch, max error over the range: {errors}; stream graphs {stream}", file=sys.stderr)
    return 0


COMMANDS = {"export": cmd_export}
