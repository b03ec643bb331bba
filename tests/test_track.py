"""vda track on synthetic scenes with known geometry, through real files written by the project's writers."""

from __future__ import annotations

import argparse
import csv
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest

from vda.analysis import plots
from vda.analysis.camera import Intrinsics, IntrinsicsError, backproject, resolve_intrinsics
from vda.analysis.detections import TrackError
from vda.analysis.track import (
    CLOSED_TOL,
    box_region,
    hampel,
    median_filter,
    path_length,
    point_region,
    robust_value,
    run_track,
    summarize,
    tortuosity,
)
from vda.analysis.track_io import Track, TrackOptions, TrackPoint, TrackResult, plot_path
from vda.cli import tools as tools_cli
from vda.errors import InputError
from vda.files import write_atomic
from vda.io.writers import LEVELS, DepthMeta, encode, frame_name

W, H = 64, 48
K = Intrinsics(fx=50.0, fy=55.0, cx=31.5, cy=23.5, width=W, height=H)


def write_depth_out(out: Path, depths: list[np.ndarray], fmt: str = "npy", metric: bool = True, fps: str = "10/1"):
    """A merged-output folder as vda merge writes it: one file per frame plus depth_meta.json."""
    out.mkdir(parents=True, exist_ok=True)
    lo, hi = float(min(d.min() for d in depths)), float(max(d.max() for d in depths))
    for i, d in enumerate(depths):
        write_atomic(out / frame_name(i, fmt), encode(d, fmt, lo, hi))
    quant = {"lo": lo, "hi": hi, "levels": LEVELS[fmt]} if fmt in LEVELS else {}
    h, w = depths[0].shape
    DepthMeta(fmt, len(depths), fps, w, h, "vits", metric, quant).save(out)
    return out


def write_dets(path: Path, entries: list[dict]) -> Path:
    path.write_text(json.dumps({"detections": entries}))
    return path


def project(p: np.ndarray, k: Intrinsics = K) -> tuple[float, float]:
    return k.fx * p[0] / p[2] + k.cx, k.fy * p[1] / p[2] + k.cy


def opts(**kw) -> TrackOptions:
    return TrackOptions(fx=K.fx, fy=K.fy, cx=K.cx, cy=K.cy, plots=False, **kw)


def trajectory_scene(tmp_path: Path, points: np.ndarray, fmt: str = "npy") -> tuple[Path, Path]:
    """(detections file, depth folder) for a track through `points` (camera coordinates), one point per frame.

    Frame t holds depth Z_t everywhere (a fronto-parallel plane through the point); the detection is its projection.
    """
    out = write_depth_out(tmp_path / "out", [np.full((H, W), p[2], np.float32) for p in points], fmt)
    dets = [{"frame": t, "track": 1, "point": list(project(p))} for t, p in enumerate(points)]
    return write_dets(tmp_path / "det.json", dets), out


def xyz_of(res: TrackResult, track: int = 0) -> np.ndarray:
    return np.array([[p.x, p.y, p.z] for p in res.tracks[track].valid_points])


# --- pure maths ---------------------------------------------------------------------------------------------------


def test_intrinsics_default_fov_and_conflicts():
    k = resolve_intrinsics(1280, 720)
    assert k.fx == k.fy == pytest.approx(470.4 * 2) and (k.cx, k.cy) == (639.5, 359.5)
    assert resolve_intrinsics(640, 480, fov=90).fx == pytest.approx(320)
    assert resolve_intrinsics(640, 480, fx=500).fy == 500  # one sets both
    for bad in ({"fov": 60, "fx": 500}, {"fov": 180}, {"fx": -1}, {"cy": math.nan}):
        with pytest.raises(IntrinsicsError):
            resolve_intrinsics(640, 480, **bad)
    s = resolve_intrinsics(640, 480, fx=500, cx=319.5, cy=239.5).scaled(320, 240)
    assert (s.fx, s.fy, s.cx, s.cy) == (250, 250, 159.5, 119.5)  # still the centre of the smaller image


def test_backproject_closed_form():
    x, y, z = backproject([K.cx, K.cx + 50], [K.cy, K.cy - 11], [2.0, 4.0], K)
    assert np.allclose(x, [0, 4.0]) and np.allclose(y, [0, -0.8]) and np.allclose(z, [2, 4])


