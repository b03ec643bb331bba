"""Depth at tracked points: 2D detections + merged depth maps -> 3D camera-space trajectories.

`vda track --detections DET --depth-dir OUT -o TRACK.json` reads detections (JSON or CSV, formats below), samples
each one's depth robustly from the stored maps (through `depth_meta.json`, so png16/png8 come back as floats),
optionally removes outliers from each track's depth series, back-projects to 3D camera coordinates and writes
TRACK.json, TRACK.csv and one plot per track (TRACK_track<ID>.png).

Detections, JSON: a list of entries, or an object ``{"detections": [...]}``; one entry per track per frame::

    {"frame": 0, "track": 1, "point": [320.5, 240.0]}             # a contact point (x, y)
    {"frame": 0, "track": "car-2", "box": [100, 80, 180, 200]}    # a box [x1, y1, x2, y2], x1 <= x2, y1 <= y2

Detections, CSV: a header row naming the columns (any order, other columns such as `score` are ignored), then
one row per detection; a row fills either x,y or x1,y1,x2,y2 and leaves the other cells empty::

    frame,track,x,y,x1,y1,x2,y2
    0,1,320.5,240,,,,
    0,car-2,,,100,80,180,200

`frame` is a 0-based frame index of the depth output; `track` is a non-negative integer or a name of letters,
digits, `_` and `-` (digit-only names are the integer, so JSON and CSV give the same ids). Coordinates are pixels
of the detector's image (`image_size`, by default the depth maps' size) with OpenCV's convention: pixel (i, j) has
its centre at (i, j). Points must lie in [0, W] x [0, H]; boxes are clipped to the image and must overlap it.

Conventions that the numbers depend on, in one place:

- Depth of a detection: the median of the stored values in the box, or in a `window` x `window` block of depth
  pixels around the point, ignoring values that are not finite or not > 0 (no depth and no disparity is <= 0).
- Relative models store relative inverse depth (disparity). Then depth = scale / disparity, with scale = 1 (units
  "relative": shape right up to one unknown factor) unless `ref_depth` is given: the true depth Z in metres (along
  the optical axis, not the Euclidean range) of the reference detection, by default the first detection with a valid
  depth ordered by frame then track id; scale = ref_depth * disparity_ref. This assumes the model's disparity has no
  shift (affine-invariant models may have one), so treat the result as approximate.
- Camera: X = (u - cx) * Z / fx, Y = (v - cy) * Z / fy (X right, Y down, Z forward, OpenCV). Intrinsics are in
  pixels of the detector's image. Default: fx = fy = 470.4 * W / 640, cx = (W - 1) / 2, cy = (H - 1) / 2. 470.4
  is the default focal of the authors' depth_to_pointcloud.py scripts, which use it unscaled at any resolution; we
  read it as the focal of a 640-wide frame (68.5 degrees horizontal field of view) and keep that field of view at
  every resolution. `fov` (horizontal, degrees) gives fx = fy = (W / 2) / tan(fov / 2).
- Cleaning acts on each track's depth series (the value this tool estimates; the 2D detections are taken as
  given), over the track's valid samples in frame order.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from vda.io.writers import DepthMeta, read_depth, write_atomic, write_json

DEFAULT_FOCAL = 470.4  # the authors' default focal length, read as pixels of a 640-wide frame
DEFAULT_FOCAL_WIDTH = 640
MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation
HAMPEL_REL_FLOOR = 0.005  # sigma >= 0.5% of the local median: quantised (png8) steps are not "outliers"
CLOSED_TOL = 1e-6  # end-to-end distance below this fraction of the path length: the path is closed
TRACK_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
OUTPUT_SCHEMA = 1


class TrackError(ValueError):
    """Bad detections or options; the message names the problem and the fix."""


class IntrinsicsError(ValueError):
    """Inconsistent camera intrinsics flags; the message names the problem and the fix."""


# --- camera -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels of a `width` x `height` image (pixel centres at integer coordinates)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    source: str = "given"

    def scaled(self, width: int, height: int) -> Intrinsics:
        """The same camera for the image resized to width x height (pixel centres move as (u + 0.5) * s - 0.5)."""
        sx, sy = width / self.width, height / self.height
        return Intrinsics(
            self.fx * sx,
            self.fy * sy,
            (self.cx + 0.5) * sx - 0.5,
            (self.cy + 0.5) * sy - 0.5,
            width,
            height,
            self.source,
        )

    def as_dict(self) -> dict:
        return {
            "fx": self.fx,
            "fy": self.fy,
            "cx": self.cx,
            "cy": self.cy,
            "image_size": [self.width, self.height],
            "source": self.source,
        }


def resolve_intrinsics(
    width: int,
    height: int,
    fx: float | None = None,
    fy: float | None = None,
    cx: float | None = None,
    cy: float | None = None,
    fov: float | None = None,
) -> Intrinsics:
    """Intrinsics from the flags: --fov, or --fx/--fy (one sets both: square pixels), else the scaled default."""
    if width <= 0 or height <= 0:
        raise IntrinsicsError(f"image size {width}x{height} is not positive; pass --image-size WxH")
    if fov is not None and (fx is not None or fy is not None):
        raise IntrinsicsError("--fov and --fx/--fy both set the focal length; pass one of them")
    for name, value in (("--fx", fx), ("--fy", fy)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise IntrinsicsError(f"{name} {value} is not a positive number of pixels; pass e.g. {name} 1000")
    for name, value in (("--cx", cx), ("--cy", cy)):
        if value is not None and not math.isfinite(value):
            raise IntrinsicsError(f"{name} {value} is not a finite number of pixels; pass the principal point")
    if fov is not None:
        if not (math.isfinite(fov) and 0 < fov < 180):
            raise IntrinsicsError(f"--fov {fov} is not an angle in (0, 180) degrees; pass the horizontal field of view")
        fx = fy = (width / 2) / math.tan(math.radians(fov) / 2)
        source = f"--fov {fov:g} degrees (horizontal)"
    elif fx is None and fy is None:
        fx = fy = DEFAULT_FOCAL * width / DEFAULT_FOCAL_WIDTH
        source = f"default: f = {DEFAULT_FOCAL} * W / {DEFAULT_FOCAL_WIDTH}"
    else:
        fx, fy = fx if fx is not None else fy, fy if fy is not None else fx
        source = "given"
    cx = (width - 1) / 2 if cx is None else cx
    cy = (height - 1) / 2 if cy is None else cy
    return Intrinsics(float(fx), float(fy), float(cx), float(cy), width, height, source)


def backproject(u, v, z, k: Intrinsics) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel (u, v) at depth z -> camera (X, Y, Z): X = (u - cx) Z / fx, Y = (v - cy) Z / fy."""
    u, v, z = (np.asarray(a, dtype=np.float64) for a in (u, v, z))
    return (u - k.cx) * z / k.fx, (v - k.cy) * z / k.fy, z


