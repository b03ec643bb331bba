"""Coloured point clouds from merged depth: `vda pointcloud --depth-dir OUT --video VIDEO -o PLY_DIR`.

One PLY per written frame, `cloud_<index:06d>.ply`, binary little-endian (compact and fast to load; every viewer
reads it): vertices with float32 x, y, z and uint8 red, green, blue, in camera coordinates (X right, Y down,
Z forward, OpenCV), in metres for metric outputs. Pixel (i, j) of the depth map becomes one point
(X, Y, Z) = ((i - cx) Z / fx, (j - cy) Z / fy, Z); pixels whose value is not finite or not > 0 are left out.

Intrinsics flags are pixels of the video's frames (as for a calibrated camera) and are rescaled to the depth
maps' resolution, which can be smaller (--max-res). Colours are the video frames resized to the depth resolution.
Relative outputs (disparity, no unit) are refused unless --allow-relative: then Z = scale / disparity, with
--scale from `vda track --ref-depth` (TRACK.json, depth.scale) or 1 (shape up to an unknown factor). Inputs or
options that cannot make clouds raise `PointCloudError` (a `vda.errors.InputError`) naming the fix; the camera model
and its flag errors are `vda.analysis.camera`'s.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from vda.analysis.camera import Intrinsics, resolve_intrinsics
from vda.core.video_info import VideoInfo
from vda.errors import InputError
from vda.files import write_atomic
from vda.io.decode import read_frames
from vda.io.probe import probe
from vda.io.writers import DepthMeta, read_depth

PLY_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
PLY_TYPES = {"float": "<f4", "float32": "<f4", "double": "<f8", "uchar": "u1", "uint8": "u1", "int": "<i4"}
ASPECT_TOL = 0.02  # --max-res rounds sizes; a larger aspect difference means another video


class PointCloudError(InputError, ValueError):
    """Unusable input or options; the message names the problem and the fix."""


def ply_name(index: int) -> str:
    return f"cloud_{index:06d}.ply"


def frame_points(
    depth: np.ndarray, rgb: np.ndarray, k: Intrinsics, stride: int = 1, relative: bool = False, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """(xyz float32 N x 3, rgb uint8 N x 3) of every stride-th pixel in both directions, from (0, 0).

    `k` must be for the depth map's size. Relative maps hold disparity: Z = scale / disparity.
    """
    if depth.shape[:2] != rgb.shape[:2]:
        raise PointCloudError(f"depth {depth.shape[:2]} and colour {rgb.shape[:2]} sizes differ; resize the colours")
    d = np.asarray(depth, dtype=np.float32)[::stride, ::stride]
    c = np.asarray(rgb)[::stride, ::stride]
    v, u = np.mgrid[0 : depth.shape[0] : stride, 0 : depth.shape[1] : stride]
    ok = np.isfinite(d) & (d > 0)
    z = d[ok].astype(np.float64)
    if relative:
        z = scale / z
    x = (u[ok] - k.cx) * z / k.fx
    y = (v[ok] - k.cy) * z / k.fy
    return np.stack([x, y, z], axis=1).astype(np.float32), c[ok].astype(np.uint8)


def ply_bytes(xyz: np.ndarray, rgb: np.ndarray, comments: list[str] = ()) -> bytes:
    """A binary little-endian PLY of coloured vertices."""
    data = np.empty(len(xyz), PLY_DTYPE)
    for i, name in enumerate("xyz"):
        data[name] = xyz[:, i]
    for i, name in enumerate(("red", "green", "blue")):
        data[name] = rgb[:, i]
    header = ["ply", "format binary_little_endian 1.0", *(f"comment {c}" for c in comments)]
    header += [f"element vertex {len(data)}"]
    header += [f"property {'float' if PLY_DTYPE[n].kind == 'f' else 'uchar'} {n}" for n in PLY_DTYPE.names]
    header += ["end_header"]
    return ("\n".join(header) + "\n").encode("ascii") + data.tobytes()


def read_ply(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(xyz float32 N x 3, rgb uint8 N x 3, comments) of a binary little-endian vertex-only PLY (what we write)."""
    blob = Path(path).read_bytes()
    end = blob.find(b"end_header\n")
    if not blob.startswith(b"ply\n") or end < 0:
        raise PointCloudError(f"{path} is not a PLY file; pass a file written by vda pointcloud")
    lines = blob[:end].decode("ascii").splitlines()
    if "format binary_little_endian 1.0" not in lines:
        raise PointCloudError(f"{path}: only binary little-endian PLY is read here; convert it first")
    count, fields, comments = 0, [], []
    for line in lines:
        parts = line.split()
        if parts[:2] == ["element", "vertex"]:
            count = int(parts[2])
        elif parts[:1] == ["element"]:
            raise PointCloudError(f"{path}: element {parts[1]} is not supported; only vertices are read")
        elif parts[:1] == ["property"]:
            fields.append((parts[2], PLY_TYPES[parts[1]]))
        elif parts[:1] == ["comment"]:
            comments.append(line[len("comment ") :])
    data = np.frombuffer(blob, dtype=np.dtype(fields), count=count, offset=end + len(b"end_header\n"))
    xyz = np.stack([data["x"], data["y"], data["z"]], axis=1).astype(np.float32)
    rgb = np.stack([data["red"], data["green"], data["blue"]], axis=1).astype(np.uint8)
    return xyz, rgb, comments