def test_robust_value_ignores_zeros_nonfinite_and_minority_background():
    assert robust_value(np.array([0, np.nan, np.inf, -1, 2.0, 2.0, 9.0])) == (2.0, 3)
    assert robust_value(np.zeros(5)) == (None, 0)
    rows, cols = point_region(0.2, 47.9, W, H, 5)  # clipped at the corner
    assert (rows, cols) == (slice(45, 48), slice(0, 3))
    assert box_region((1.2, 2.0, 3.9, 2.0), W, H) == (slice(2, 3), slice(2, 4))
    assert box_region((1.2, 2.1, 1.4, 2.2), W, H) == (slice(2, 3), slice(1, 2))  # sub-pixel box: nearest pixel


def test_hampel_replaces_a_planted_spike_and_reports_one_change():
    x = 2.0 + 0.01 * np.sin(np.arange(30))
    x[17] = 5.0
    y, changed = hampel(x, 3, 3.0)
    assert changed.sum() == 1 and changed[17]
    assert abs(y[17] - 2.0) < 0.02 and np.array_equal(y[~changed], x[~changed])
    flat = np.array([2.0] * 5 + [2.001] + [2.0] * 5)  # one quantisation step is not an outlier
    assert not hampel(flat)[1].any()
    m, mchanged = median_filter(np.array([1.0, 1, 9, 1, 1]), 1)
    assert np.array_equal(m, [1, 1, 1, 1, 1]) and mchanged.sum() == 1


def test_tortuosity_definitions():
    line = np.outer(np.arange(5), [1.0, 2.0, 2.0])
    assert path_length(line) == pytest.approx(12) and tortuosity(line) == (pytest.approx(1.0), None)
    assert tortuosity(line[:1]) == (None, "fewer than two points with depth")
    assert tortuosity(np.zeros((3, 3)))[0] is None
    closed = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 0, CLOSED_TOL / 10]])
    value, note = tortuosity(closed)
    assert value is None and "returns to its start" in note


# --- the command on files -----------------------------------------------------------------------------------------


def test_plane_backprojection_error_against_closed_form(tmp_path):
    z0 = 3.0
    out = write_depth_out(tmp_path / "out", [np.full((H, W), z0, np.float32)] * 2)
    # detections on a 2x larger frame: coordinates and intrinsics both in its pixels
    k2 = Intrinsics(100.0, 110.0, 63.5, 47.5, 2 * W, 2 * H)
    pts = [(0.0, 0.0), (127.0, 95.0), (63.5, 47.5), (10.25, 80.75)]
    dets = [{"frame": 0, "track": i, "point": list(p)} for i, p in enumerate(pts)]
    dets.append({"frame": 1, "track": 9, "box": [20, 30, 60, 70]})
    o = TrackOptions(image_size=(2 * W, 2 * H), fx=k2.fx, fy=k2.fy, cx=k2.cx, cy=k2.cy, plots=False)
    res = run_track(write_dets(tmp_path / "d.json", dets), out, tmp_path / "t.json", o)
    got = np.array([xyz_of(res, i)[0] for i in range(5)])
    uv = np.array([*pts, (40, 50)])
    want = np.stack([(uv[:, 0] - k2.cx) * z0 / k2.fx, (uv[:, 1] - k2.cy) * z0 / k2.fy, np.full(5, z0)], 1)
    assert np.abs(got - want).max() < 1e-12
    assert res.units == "m" and (res.camera.width, res.camera.height) == (2 * W, 2 * H)


def test_straight_line_has_tortuosity_one_and_closed_form_length(tmp_path):
    p0, step = np.array([-0.4, 0.1, 2.0]), np.array([0.05, -0.02, 0.1])
    points = p0 + np.arange(12)[:, None] * step
    res = run_track(*trajectory_scene(tmp_path, points), tmp_path / "t.json", opts())
    s = res.tracks[0].summary
    assert np.abs(xyz_of(res) - points).max() < 1e-6
    assert s.path_length == pytest.approx(11 * np.linalg.norm(step), rel=1e-6)
    assert s.tortuosity == pytest.approx(1.0, abs=1e-6) and s.valid_depth_ratio == 1.0
    assert s.duration_s == pytest.approx(1.1) and s.mean_speed == pytest.approx(s.path_length / 1.1)