def to_depth_pixels(x: float, y: float, src: tuple[int, int], dst: tuple[int, int]) -> tuple[float, float]:
    """A coordinate in an image of size src (w, h) -> the same spot in the depth map of size dst (w, h)."""
    return (x + 0.5) * dst[0] / src[0] - 0.5, (y + 0.5) * dst[1] / src[1] - 0.5


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


def summarize(points: np.ndarray, n_detections: int, n_cleaned: int, times: Sequence[float]) -> dict:
    """Per-track summary: path length, tortuosity, outliers (points cleaning changed), valid-depth ratio."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    tort, note = tortuosity(p)
    length = path_length(p)
    duration = float(times[-1] - times[0]) if len(times) > 1 else 0.0
    return {
        "detections": n_detections,
        "with_depth": len(p),
        "valid_depth_ratio": len(p) / n_detections if n_detections else 0.0,
        "path_length": length,
        "end_to_end": end_to_end(p),
        "tortuosity": tort,
        "tortuosity_note": note,
        "outliers": n_cleaned,
        "duration_s": duration,
        "mean_speed": length / duration if duration > 0 else None,
    }


# --- detections ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Detection:
    frame: int
    track: int | str
    where: str  # "line 7" / "entry 5": for messages
    point: tuple[float, float] | None = None
    box: tuple[float, float, float, float] | None = None


def track_key(track: int | str) -> tuple:
    """Sort key: integer ids numerically, then names."""
    return (0, track, "") if isinstance(track, int) else (1, 0, track)


def _track_id(value, err) -> int | str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        err(f"track must be an integer or a name, not {value!r}", "give each track an id such as 1 or car-2")
    if isinstance(value, int):
        if value < 0:
            err(f"track {value} is negative", "use a non-negative integer or a name")
        return value
    value = value.strip()
    if not TRACK_ID.fullmatch(value):
        err(f"track {value!r} is not a valid id", "use a non-negative integer or letters, digits, '_' and '-'")
    return int(value) if value.isdigit() else value


def _number(value, name: str, err) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        err(f"{name} is not a number ({value!r})", "write a decimal number of pixels")
    try:
        out = float(value)
    except ValueError:
        err(f"{name} is not a number ({value!r})", "write a decimal number of pixels")
    if not math.isfinite(out):
        err(f"{name} is not finite ({value!r})", "write a finite number of pixels")
    return out


def _frame(value, err) -> int:
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            err(f"frame is not an integer ({value!r})", "write the 0-based frame index")
    if isinstance(value, bool) or not isinstance(value, int):
        err(f"frame is not an integer ({value!r})", "write the 0-based frame index")
    return value


def _errfn(name: str, where: str):
    def err(problem: str, fix: str):
        raise TrackError(f"{name} {where}: {problem}; {fix}")

    return err


def parse_detections_json(text: str, name: str) -> list[Detection]:
    """Entries of a detections JSON document (format in the module docstring); errors name the entry."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise TrackError(f"{name} line {e.lineno} column {e.colno}: not valid JSON ({e.msg}); fix the syntax") from None
    entries = doc.get("detections") if isinstance(doc, dict) else doc
    if not isinstance(entries, list):
        raise TrackError(f'{name}: expected a list of detections or {{"detections": [...]}}; see docs/track.md')
    out = []
    for i, e in enumerate(entries):
        err = _errfn(name, f"entry {i}")
        if not isinstance(e, dict):
            err(f"is {type(e).__name__}, not an object", 'write {"frame": F, "track": T, "point": [x, y]}')
        for key in ("frame", "track"):
            if key not in e:
                err(f"missing field {key!r}", 'each entry needs "frame", "track" and "point" or "box"')
        has_point, has_box = "point" in e, "box" in e
        if has_point == has_box:
            err(
                "has both a point and a box" if has_point else 'has neither "point" nor "box"',
                'give "point": [x, y] or "box": [x1, y1, x2, y2]',
            )
        key, n = ("point", 2) if has_point else ("box", 4)
        coords = e[key]
        if not isinstance(coords, list) or len(coords) != n:
            err(
                f"{key} must be a list of {n} numbers, not {coords!r}",
                f"write {key} as [{'x, y' if n == 2 else 'x1, y1, x2, y2'}]",
            )
        labels = ("x", "y") if n == 2 else ("x1", "y1", "x2", "y2")
        values = tuple(_number(c, f"{key} {label}", err) for c, label in zip(coords, labels))
        det = Detection(_frame(e["frame"], err), _track_id(e["track"], err), f"entry {i}")
        out.append(_with_coords(det, values))
    return out


