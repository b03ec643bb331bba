"""Depth at tracked points: 2D detections + merged depth maps -> typed 3D camera-space tracks.

`vda track --detections DET --depth-dir OUT -o TRACK.json` reads detections (`vda.analysis.detections`), samples
each one's depth robustly from the stored maps (through `depth_meta.json`, so png16/png8 come back as floats),
optionally removes outliers from each track's depth series, back-projects to 3D camera coordinates
(`vda.analysis.camera`) and writes TRACK.json, TRACK.csv (`vda.analysis.track_io`) and one plot per track
(TRACK_track<ID>.png, `vda.analysis.plots`). `run_track` returns the `TrackResult` it wrote; bad input or options
raise `TrackError` (a `vda.errors.InputError`), bad intrinsics flags `IntrinsicsError`.

Conventions that the numbers depend on, in one place (the camera's are in `vda.analysis.camera`):

- Depth of a detection: the median of the stored values in the box, or in a `window` x `window` block of depth
  pixels around the point, ignoring values that are not finite or not > 0 (no depth and no disparity is <= 0).
  Boxes are clipped to the detector's image first; a box's 2D point is its centre or, with `box_point="bottom"`,
  its bottom centre.
- Relative models store relative inverse depth (disparity). Then depth = scale / disparity, with scale = 1 (units
  "relative": shape right up to one unknown factor) unless `ref_depth` is given: the true depth Z in metres (along
  the optical axis, not the Euclidean range) of the reference detection, by default the first detection with a valid
  depth ordered by frame then track id; scale = ref_depth * disparity_ref. This assumes the model's disparity has no
  shift (affine-invariant models may have one), so treat the result as approximate.
- Cleaning acts on each track's depth series (the value this tool estimates; the 2D detections are taken as
  given), over the track's valid samples in frame order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import numpy as np

from vda.analysis.camera import Intrinsics, backproject, resolve_intrinsics, to_depth_pixels
from vda.analysis.detections import Detection, TrackError, load_detections, track_key, validate_detections
from vda.analysis.plots import encode_png, trajectory_figure
from vda.analysis.track_io import (
    Track,
    TrackOptions,
    TrackPoint,
    TrackResult,
    TrackSummary,
    plot_path,
    write_track_files,
)
from vda.files import write_atomic
from vda.io.writers import DepthMeta, read_depth

MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation
HAMPEL_REL_FLOOR = 0.005  # sigma >= 0.5% of the local median: quantised (png8) steps are not "outliers"
CLOSED_TOL = 1e-6  # end-to-end distance below this fraction of the path length: the path is closed


# --- robust depth -------------------------------------------------------------------------------------------------


def robust_value(values: np.ndarray) -> tuple[float | None, int]:
    """(median of the finite values > 0, how many there were); None when there are none.

    The median ignores a box's background and mixed edge pixels as long as the object fills most of the region;
    zeros and NaN/inf are what models and formats use for "no depth" (sky clipped, masked, padding).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v) & (v > 0)]
    return (float(np.median(v)), int(v.size)) if v.size else (None, 0)


def point_region(u: float, v: float, width: int, height: int, window: int) -> tuple[slice, slice]:
    """Rows, cols of the window x window block around depth pixel (u, v), clipped to the map."""
    r = window // 2
    cu = min(max(int(round(u)), 0), width - 1)
    cv = min(max(int(round(v)), 0), height - 1)
    return slice(max(cv - r, 0), min(cv + r + 1, height)), slice(max(cu - r, 0), min(cu + r + 1, width))


def box_region(box: Sequence[float], width: int, height: int) -> tuple[slice, slice]:
    """Rows, cols of the depth pixels whose centres lie in box (depth-map coordinates); at least the centre pixel."""
    x1, y1, x2, y2 = box
    c0, c1 = max(math.ceil(x1), 0), min(math.floor(x2), width - 1) + 1
    r0, r1 = max(math.ceil(y1), 0), min(math.floor(y2), height - 1) + 1
    if c1 <= c0 or r1 <= r0:  # smaller than a pixel: the pixel nearest its centre
        return point_region((x1 + x2) / 2, (y1 + y2) / 2, width, height, 1)
    return slice(r0, r1), slice(c0, c1)


# --- cleaning -----------------------------------------------------------------------------------------------------