def test_full_circle_length_and_undefined_tortuosity(tmp_path):
    r, z0, n = 0.5, 4.0, 48  # circle in the X-Y plane at constant depth, closed: last sample = first
    th = np.linspace(0, 2 * np.pi, n + 1)
    points = np.stack([r * np.cos(th), r * np.sin(th), np.full(n + 1, z0)], 1)
    res = run_track(*trajectory_scene(tmp_path, points), tmp_path / "t.json", opts())
    s = res.tracks[0].summary
    assert s.path_length == pytest.approx(n * 2 * r * np.sin(np.pi / n), rel=1e-6)  # the inscribed polygon
    assert s.path_length == pytest.approx(2 * np.pi * r, rel=np.pi**2 / (6 * n**2))  # 2 pi r - its discretisation
    assert s.tortuosity is None and "returns to its start" in s.tortuosity_note


def test_half_circle_tortuosity_is_pi_over_two(tmp_path):
    r, z0, n = 0.8, 3.0, 64  # half circle in the X-Z plane: depth changes along the path
    th = np.linspace(0, np.pi, n + 1)
    points = np.stack([r * np.cos(th), np.zeros(n + 1), z0 + r * np.sin(th)], 1)
    res = run_track(*trajectory_scene(tmp_path, points), tmp_path / "t.json", opts())
    s = res.tracks[0].summary
    assert s.tortuosity == pytest.approx(n * np.sin(np.pi / (2 * n)), rel=1e-6)
    assert s.tortuosity == pytest.approx(np.pi / 2, rel=1e-3)


def test_png16_depth_read_back_through_meta_quantisation(tmp_path):
    points = np.stack([np.zeros(6), np.zeros(6), np.linspace(1.0, 7.3, 6)], 1)
    res = run_track(*trajectory_scene(tmp_path, points, "png16"), tmp_path / "t.json", opts())
    half_step = (7.3 - 1.0) / 65535 / 2
    got = [p.depth for p in res.tracks[0].points]
    assert np.abs(np.array(got) - points[:, 2]).max() <= half_step * 1.01
    assert np.abs(np.array(got) - points[:, 2]).max() > 0  # really quantised, really read back through the meta


def test_hampel_on_a_track_reports_one_cleaned_point(tmp_path):
    points = np.stack([np.linspace(-0.3, 0.3, 20), np.zeros(20), np.full(20, 2.0)], 1)
    det, out = trajectory_scene(tmp_path, points)
    spike = np.full((H, W), 9.0, np.float32)  # frame 7 reads 9 m instead of 2 m
    write_atomic(out / frame_name(7, "npy"), encode(spike, "npy"))
    res = run_track(det, out, tmp_path / "t.json", opts(clean="hampel"))
    t = res.tracks[0]
    assert t.summary.outliers == 1 and res.changed == 1
    p7 = t.points[7]
    assert p7.cleaned and p7.depth_raw == 9.0 and p7.depth == pytest.approx(2.0)
    assert np.abs(xyz_of(res) - points).max() < 1e-6  # the spike's 3D point is back on the line
    assert run_track(det, out, tmp_path / "n.json", opts()).tracks[0].summary.outliers == 0


def test_relative_model_scale_from_ref_depth(tmp_path):
    disparity = [np.full((H, W), d, np.float32) for d in (0.5, 0.25, 0.2)]
    out = write_depth_out(tmp_path / "out", disparity, metric=False)
    dets = [{"frame": f, "track": "ball", "point": [K.cx, K.cy]} for f in range(3)]
    det = write_dets(tmp_path / "d.json", dets)
    rel = run_track(det, out, tmp_path / "r.json", opts())
    assert rel.units == "relative" and rel.scale == 1.0
    assert [p.depth for p in rel.tracks[0].points] == pytest.approx([2.0, 4.0, 5.0])  # 1/float32
    res = run_track(det, out, tmp_path / "m.json", opts(ref_depth=1.5))  # frame 0 is really 1.5 m away
    assert res.units == "m" and res.scale == pytest.approx(0.75)
    assert res.reference == {"track": "ball", "frame": 0, "depth_m": 1.5, "disparity": 0.5}
    assert [p.depth for p in res.tracks[0].points] == pytest.approx([1.5, 3.0, 3.75])
    assert res.tracks[0].points[1].disparity == 0.25
    metric = write_depth_out(tmp_path / "metric", disparity)
    with pytest.raises(TrackError, match="this output is metric"):
        run_track(det, metric, tmp_path / "x.json", opts(ref_depth=1.5))