def _with_coords(det: Detection, values: tuple) -> Detection:
    if len(values) == 2:
        return Detection(det.frame, det.track, det.where, point=values)
    return Detection(det.frame, det.track, det.where, box=values)


def parse_detections_csv(text: str, name: str) -> list[Detection]:
    """Rows of a detections CSV (header row first; format in the module docstring); errors name the line."""
    reader = csv.reader(io.StringIO(text))
    header, header_line = None, 0
    out = []
    for row in reader:
        line = reader.line_num
        if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
            continue
        if header is None:
            header, header_line = [c.strip().lower() for c in row], line
            for col in ("frame", "track"):
                if col not in header:
                    raise TrackError(
                        f"{name} line {line}: the header has no {col!r} column; name the columns "
                        "frame,track,x,y (points) and/or x1,y1,x2,y2 (boxes)"
                    )
            if not ({"x", "y"} <= set(header) or {"x1", "y1", "x2", "y2"} <= set(header)):
                raise TrackError(
                    f"{name} line {line}: the header has neither x,y nor x1,y1,x2,y2 columns; "
                    "add the point or box columns"
                )
            continue
        err = _errfn(name, f"line {line}")
        if len(row) > len(header):
            err(f"has {len(row)} cells, the header (line {header_line}) has {len(header)}", "remove the extra cells")
        cells = dict(zip(header, (c.strip() for c in row)))

        def get(col, cells=cells):
            return cells.get(col, "")

        point_cols, box_cols = ("x", "y"), ("x1", "y1", "x2", "y2")
        has_point = any(get(c) for c in point_cols)
        has_box = any(get(c) for c in box_cols)
        if has_point == has_box:
            err(
                "has both a point and a box" if has_point else "has neither a point (x,y) nor a box (x1,y1,x2,y2)",
                "fill either x,y or x1,y1,x2,y2",
            )
        cols = point_cols if has_point else box_cols
        for c in cols:
            if not get(c):
                err(f"{c} is empty", f"fill {','.join(cols)}")
        if not get("frame"):
            err("frame is empty", "write the 0-based frame index")
        if not get("track"):
            err("track is empty", "give each track an id such as 1 or car-2")
        values = tuple(_number(get(c), c, err) for c in cols)
        det = Detection(_frame(get("frame"), err), _track_id(get("track"), err), f"line {line}")
        out.append(_with_coords(det, values))
    if header is None:
        raise TrackError(f"{name}: no header row; the first line must name the columns, e.g. frame,track,x,y")
    return out


