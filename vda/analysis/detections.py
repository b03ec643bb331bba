"""The detections that `vda track` reads: 2D points or boxes per track per frame, from JSON or CSV.

The contract: `load_detections` returns every detection of a file or raises `TrackError` (a `vda.errors.InputError`)
whose one line names the file and the entry or line, the problem and the fix; `validate_detections` then checks what
needs the depth output (frame range, image size, one detection per track and frame). docs/track.md shows both formats.

JSON: a list of entries, or an object ``{"detections": [...]}``; one entry per track per frame::

    {"frame": 0, "track": 1, "point": [320.5, 240.0]}             # a contact point (x, y)
    {"frame": 0, "track": "car-2", "box": [100, 80, 180, 200]}    # a box [x1, y1, x2, y2], x1 <= x2, y1 <= y2

CSV: a header row naming the columns (any order, other columns such as `score` are ignored), then one row per
detection; a row fills either x,y or x1,y1,x2,y2 and leaves the other cells empty::

    frame,track,x,y,x1,y1,x2,y2
    0,1,320.5,240,,,,
    0,car-2,,,100,80,180,200

`frame` is a 0-based frame index of the depth output; `track` is a non-negative integer or a name of letters,
digits, `_` and `-` (digit-only names are the integer, so JSON and CSV give the same ids). Coordinates are pixels
of the detector's image (`image_size`, by default the depth maps' size) with OpenCV's convention: pixel (i, j) has
its centre at (i, j). Points must lie in [0, W] x [0, H]; boxes must overlap the image (`vda.analysis.track` clips
them to it).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from vda.errors import InputError

TRACK_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class TrackError(InputError, ValueError):
    """Bad detections or `vda track` options; the message names the problem and the fix."""


class DetectionsNotFound(TrackError, FileNotFoundError):
    """The detections file is not there: a `TrackError` for the CLI, still a `FileNotFoundError` for Python callers."""


@dataclass(frozen=True)
class Detection:
    """One detection as read: exactly one of `point` and `box` is set; `where` names its place for messages."""

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
        raise DetectionsNotFound(f"detections file not found: {path}; check the path") from None
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