def test_invalid_depth_lowers_the_valid_ratio_and_boxes_ignore_background(tmp_path):
    d0 = np.full((H, W), 2.0, np.float32)
    d0[:, 40:] = 0  # no depth on the right
    d0[20:30, 10:16] = 7.0  # an object covering most of a box, on a 2 m background
    out = write_depth_out(tmp_path / "out", [d0, d0])
    dets = [
        {"frame": 0, "track": 1, "box": [9.6, 19.6, 16.4, 30.4]},  # 7x11 = 77 pixels, 60 object, 17 background
        {"frame": 1, "track": 1, "box": [8.6, 18.6, 17.4, 31.4]},  # 9x13 = 117 pixels, 60 object, 57 background
        {"frame": 0, "track": 2, "point": [50, 10]},
        {"frame": 1, "track": 2, "point": [20, 10]},
    ]
    res = run_track(write_dets(tmp_path / "d.json", dets), out, tmp_path / "t.json", opts())
    box_pts = res.tracks[0].points
    assert [p.depth for p in box_pts] == [7.0, 7.0] and box_pts[1].pixels == 117
    s2 = res.tracks[1].summary
    assert s2.valid_depth_ratio == 0.5 and s2.tortuosity is None
    rows = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert len(rows) == 4 and rows[2]["valid"] == "False" and rows[2]["depth"] == ""


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("d.json", '{"detections": [\n  {"frame": 0, "track": 1 "point": [1, 2]}\n]}', "d.json line 2 column 27: not"),
        ("d.json", '[{"frame": 0, "point": [1, 2]}]', "d.json entry 0: missing field 'track'"),
        ("d.json", '[{"frame": 0, "track": 1, "point": [1, 2]}, {"frame": 1, "track": 1}]', "entry 1: has neither"),
        ("d.json", '[{"frame": 0, "track": 1, "box": [30, 5, 10, 9]}]',
         "entry 0: box [30, 5, 10, 9] has negative width"),
        ("d.json", '[{"frame": 0, "track": 1, "point": [1, 2]}, {"frame": 5, "track": 1, "point": [1, 2]}]',
         "entry 1: frame 5 is out of range: the depth output has 2 frames"),
        ("d.json", '[{"frame": 0, "track": 1, "point": [1, "a"]}]', "entry 0: point y is not a number"),
        ("d.json", '[{"frame": 1.5, "track": 1, "point": [1, 2]}]', "entry 0: frame is not an integer"),
        ("d.json", '[{"frame": 0, "track": 1, "point": [99, 2]}]', "entry 0: point (99, 2) is outside the 64x48 image"),
        ("d.json", '[{"frame": 0, "track": 1, "point": [1, 2]}, {"frame": 0, "track": "1", "point": [3, 2]}]',
         "entry 1: track 1 already has a detection in frame 0 (entry 0)"),
        ("d.json", '{"frames": []}', "expected a list of detections"),
        ("d.csv", "frame,track,x,y\n0,1,1,2\n\n1,1,3,4\n1,2,5,6\n# comment\n1,3,abc,4\n",
         "d.csv line 7: x is not a number ('abc'); write a decimal number of pixels"),
        ("d.csv", "frame,x,y\n0,1,2\n", "d.csv line 1: the header has no 'track' column"),
        ("d.csv", "frame,track,x,y,x1,y1,x2,y2\n0,1,1,2,1,2,3,4\n", "d.csv line 2: has both a point and a box"),
        ("d.csv", "frame,track,x1,y1,x2,y2\n0,1,1,2,3,\n", "d.csv line 2: y2 is empty"),
        ("d.csv", "frame,track,x,y\n0,1,1,2,3\n", "d.csv line 2: has 5 cells, the header (line 1) has 4"),
        ("d.csv", "frame,track,x,y\n-1,1,1,2\n", "d.csv line 2: frame -1 is out of range"),
        ("d.txt", "", "d.txt: detections must be a .json or .csv file"),
    ],
)  # fmt: skip
def test_malformed_detections_name_the_line_or_entry(tmp_path, name, text, message):
    out = write_depth_out(tmp_path / "out", [np.full((H, W), 2.0, np.float32)] * 2)
    (tmp_path / name).write_text(text)
    with pytest.raises(TrackError) as info:
        run_track(tmp_path / name, out, tmp_path / "t.json", opts())
    assert message in str(info.value) and "\n" not in str(info.value) and "; " in str(info.value)


