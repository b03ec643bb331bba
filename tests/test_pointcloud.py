"""vda pointcloud: PLY files parsed back with numpy, on tiny synthetic frames with known geometry and colours."""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import pytest

from vda.analysis.camera import Intrinsics, IntrinsicsError
from vda.analysis.pointcloud import PointCloudError, frame_points, ply_bytes, ply_name, read_ply, write_pointclouds
from vda.cli import tools as tools_cli
from vda.files import write_atomic
from vda.io.writers import LEVELS, DepthMeta, encode, frame_name

DW, DH = 8, 6  # depth maps
VW, VH = 16, 12  # video frames: twice the depth size, as after --max-res


def write_depth_out(out: Path, depths: list[np.ndarray], fmt: str = "npy", metric: bool = True) -> Path:
    """A merged-output folder as vda merge writes it: one file per frame plus depth_meta.json."""
    out.mkdir(parents=True, exist_ok=True)
    lo, hi = float(min(np.nanmin(d) for d in depths)), float(max(np.nanmax(d) for d in depths))
    for i, d in enumerate(depths):
        write_atomic(out / frame_name(i, fmt), encode(d, fmt, lo, hi))
    quant = {"lo": lo, "hi": hi, "levels": LEVELS[fmt]} if fmt in LEVELS else {}
    DepthMeta(fmt, len(depths), "24/1", depths[0].shape[1], depths[0].shape[0], "vits", metric, quant).save(out)
    return out


def colours(t: int) -> np.ndarray:
    """RGB at depth resolution: every pixel its own colour, depending on the frame."""
    j, i = np.mgrid[0:DH, 0:DW]
    return np.stack([i * 30 + t, j * 40, 200 - 10 * t + 0 * i], -1).astype(np.uint8)


