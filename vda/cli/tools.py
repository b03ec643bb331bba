"""`vda track` and `vda pointcloud`: use merged depth outputs (subparsers for vda.cli.main).

vda.cli.main adds these with `add_parsers(sub)` and dispatches through `COMMANDS`; both commands only read
OUT (depth_meta.json and the depth files) and write their own outputs, so they run anywhere, without a GPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vda.analysis.track import BOX_POINTS, CLEANERS


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WxH, e.g. 1920x1080") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive, e.g. 1920x1080")
    return w, h


def _track_id(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def _intrinsics_flags(p: argparse.ArgumentParser, pixels_of: str) -> None:
    g = p.add_argument_group(
        "camera intrinsics",
        f"in pixels of {pixels_of}; default fx = fy = 470.4 * W / 640 (the authors' 470.4 read as the focal of a "
        "640-wide frame), principal point at the centre ((W-1)/2, (H-1)/2)",
    )
    g.add_argument("--fx", type=float, help="focal length in pixels along x (alone, also sets fy)")
    g.add_argument("--fy", type=float, help="focal length in pixels along y (alone, also sets fx)")
    g.add_argument("--cx", type=float, help="principal point x")
    g.add_argument("--cy", type=float, help="principal point y")
    g.add_argument("--fov", type=float, help="horizontal field of view in degrees, instead of --fx/--fy")


def add_parsers(sub) -> None:
    """Add the track and pointcloud subparsers to an argparse subparsers object."""
    p = sub.add_parser(
        "track",
        help="depth at tracked 2D detections -> 3D trajectories (TRACK.json, .csv, plots)",
        description="Give 2D detections (points or boxes, JSON or CSV: docs/track.md) a robust depth from OUT and "
        "back-project them into 3D camera coordinates.",
    )
    p.add_argument("--detections", required=True, type=Path, help="detections .json or .csv (docs/track.md)")
    p.add_argument("--depth-dir", required=True, type=Path, help="a folder written by vda depth / vda merge")
    p.add_argument("-o", "--output", required=True, type=Path, help="TRACK.json; TRACK.csv and plots go next to it")
    p.add_argument(
        "--image-size", type=_size, help="WxH of the frames the detections refer to (default: the depth maps' size)"
    )
    p.add_argument("--window", type=int, default=5, help="odd window (depth pixels) around a point for the median")
    p.add_argument(
        "--box-point",
        choices=BOX_POINTS,
        default="center",
        help="the 2D point of a box: its centre, or its bottom centre (where a standing object meets the ground)",
    )
    _intrinsics_flags(p, "--image-size")
    g = p.add_argument_group("relative models", "turn relative disparity into metres: depth = scale / disparity")
    g.add_argument("--ref-depth", type=float, metavar="METRES", help="true depth Z of the reference detection")
    g.add_argument("--ref-track", type=_track_id, help="reference track (default: any)")
    g.add_argument("--ref-frame", type=int, help="reference frame (default: the first with a valid depth)")
    g = p.add_argument_group("cleaning", "light outlier removal on each track's depth series")
    g.add_argument("--clean", choices=CLEANERS, default="none")
    g.add_argument("--clean-window", type=int, default=3, help="samples on each side of the window")
    g.add_argument("--clean-sigmas", type=float, default=3.0, help="hampel: threshold in robust sigmas")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")

    p = sub.add_parser(
        "pointcloud",
        help="coloured PLY point clouds (binary little-endian), one per frame, from metric depth",
        description="Back-project depth maps into coloured point clouds, one binary little-endian PLY per frame "
        "(cloud_NNNNNN.ply, camera coordinates: X right, Y down, Z forward).",
    )
    p.add_argument("--depth-dir", required=True, type=Path, help="a folder written by vda depth / vda merge")
    p.add_argument("--video", required=True, type=Path, help="the video (or image folder) the depth came from")
    p.add_argument("-o", "--output", required=True, type=Path, help="folder for the PLY files")
    p.add_argument("--stride", type=int, default=1, help="keep every S-th pixel in x and y")
    p.add_argument("--every", type=int, default=1, help="write every N-th frame (0, N, 2N, ...)")
    p.add_argument("--allow-relative", action="store_true", help="accept a relative model's disparity")
    p.add_argument("--scale", type=float, help="relative only: Z = scale / disparity (depth.scale of vda track)")
    _intrinsics_flags(p, "the video's frames (rescaled to the depth maps)")


def cmd_track(args) -> int:
    from vda.analysis.track import run_track
    from vda.analysis.track_io import TrackOptions, plot_path, summary_line

    opts = TrackOptions(
        image_size=args.image_size,
        window=args.window,
        box_point=args.box_point,
        fx=args.fx,
        fy=args.fy,
        cx=args.cx,
        cy=args.cy,
        fov=args.fov,
        ref_depth=args.ref_depth,
        ref_track=args.ref_track,
        ref_frame=args.ref_frame,
        clean=args.clean,
        clean_window=args.clean_window,
        clean_sigmas=args.clean_sigmas,
        plots=not args.no_plots,
    )
    res = run_track(args.detections, args.depth_dir, args.output, opts)
    for t in res.tracks:
        print(summary_line(t, res.units))
    if not res.metric:
        note = f"scale {res.scale:.6g} from --ref-depth" if res.reference else "relative units (no --ref-depth)"
        print(f"vda track: relative model: depth = scale / disparity, {note}", file=sys.stderr)
    out = Path(args.output)
    plots = "" if args.no_plots else f" and {len(res.tracks)} plot(s) like {plot_path(out, res.tracks[0].id)}"
    print(f"wrote {out}, {out.with_suffix('.csv')}{plots}")
    return 0


def cmd_pointcloud(args) -> int:
    from vda.analysis.pointcloud import write_pointclouds

    res = write_pointclouds(
        args.depth_dir,
        args.video,
        args.output,
        stride=args.stride,
        every=args.every,
        allow_relative=args.allow_relative,
        scale=args.scale,
        fx=args.fx,
        fy=args.fy,
        cx=args.cx,
        cy=args.cy,
        fov=args.fov,
        log=sys.stderr,
    )
    print(
        f"wrote {res['files']} PLY file(s) (binary little-endian, {res['points']} points, units {res['units']}) "
        f"to {res['out_dir']}"
    )
    return 0


COMMANDS = {"track": cmd_track, "pointcloud": cmd_pointcloud}