def test_missing_detections_file_is_a_track_error_and_still_a_file_not_found(tmp_path):
    out = write_depth_out(tmp_path / "out", [np.full((H, W), 2.0, np.float32)])
    with pytest.raises(TrackError, match="detections file not found: .*nope.json; check the path") as info:
        run_track(tmp_path / "nope.json", out, tmp_path / "t.json", opts())
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, InputError)


def test_csv_and_json_detections_give_the_same_tracks(tmp_path):
    out = write_depth_out(tmp_path / "out", [np.full((H, W), 2.0 + f, np.float32) for f in range(2)])
    (tmp_path / "d.csv").write_text("frame,track,x,y,x1,y1,x2,y2,score\n0,7,10,20,,,,,0.9\n1,7,,,5,6,15,26,0.8\n")
    entries = [{"frame": 0, "track": 7, "point": [10, 20]}, {"frame": 1, "track": "7", "box": [5, 6, 15, 26]}]
    a = run_track(tmp_path / "d.csv", out, tmp_path / "a.json", opts())
    b = run_track(write_dets(tmp_path / "d.json", entries), out, tmp_path / "b.json", opts())
    assert a.tracks == b.tracks and a.tracks[0].id == 7


def test_cli_writes_json_csv_and_plots(tmp_path, capsys):
    th = np.linspace(0, np.pi, 9)
    points = np.stack([0.5 * np.cos(th), 0.1 * th, 3 + 0.5 * np.sin(th)], 1)
    det, out = trajectory_scene(tmp_path, points)
    ap = argparse.ArgumentParser(prog="vda")
    tools_cli.add_parsers(ap.add_subparsers(dest="command", required=True))
    target = tmp_path / "res" / "walk.json"
    argv = ["track", "--detections", str(det), "--depth-dir", str(out), "-o", str(target), "--fov", "70"]
    args = ap.parse_args([*argv, "--clean", "median", "--clean-window", "1"])
    assert tools_cli.COMMANDS[args.command](args) == 0
    assert "track 1: 9 detections, 9 with depth (100%)" in capsys.readouterr().out
    doc = json.loads(target.read_text())
    assert doc["camera"]["fx"] == pytest.approx(32 / math.tan(math.radians(35)))
    assert doc["cleaning"]["method"] == "median"
    png = plot_path(target, 1).read_bytes()  # matplotlib's figure: a PNG of the figure's size, with content
    assert png.startswith(b"\x89PNG") and png[16:24] == struct.pack(">II", *plots_size()) and len(png) > 20_000
    assert len(list(csv.DictReader(target.with_suffix(".csv").open()))) == 9


def plots_size() -> tuple[int, int]:
    return round(plots.SIZE_IN[0] * plots.DPI), round(plots.SIZE_IN[1] * plots.DPI)


def test_plot_of_a_track_without_depth_is_still_drawn():
    point = TrackPoint(0, 0.0, 1.0, 1.0, None, 0, None, None, None)
    track = Track(3, summarize(np.zeros((0, 3)), 1, 0, []), (point,))
    png = plots.encode_png(plots.trajectory_figure(track, units="relative", title="empty"))
    assert png.startswith(b"\x89PNG") and png[16:24] == struct.pack(">II", *plots_size())