def write_frames(folder: Path, n: int) -> Path:
    """Video frames at twice the depth size, in 2x2 blocks of one colour: resizing them back is exact."""
    folder.mkdir(parents=True, exist_ok=True)
    for t in range(n):
        big = np.repeat(np.repeat(colours(t), 2, 0), 2, 1)
        cv2.imwrite(str(folder / f"f_{t:03d}.png"), cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
    return folder


def depth_map(t: int) -> np.ndarray:
    j, i = np.mgrid[0:DH, 0:DW]
    return (1.0 + 0.25 * i + 0.5 * j + t).astype(np.float32)


@pytest.fixture
def scene(tmp_path):
    n = 5
    out = write_depth_out(tmp_path / "out", [depth_map(t) for t in range(n)])
    return out, write_frames(tmp_path / "frames", n), tmp_path / "ply"


def expected(t: int, k: Intrinsics, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    j, i = np.mgrid[0:DH:stride, 0:DW:stride]
    z = depth_map(t)[::stride, ::stride].astype(np.float64)
    xyz = np.stack([(i - k.cx) * z / k.fx, (j - k.cy) * z / k.fy, z], -1).reshape(-1, 3)
    return xyz, colours(t)[::stride, ::stride].reshape(-1, 3)


def test_ply_round_trip_positions_and_colours(scene):
    out, frames, ply = scene
    # intrinsics in video pixels (16x12); at the depth size they halve: fx 10, cx (7.5 + 0.5) / 2 - 0.5 = 3.5
    res = write_pointclouds(out, frames, ply, fx=20, fy=24, cx=7.5, cy=5.5)
    k = Intrinsics(10, 12, 3.5, 2.5, DW, DH)
    assert res["files"] == 5 and res["points"] == 5 * DW * DH and res["format"] == "binary_little_endian"
    assert sorted(p.name for p in ply.iterdir()) == [ply_name(t) for t in range(5)]
    for t in (0, 3):
        xyz, rgb, comments = read_ply(ply / ply_name(t))
        want_xyz, want_rgb = expected(t, k)
        assert xyz.dtype == np.float32 and len(xyz) == DW * DH
        assert np.abs(xyz - want_xyz).max() < 1e-5 and np.array_equal(rgb, want_rgb)
        assert any("units m" in c for c in comments)
    head = (ply / ply_name(0)).read_bytes()[:60]
    assert head.startswith(b"ply\nformat binary_little_endian 1.0\n")


def test_stride_and_every(scene):
    out, frames, ply = scene
    res = write_pointclouds(out, frames, ply, stride=3, every=2)
    assert sorted(p.name for p in ply.iterdir()) == [ply_name(t) for t in (0, 2, 4)]
    assert res["points"] == 3 * 3 * 2  # columns 0, 3, 6 and rows 0, 3
    k = Intrinsics(**{n: res["intrinsics"][n] for n in ("fx", "fy", "cx", "cy")}, width=DW, height=DH)
    assert k.fx == pytest.approx(470.4 * DW / 640)  # the default, scale-free
    xyz, rgb, _ = read_ply(ply / ply_name(4))
    want_xyz, want_rgb = expected(4, k, 3)
    assert np.abs(xyz - want_xyz).max() < 1e-5 and np.array_equal(rgb, want_rgb)


def test_invalid_pixels_are_left_out(tmp_path):
    d = depth_map(0)
    d[0, 0], d[1, 2], d[5, 7] = 0, np.nan, -1
    xyz, rgb = frame_points(d, colours(0), Intrinsics(10, 10, 3.5, 2.5, DW, DH))
    assert len(xyz) == DW * DH - 3 and np.isfinite(xyz).all() and (xyz[:, 2] > 0).all()
    xyz, rgb = frame_points(d, colours(0), Intrinsics(10, 10, 3.5, 2.5, DW, DH), stride=2)
    assert len(xyz) == 4 * 3 - 1  # (0, 0) dropped; (1, 2) and (5, 7) are not on the grid


def test_png16_output_reads_back_through_the_quantisation(tmp_path):
    out = write_depth_out(tmp_path / "out", [depth_map(t) for t in range(2)], fmt="png16")
    write_pointclouds(out, write_frames(tmp_path / "frames", 2), tmp_path / "ply", fov=60)
    xyz, _, _ = read_ply(tmp_path / "ply" / ply_name(1))
    step = (depth_map(1).max() - depth_map(0).min()) / 65535
    assert np.abs(xyz[:, 2] - depth_map(1).ravel()).max() <= step / 2 * 1.01


def test_relative_outputs_are_refused_unless_allowed(tmp_path):
    disparity = [np.full((DH, DW), 0.5, np.float32)]
    out = write_depth_out(tmp_path / "out", disparity, metric=False)
    frames = write_frames(tmp_path / "frames", 1)
    with pytest.raises(PointCloudError, match="relative inverse depth.*--allow-relative"):
        write_pointclouds(out, frames, tmp_path / "ply")
    res = write_pointclouds(out, frames, tmp_path / "ply", allow_relative=True, scale=1.5)
    xyz, _, _ = read_ply(tmp_path / "ply" / ply_name(0))
    assert np.allclose(xyz[:, 2], 3.0) and res["units"] == "m (from --scale)"
    metric = write_depth_out(tmp_path / "metric", disparity)
    with pytest.raises(PointCloudError, match="this output is metric"):
        write_pointclouds(metric, frames, tmp_path / "ply", scale=1.5)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"stride": 0}, "--stride 0 must be >= 1"),
        ({"every": 0}, "--every 0 must be >= 1"),
        ({"fov": 30, "fx": 10}, "--fov and --fx/--fy"),
    ],
)
def test_bad_options(scene, kw, message):
    out, frames, ply = scene
    with pytest.raises((PointCloudError, IntrinsicsError), match=message):
        write_pointclouds(out, frames, ply, **kw)


def test_another_video_is_refused(tmp_path, scene):
    out, _, ply = scene
    with pytest.raises(PointCloudError, match="has 3 frames but .* has 5 depth maps"):
        write_pointclouds(out, write_frames(tmp_path / "short", 3), ply)
    square = tmp_path / "square"
    square.mkdir()
    for t in range(5):
        cv2.imwrite(str(square / f"{t}.png"), np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(PointCloudError, match="another aspect ratio"):
        write_pointclouds(out, square, ply)


def test_empty_frame_gives_a_valid_empty_ply(tmp_path):
    path = tmp_path / "e.ply"
    path.write_bytes(ply_bytes(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)))
    xyz, rgb, _ = read_ply(path)
    assert xyz.shape == (0, 3) and rgb.shape == (0, 3)


def test_cli(scene, capsys):
    out, frames, ply = scene
    ap = argparse.ArgumentParser(prog="vda")
    tools_cli.add_parsers(ap.add_subparsers(dest="command", required=True))
    argv = ["pointcloud", "--depth-dir", str(out), "--video", str(frames), "-o", str(ply), "--every", "5"]
    args = ap.parse_args(argv)
    assert tools_cli.COMMANDS[args.command](args) == 0
    assert "wrote 1 PLY file(s) (binary little-endian, 48 points, units m)" in capsys.readouterr().out