def hampel(values: np.ndarray, half_window: int = 3, n_sigmas: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """(cleaned, changed): values further than n_sigmas robust sigmas from their window's median become that median.

    sigma = 1.4826 * MAD, floored at 0.5% of the median so that a flat run with one quantisation step does not
    count as an outlier. Windows shrink at the ends.
    """
    x = np.asarray(values, dtype=np.float64)
    out = x.copy()
    for i in range(x.size):
        w = x[max(i - half_window, 0) : i + half_window + 1]
        m = float(np.median(w))
        sigma = max(MAD_TO_SIGMA * float(np.median(np.abs(w - m))), HAMPEL_REL_FLOOR * abs(m))
        if abs(x[i] - m) > n_sigmas * sigma:
            out[i] = m
    return out, out != x


def median_filter(values: np.ndarray, half_window: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(filtered, changed): each value replaced by the median of its window (shrinking at the ends)."""
    x = np.asarray(values, dtype=np.float64)
    out = np.array([np.median(x[max(i - half_window, 0) : i + half_window + 1]) for i in range(x.size)])
    return out, out != x


CLEANERS = ("none", "hampel", "median")
BOX_POINTS = ("center", "bottom")  # a box's 2D point: its centre, or its bottom centre


def clean_series(values: np.ndarray, method: str, half_window: int, n_sigmas: float) -> tuple[np.ndarray, np.ndarray]:
    if method == "hampel":
        return hampel(values, half_window, n_sigmas)
    if method == "median":
        return median_filter(values, half_window)
    if method == "none":
        x = np.asarray(values, dtype=np.float64)
        return x.copy(), np.zeros(x.shape, bool)
    raise TrackError(f"unknown cleaning method {method!r}; choose one of {', '.join(CLEANERS)}")


# --- summary metrics ----------------------------------------------------------------------------------------------


def path_length(points: np.ndarray) -> float:
    """Sum of the straight segments between consecutive points (N x 3)."""
    p = np.asarray(points, dtype=np.float64)
    return float(np.linalg.norm(np.diff(p, axis=0), axis=1).sum()) if len(p) > 1 else 0.0


def end_to_end(points: np.ndarray) -> float:
    p = np.asarray(points, dtype=np.float64)
    return float(np.linalg.norm(p[-1] - p[0])) if len(p) > 1 else 0.0


def tortuosity(points: np.ndarray) -> tuple[float | None, str | None]:
    """(path length / end-to-end distance, None), or (None, why) where that ratio is undefined.

    1 for a straight walk, pi/2 for a half circle; a path that comes back to its start (a full circle) has no
    finite value, so it is null with the reason rather than a huge number dominated by rounding.
    """
    p = np.asarray(points, dtype=np.float64)
    if len(p) < 2:
        return None, "fewer than two points with depth"
    length, chord = path_length(p), end_to_end(p)
    if length == 0:
        return None, "the point does not move"
    if chord <= CLOSED_TOL * length:
        return None, "the path returns to its start (end-to-end distance ~0), so tortuosity is undefined"
    return length / chord, None


def summarize(points: np.ndarray, n_detections: int, n_cleaned: int, times: Sequence[float]) -> TrackSummary:
    """Per-track summary: path length, tortuosity, outliers (points cleaning changed), valid-depth ratio."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    tort, note = tortuosity(p)
    length = path_length(p)
    duration = float(times[-1] - times[0]) if len(times) > 1 else 0.0
    return TrackSummary(
        detections=n_detections,
        with_depth=len(p),
        valid_depth_ratio=len(p) / n_detections if n_detections else 0.0,
        path_length=length,
        end_to_end=end_to_end(p),
        tortuosity=tort,
        tortuosity_note=note,
        outliers=n_cleaned,
        duration_s=duration,
        mean_speed=length / duration if duration > 0 else None,
    )


# --- the command --------------------------------------------------------------------------------------------------


def _check_options(o: TrackOptions, meta: DepthMeta) -> None:
    if o.window < 1 or o.window % 2 == 0:
        raise TrackError(f"--window {o.window} must be an odd number of depth pixels >= 1; pass e.g. --window 5")
    if o.box_point not in BOX_POINTS:
        raise TrackError(f"--box-point {o.box_point!r} is not center or bottom; pass one of them")
    if o.clean not in CLEANERS:
        raise TrackError(f"--clean {o.clean!r} is unknown; choose one of {', '.join(CLEANERS)}")
    if o.clean_window < 1:
        raise TrackError(f"--clean-window {o.clean_window} must be >= 1 (samples each side); pass e.g. 3")
    if not o.clean_sigmas > 0:
        raise TrackError(f"--clean-sigmas {o.clean_sigmas} must be > 0; pass e.g. 3")
    if o.ref_depth is not None:
        if meta.metric:
            raise TrackError("--ref-depth scales relative depth, but this output is metric (metres); remove it")
        if not (math.isfinite(o.ref_depth) and o.ref_depth > 0):
            raise TrackError(f"--ref-depth {o.ref_depth} is not a positive distance in metres; pass e.g. 2.5")
    elif o.ref_track is not None or o.ref_frame is not None:
        raise TrackError("--ref-track/--ref-frame choose the reference for --ref-depth; pass --ref-depth METRES too")


@dataclass(frozen=True)
class Sample:
    """A detection's 2D point in detector pixels and the robust stored value (metres or disparity) of its region."""

    u: float
    v: float
    box: tuple[float, float, float, float] | None  # the box clipped to the image; None for a point
    value: float | None  # None: no usable value in the region
    pixels: int  # how many values the median used


def _region(
    d: Detection, image_size: tuple[int, int], dsize: tuple[int, int], window: int, box_point: str
) -> tuple[float, float, tuple | None, tuple[slice, slice]]:
    """(u, v, clipped box or None, depth-map rows and cols) of a detection (conventions in the module docstring)."""
    if d.point is not None:
        u, v = d.point
        return u, v, None, point_region(*to_depth_pixels(u, v, image_size, dsize), *dsize, window)
    w, h = image_size
    x1, y1, x2, y2 = d.box
    box = (min(max(x1, 0), w), min(max(y1, 0), h), min(max(x2, 0), w), min(max(y2, 0), h))
    u = (box[0] + box[2]) / 2
    v = (box[1] + box[3]) / 2 if box_point == "center" else box[3]
    x1d, y1d = to_depth_pixels(box[0], box[1], image_size, dsize)
    x2d, y2d = to_depth_pixels(box[2], box[3], image_size, dsize)
    return u, v, box, box_region((x1d, y1d, x2d, y2d), *dsize)


def sample_depths(
    dets: list[Detection], depth_dir: Path, meta: DepthMeta, image_size: tuple[int, int], window: int, box_point: str
) -> list[Sample]:
    """Per detection, its `Sample`. Each depth frame is read once, through the quantisation in depth_meta.json."""
    dsize = (meta.width, meta.height)
    by_frame: dict[int, list[int]] = {}
    for i, d in enumerate(dets):
        by_frame.setdefault(d.frame, []).append(i)
    out: dict[int, Sample] = {}
    for frame in sorted(by_frame):
        depth = read_depth(depth_dir, frame, meta)
        if depth.shape[:2] != (meta.height, meta.width):
            raise TrackError(
                f"depth frame {frame} is {depth.shape[1]}x{depth.shape[0]}, depth_meta.json says "
                f"{meta.width}x{meta.height}; the output folder is damaged, rerun vda merge"
            )
        for i in by_frame[frame]:
            u, v, box, (rows, cols) = _region(dets[i], image_size, dsize, window, box_point)
            value, support = robust_value(depth[rows, cols])
            out[i] = Sample(float(u), float(v), box, value, support)
    return [out[i] for i in range(len(dets))]


def reference_scale(
    dets: list[Detection], samples: list[Sample], ref_depth: float, ref_track, ref_frame: int | None
) -> tuple[float, dict]:
    """scale with depth = scale / disparity, from the known depth of one detection (see the module docstring)."""
    order = sorted(range(len(dets)), key=lambda i: (dets[i].frame, track_key(dets[i].track)))
    for i in order:
        d = dets[i]
        if ref_track is not None and d.track != ref_track:
            continue
        if ref_frame is not None and d.frame != ref_frame:
            continue
        if samples[i].value is not None:
            disp = samples[i].value
            return ref_depth * disp, {"track": d.track, "frame": d.frame, "depth_m": ref_depth, "disparity": disp}
    which = [f"of track {ref_track}"] if ref_track is not None else []
    which += [f"in frame {ref_frame}"] if ref_frame is not None else []
    raise TrackError(
        f"no detection {' '.join(which) or 'at all'} has a valid depth to anchor --ref-depth; choose another with "
        "--ref-track/--ref-frame"
    )


def depth_scale(
    dets: list[Detection], samples: list[Sample], meta: DepthMeta, opts: TrackOptions
) -> tuple[float, dict | None, str, str]:
    """(scale, reference, units, depth_is): how stored values become depths, and that in words for TRACK.json."""
    if meta.metric:
        return 1.0, None, "m", "metric depth in metres"
    if opts.ref_depth is not None:
        scale, reference = reference_scale(dets, samples, opts.ref_depth, opts.ref_track, opts.ref_frame)
        return (
            scale,
            reference,
            "m",
            "metres from relative disparity: depth = scale / disparity, scale from --ref-depth",
        )
    return 1.0, None, "relative", "relative: depth = 1 / disparity, true up to one unknown factor (no --ref-depth)"


def _raw_point(d: Detection, s: Sample, metric: bool, scale: float, fps: Fraction) -> TrackPoint:
    """A detection's sample as a track point: its depth before cleaning, no 3D position yet."""
    depth = None if s.value is None else (s.value if metric else scale / s.value)
    return TrackPoint(
        frame=d.frame,
        time_s=float(d.frame / fps),
        u=s.u,
        v=s.v,
        box=s.box,
        pixels=s.pixels,
        disparity=None if metric else s.value,
        depth_raw=depth,
        depth=depth,
    )


def _finish_track(
    tid: int | str, points: list[TrackPoint], k: Intrinsics, clean: str, clean_window: int, clean_sigmas: float
) -> Track:
    """Clean the depth series of the valid points, back-project them and summarise the track."""
    valid = [i for i, p in enumerate(points) if p.valid]
    raw = np.array([points[i].depth_raw for i in valid], dtype=np.float64)
    cleaned, changed = clean_series(raw, clean, clean_window, clean_sigmas)
    uv = np.array([[points[i].u, points[i].v] for i in valid], dtype=np.float64).reshape(-1, 2)
    x, y, z = backproject(uv[:, 0], uv[:, 1], cleaned, k)
    points = list(points)
    for j, i in enumerate(valid):
        xyz = {"x": float(x[j]), "y": float(y[j]), "z": float(z[j])}
        points[i] = replace(points[i], depth=float(cleaned[j]), cleaned=bool(changed[j]), **xyz)
    xyz = np.stack([x, y, z], axis=1) if valid else np.zeros((0, 3))
    summary = summarize(xyz, len(points), int(changed.sum()), [points[i].time_s for i in valid])
    return Track(tid, summary, tuple(points))


def build_tracks(
    dets: list[Detection],
    samples: list[Sample],
    *,
    metric: bool,
    scale: float,
    k: Intrinsics,
    fps: Fraction,
    clean: str,
    clean_window: int,
    clean_sigmas: float,
) -> list[Track]:
    """Group by track (ids in `track_key` order), convert to depth, clean each depth series, back-project, summarise."""
    groups: dict = {}
    for i, d in enumerate(dets):
        groups.setdefault(d.track, []).append(i)
    tracks = []
    for tid in sorted(groups, key=track_key):
        idx = sorted(groups[tid], key=lambda i: dets[i].frame)
        points = [_raw_point(dets[i], samples[i], metric, scale, fps) for i in idx]
        tracks.append(_finish_track(tid, points, k, clean, clean_window, clean_sigmas))
    return tracks


def write_plots(result: TrackResult, output: Path) -> None:
    """One TRACK_track<ID>.png per track, next to `output`."""
    for t in result.tracks:
        img = trajectory_figure(t, units=result.units, title=f"track {t.id} ({output.stem})")
        write_atomic(plot_path(output, t.id), encode_png(img))


def run_track(detections: Path, depth_dir: Path, output: Path, opts: TrackOptions) -> TrackResult:
    """The whole `vda track`: read, sample, scale, clean, back-project; write JSON, CSV and plots."""
    detections, depth_dir, output = Path(detections), Path(depth_dir), Path(output)
    if output.suffix.lower() != ".json":
        raise TrackError(f"-o {output} must name a .json file; the CSV and plots take its stem (TRACK.csv, ...)")
    meta = DepthMeta.load(depth_dir)
    _check_options(opts, meta)
    image_size = opts.image_size or (meta.width, meta.height)
    dets = load_detections(detections)
    validate_detections(dets, detections.name, meta.frame_count, image_size)
    k = resolve_intrinsics(*image_size, fx=opts.fx, fy=opts.fy, cx=opts.cx, cy=opts.cy, fov=opts.fov)
    samples = sample_depths(dets, depth_dir, meta, image_size, opts.window, opts.box_point)
    scale, reference, units, depth_is = depth_scale(dets, samples, meta, opts)
    tracks = build_tracks(
        dets,
        samples,
        metric=meta.metric,
        scale=scale,
        k=k,
        fps=Fraction(meta.fps),
        clean=opts.clean,
        clean_window=opts.clean_window,
        clean_sigmas=opts.clean_sigmas,
    )
    result = TrackResult(detections, depth_dir, meta, opts, k, units, depth_is, scale, reference, tuple(tracks))
    output.parent.mkdir(parents=True, exist_ok=True)
    write_track_files(result, output)
    if opts.plots:
        write_plots(result, output)
    return result