def frames_to_write(frame_count: int, every: int) -> list[int]:
    return list(range(0, frame_count, every))


def _check_steps(stride: int, every: int) -> None:
    if stride < 1:
        raise PointCloudError(f"--stride {stride} must be >= 1 (1 keeps every pixel); pass e.g. --stride 4")
    if every < 1:
        raise PointCloudError(f"--every {every} must be >= 1 (1 writes every frame); pass e.g. --every 10")


def _check_depth(depth_dir: Path, meta: DepthMeta, allow_relative: bool, scale: float | None) -> None:
    """Refuse relative disparity unless asked for (it is not metres), and a --scale that cannot apply."""
    if not meta.metric and not allow_relative:
        raise PointCloudError(
            f"{depth_dir} holds relative inverse depth (disparity) from a relative model, not metres; recompute with "
            "`vda depth --metric`, or pass --allow-relative (Z = scale / disparity, --scale from vda track --ref-depth)"
        )
    if scale is not None:
        if meta.metric:
            raise PointCloudError("--scale converts relative disparity, but this output is metric (metres); remove it")
        if not (math.isfinite(scale) and scale > 0):
            raise PointCloudError(f"--scale {scale} is not a positive number; pass depth.scale from TRACK.json")


def _check_video(video: Path, info: VideoInfo, depth_dir: Path, meta: DepthMeta) -> None:
    """The colours must come from the video the depth was computed from: same frame count and aspect ratio."""
    if info.frame_count != meta.frame_count:
        raise PointCloudError(
            f"{video} has {info.frame_count} frames but {depth_dir} has {meta.frame_count} depth maps; pass the "
            "video the depth was computed from"
        )
    if abs(info.width / info.height - meta.width / meta.height) > ASPECT_TOL * meta.width / meta.height:
        raise PointCloudError(
            f"{video} is {info.width}x{info.height} but the depth maps are {meta.width}x{meta.height} (another "
            "aspect ratio); pass the video the depth was computed from"
        )


def _write_clouds(
    info: VideoInfo,
    depth_dir: Path,
    meta: DepthMeta,
    out_dir: Path,
    indices: list[int],
    k: Intrinsics,
    *,
    stride: int,
    scale: float | None,
    units: str,
    log,
) -> int:
    """One PLY per index, with the frame, units and intrinsics in its header comments; returns the points written."""
    total = 0
    for n, (i, rgb) in enumerate(read_frames(info, indices, (meta.width, meta.height)), 1):
        depth = read_depth(depth_dir, i, meta)
        xyz, colours = frame_points(depth, rgb, k, stride, not meta.metric, 1.0 if scale is None else scale)
        comments = [
            f"vda pointcloud frame {i} of {depth_dir.name}",
            f"units {units}; camera axes X right, Y down, Z forward (OpenCV)",
            f"intrinsics fx {k.fx:.6g} fy {k.fy:.6g} cx {k.cx:.6g} cy {k.cy:.6g} at {k.width}x{k.height}",
        ]
        write_atomic(out_dir / ply_name(i), ply_bytes(xyz, colours, comments))
        total += len(xyz)
        if log is not None:
            print(f"\rvda pointcloud: {n}/{len(indices)} frames", end="", file=log, flush=True)
    if log is not None:
        print(file=log)
    return total


def write_pointclouds(
    depth_dir: Path,
    video: Path,
    out_dir: Path,
    *,
    stride: int = 1,
    every: int = 1,
    allow_relative: bool = False,
    scale: float | None = None,
    fx: float | None = None,
    fy: float | None = None,
    cx: float | None = None,
    cy: float | None = None,
    fov: float | None = None,
    log=None,
) -> dict:
    """Write one PLY per every-th frame; returns {"files", "points", "format", "units", "intrinsics", "out_dir"}."""
    depth_dir, out_dir = Path(depth_dir), Path(out_dir)
    _check_steps(stride, every)
    meta = DepthMeta.load(depth_dir)
    _check_depth(depth_dir, meta, allow_relative, scale)
    info = probe(video)
    _check_video(video, info, depth_dir, meta)
    k_video = resolve_intrinsics(info.width, info.height, fx=fx, fy=fy, cx=cx, cy=cy, fov=fov)
    k = k_video.scaled(meta.width, meta.height)
    units = "m" if meta.metric else ("relative x scale" if scale is None else "m (from --scale)")
    out_dir.mkdir(parents=True, exist_ok=True)
    indices = frames_to_write(meta.frame_count, every)
    total = _write_clouds(info, depth_dir, meta, out_dir, indices, k, stride=stride, scale=scale, units=units, log=log)
    return {
        "files": len(indices),
        "points": total,
        "format": "binary_little_endian",
        "units": units,
        "intrinsics": k.as_dict(),
        "out_dir": str(out_dir),
    }