def load_detections(path: Path) -> list[Detection]:
    """Detections from a .json or .csv file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise TrackError(f"{path.name}: detections must be a .json or .csv file; see docs/track.md for both formats")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FileNotFoundError(f"detections file not found: {path}; check the path") from None
    except UnicodeDecodeError:
        raise TrackError(f"{path.name}: not UTF-8 text; save the detections as UTF-8 JSON or CSV") from None
    dets = parse_detections_json(text, path.name) if suffix == ".json" else parse_detections_csv(text, path.name)
    if not dets:
        raise TrackError(f"{path.name}: holds no detections; add at least one")
    return dets


def validate_detections(dets: list[Detection], name: str, frame_count: int, image_size: tuple[int, int]) -> None:
    """Ranges that need the depth output: frame indices, coordinates inside the image, one detection per track/frame."""
    w, h = image_size
    seen: dict[tuple, str] = {}
    for d in dets:
        err = _errfn(name, d.where)
        if not 0 <= d.frame < frame_count:
            err(
                f"frame {d.frame} is out of range: the depth output has {frame_count} frames (0..{frame_count - 1})",
                "use 0-based indices of the video the depth was computed from",
            )
        if d.point is not None:
            x, y = d.point
            if not (0 <= x <= w and 0 <= y <= h):
                err(
                    f"point ({x:g}, {y:g}) is outside the {w}x{h} image",
                    "give pixel coordinates of that image, or pass --image-size WxH of the detector's frames",
                )
        else:
            x1, y1, x2, y2 = d.box
            if x2 < x1 or y2 < y1:
                err(
                    f"box [{x1:g}, {y1:g}, {x2:g}, {y2:g}] has negative {'width' if x2 < x1 else 'height'}",
                    "write boxes as [x1, y1, x2, y2] with x1 <= x2 and y1 <= y2",
                )
            if x2 < 0 or y2 < 0 or x1 > w or y1 > h:
                err(
                    f"box [{x1:g}, {y1:g}, {x2:g}, {y2:g}] lies outside the {w}x{h} image",
                    "give pixel coordinates of that image, or pass --image-size WxH of the detector's frames",
                )
        key = (d.track, d.frame)
        if key in seen:
            err(f"track {d.track} already has a detection in frame {d.frame} ({seen[key]})", "keep one per frame")
        seen[key] = d.where


# --- the command --------------------------------------------------------------------------------------------------


@dataclass
class TrackOptions:
    image_size: tuple[int, int] | None = None  # detector's frame size (w, h); None: the depth maps' size
    window: int = 5
    box_point: str = "center"  # center | bottom (ground contact of a standing object)
    fx: float | None = None
    fy: float | None = None
    cx: float | None = None
    cy: float | None = None
    fov: float | None = None
    ref_depth: float | None = None
    ref_track: int | str | None = None
    ref_frame: int | None = None
    clean: str = "none"
    clean_window: int = 3
    clean_sigmas: float = 3.0
    plots: bool = True


def _check_options(o: TrackOptions, meta: DepthMeta) -> None:
    if o.window < 1 or o.window % 2 == 0:
        raise TrackError(f"--window {o.window} must be an odd number of depth pixels >= 1; pass e.g. --window 5")
    if o.box_point not in ("center", "bottom"):
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


def sample_depths(
    dets: list[Detection], depth_dir: Path, meta: DepthMeta, image_size: tuple[int, int], window: int, box_point: str
) -> list[dict]:
    """Per detection: (u, v) in detector pixels and the robust stored value (metres or disparity) with its support.

    Each depth frame is read once, through the quantisation recorded in depth_meta.json.
    """
    dsize = (meta.width, meta.height)
    by_frame: dict[int, list[int]] = {}
    for i, d in enumerate(dets):
        by_frame.setdefault(d.frame, []).append(i)
    out: list[dict] = [{} for _ in dets]
    w, h = image_size
    for frame in sorted(by_frame):
        depth = read_depth(depth_dir, frame, meta)
        if depth.shape[:2] != (meta.height, meta.width):
            raise TrackError(
                f"depth frame {frame} is {depth.shape[1]}x{depth.shape[0]}, depth_meta.json says "
                f"{meta.width}x{meta.height}; the output folder is damaged, rerun vda merge"
            )
        for i in by_frame[frame]:
            d = dets[i]
            if d.point is not None:
                u, v = d.point
                rows, cols = point_region(*to_depth_pixels(u, v, image_size, dsize), meta.width, meta.height, window)
                box = None
            else:
                x1, y1, x2, y2 = d.box
                box = (min(max(x1, 0), w), min(max(y1, 0), h), min(max(x2, 0), w), min(max(y2, 0), h))
                u = (box[0] + box[2]) / 2
                v = (box[1] + box[3]) / 2 if box_point == "center" else box[3]
                x1d, y1d = to_depth_pixels(box[0], box[1], image_size, dsize)
                x2d, y2d = to_depth_pixels(box[2], box[3], image_size, dsize)
                rows, cols = box_region((x1d, y1d, x2d, y2d), meta.width, meta.height)
            value, support = robust_value(depth[rows, cols])
            out[i] = {"u": float(u), "v": float(v), "box": box, "value": value, "pixels": support}
    return out


def reference_scale(
    dets: list[Detection], samples: list[dict], ref_depth: float, ref_track, ref_frame: int | None
) -> tuple[float, dict]:
    """scale with depth = scale / disparity, from the known depth of one detection (see the module docstring)."""
    order = sorted(range(len(dets)), key=lambda i: (dets[i].frame, track_key(dets[i].track)))
    for i in order:
        d = dets[i]
        if ref_track is not None and d.track != ref_track:
            continue
        if ref_frame is not None and d.frame != ref_frame:
            continue
        if samples[i]["value"] is not None:
            disp = samples[i]["value"]
            return ref_depth * disp, {"track": d.track, "frame": d.frame, "depth_m": ref_depth, "disparity": disp}
    which = [f"of track {ref_track}"] if ref_track is not None else []
    which += [f"in frame {ref_frame}"] if ref_frame is not None else []
    raise TrackError(
        f"no detection {' '.join(which) or 'at all'} has a valid depth to anchor --ref-depth; choose another with "
        "--ref-track/--ref-frame"
    )


def build_tracks(
    dets: list[Detection],
    samples: list[dict],
    *,
    metric: bool,
    scale: float,
    k: Intrinsics,
    fps: Fraction,
    clean: str,
    clean_window: int,
    clean_sigmas: float,
) -> list[dict]:
    """Group by track, convert to depth, clean each depth series, back-project and summarise."""
    groups: dict = {}
    for i, d in enumerate(dets):
        groups.setdefault(d.track, []).append(i)
    tracks = []
    for tid in sorted(groups, key=track_key):
        idx = sorted(groups[tid], key=lambda i: dets[i].frame)
        points = []
        for i in idx:
            s, d = samples[i], dets[i]
            value = s["value"]
            depth = None if value is None else (value if metric else scale / value)
            points.append(
                {
                    "frame": d.frame,
                    "time_s": float(d.frame / fps),
                    "u": s["u"],
                    "v": s["v"],
                    "box": list(s["box"]) if s["box"] is not None else None,
                    "pixels": s["pixels"],
                    "disparity": None if metric else value,
                    "depth_raw": depth,
                    "depth": depth,
                    "x": None,
                    "y": None,
                    "z": None,
                    "valid": depth is not None,
                    "cleaned": False,
                }
            )
        valid = [p for p in points if p["valid"]]
        raw = np.array([p["depth_raw"] for p in valid], dtype=np.float64)
        cleaned, changed = clean_series(raw, clean, clean_window, clean_sigmas)
        uv = np.array([[p["u"], p["v"]] for p in valid], dtype=np.float64).reshape(-1, 2)
        x, y, z = backproject(uv[:, 0], uv[:, 1], cleaned, k)
        for j, p in enumerate(valid):
            p.update(depth=float(cleaned[j]), x=float(x[j]), y=float(y[j]), z=float(z[j]), cleaned=bool(changed[j]))
        xyz = np.stack([x, y, z], axis=1) if valid else np.zeros((0, 3))
        summary = summarize(xyz, len(points), int(changed.sum()), [p["time_s"] for p in valid])
        tracks.append({"track": tid, "summary": summary, "points": points})
    return tracks


CSV_COLUMNS = (
    "track", "frame", "time_s", "u", "v", "pixels", "disparity", "depth_raw", "depth", "x", "y", "z", "valid", "cleaned"
)  # fmt: skip


def tracks_csv(tracks: list[dict]) -> str:
    """One row per detection; empty cells where there is no value (no depth, or disparity of a metric model)."""
    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(CSV_COLUMNS)
    for t in tracks:
        for p in t["points"]:
            row = {**p, "track": t["track"]}
            wr.writerow(
                ["" if row[c] is None else (repr(row[c]) if isinstance(row[c], float) else row[c]) for c in CSV_COLUMNS]
            )
    return buf.getvalue()


def _fmt(x, unit: str = "") -> str:
    return "n/a" if x is None else f"{x:.4g}{unit}"


def summary_line(t: dict, units: str) -> str:
    s = t["summary"]
    u = f" {units}" if units == "m" else " (relative)"
    tort = _fmt(s["tortuosity"]) if s["tortuosity"] is not None else "undefined"
    return (
        f"track {t['track']}: {s['detections']} detections, {s['with_depth']} with depth "
        f"({100 * s['valid_depth_ratio']:.0f}%), path {_fmt(s['path_length'])}{u}, tortuosity {tort}, "
        f"{s['outliers']} cleaned"
    )


def run_track(detections: Path, depth_dir: Path, output: Path, opts: TrackOptions) -> dict:
    """The whole `vda track`: read, sample, scale, clean, back-project; write JSON, CSV and plots. Returns the doc."""
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

    scale, reference = 1.0, None
    if meta.metric:
        units, kind = "m", "metric depth in metres"
    elif opts.ref_depth is not None:
        scale, reference = reference_scale(dets, samples, opts.ref_depth, opts.ref_track, opts.ref_frame)
        units, kind = "m", "metres from relative disparity: depth = scale / disparity, scale from --ref-depth"
    else:
        units, kind = "relative", "relative: depth = 1 / disparity, true up to one unknown factor (no --ref-depth)"
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
    doc = {
        "schema_version": OUTPUT_SCHEMA,
        "detections": str(detections),
        "depth_dir": str(depth_dir),
        "depth": {
            "model": "metric" if meta.metric else "relative",
            "stored": meta.meaning,
            "units": units,
            "depth_is": kind,
            "scale": None if meta.metric else scale,
            "reference": reference,
            "note": None if meta.metric else "assumes the relative disparity has no shift; approximate",
            "sampling": f"median of finite values > 0 in the box or a {opts.window}x{opts.window} window",
            "box_point": opts.box_point,
        },
        "camera": {
            **k.as_dict(),
            "axes": "X right, Y down, Z forward (OpenCV)",
            "depth_size": [meta.width, meta.height],
        },
        "cleaning": {
            "method": opts.clean,
            "half_window": opts.clean_window,
            "sigmas": opts.clean_sigmas if opts.clean == "hampel" else None,
            "changed": sum(t["summary"]["outliers"] for t in tracks),
        },
        "fps": meta.fps,
        "tracks": tracks,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json(output, doc)
    write_atomic(output.with_suffix(".csv"), tracks_csv(tracks).encode())
    if opts.plots:
        from vda.analysis.plots import encode_png, trajectory_figure

        for t in tracks:
            img = trajectory_figure(t, units=units, title=f"track {t['track']} ({output.stem})")
            write_atomic(plot_path(output, t["track"]), encode_png(img))
    return doc


def plot_path(output: Path, track: int | str) -> Path:
    return Path(output).with_name(f"{Path(output).stem}_track{track}.png")
