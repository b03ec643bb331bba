"""What one `vda track` run is and writes: its options, its typed tracks, and their files, in one place.

The contract (docs/track.md, "Outputs"): `TrackResult.to_json()` is TRACK.json's document and `tracks_csv` is
TRACK.csv, both written by `write_track_files`; `plot_path` names TRACK_track<ID>.png, and `summary_line` is the line
`vda track` prints per track. Keys, their order, columns and number formats here are what users' scripts read, so
they change only with `OUTPUT_SCHEMA`. How the numbers are made is `vda.analysis.track`'s business; this module only
holds and writes them, so that the plots and the CLI read attributes instead of knowing the files' keys.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass
from pathlib import Path

from vda.analysis.camera import Intrinsics
from vda.files import write_atomic, write_json
from vda.io.writers import DepthMeta

OUTPUT_SCHEMA = 1
CSV_COLUMNS = (
    "track", "frame", "time_s", "u", "v", "pixels", "disparity", "depth_raw", "depth", "x", "y", "z", "valid", "cleaned"
)  # fmt: skip


@dataclass
class TrackOptions:
    """The settings of one `vda track` run (its flags); TRACK.json records those that shape the numbers."""

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


@dataclass(frozen=True)
class TrackPoint:
    """One detection of a track (one frame): its 2D point, the depth it got, and its 3D camera position.

    A point without depth (no usable value in its region) has depth, x, y and z None and is not `valid`.
    """

    frame: int
    time_s: float
    u: float  # detector pixels: the point, or the box's centre / bottom centre
    v: float
    box: tuple[float, float, float, float] | None  # the box clipped to the image; None for a point detection
    pixels: int  # how many depth values the median used
    disparity: float | None  # the stored value of a relative model; None for a metric one
    depth_raw: float | None  # before cleaning
    depth: float | None  # after cleaning
    x: float | None = None
    y: float | None = None
    z: float | None = None
    cleaned: bool = False  # cleaning changed this point's depth

    @property
    def valid(self) -> bool:
        return self.depth is not None

    def to_json(self) -> dict:
        """The point as in TRACK.json (and, by column name, TRACK.csv)."""
        return {
            "frame": self.frame,
            "time_s": self.time_s,
            "u": self.u,
            "v": self.v,
            "box": list(self.box) if self.box is not None else None,
            "pixels": self.pixels,
            "disparity": self.disparity,
            "depth_raw": self.depth_raw,
            "depth": self.depth,
            "x": self.x,
            "y": self.y,
            "z": self.z,
            "valid": self.valid,
            "cleaned": self.cleaned,
        }


@dataclass(frozen=True)
class TrackSummary:
    """Per-track figures over the valid points in frame order (definitions in docs/track.md, "Outputs")."""

    detections: int
    with_depth: int
    valid_depth_ratio: float
    path_length: float
    end_to_end: float
    tortuosity: float | None  # None where undefined, with the reason in tortuosity_note
    tortuosity_note: str | None
    outliers: int  # points that cleaning changed
    duration_s: float
    mean_speed: float | None  # None when the track lasts no time


@dataclass(frozen=True)
class Track:
    """One track: its id as in the detections, its summary and its points in frame order."""

    id: int | str
    summary: TrackSummary
    points: tuple[TrackPoint, ...]

    @property
    def valid_points(self) -> list[TrackPoint]:
        return [p for p in self.points if p.valid]

    def to_json(self) -> dict:
        return {"track": self.id, "summary": asdict(self.summary), "points": [p.to_json() for p in self.points]}


@dataclass(frozen=True)
class TrackResult:
    """One `vda track` run: its tracks and what their numbers mean (the rest of TRACK.json)."""

    detections: Path
    depth_dir: Path
    meta: DepthMeta  # the depth output the values came from
    options: TrackOptions
    camera: Intrinsics  # in pixels of the detector's frames
    units: str  # "m" or "relative"
    depth_is: str  # how a depth was made from the stored values, in words
    scale: float  # relative models: depth = scale / disparity (1 without --ref-depth)
    reference: dict | None  # the detection that anchors --ref-depth: track, frame, depth_m, disparity
    tracks: tuple[Track, ...]

    @property
    def metric(self) -> bool:
        return self.meta.metric

    @property
    def changed(self) -> int:
        """Points that cleaning changed, over all tracks."""
        return sum(t.summary.outliers for t in self.tracks)

    def to_json(self) -> dict:
        """TRACK.json's document."""
        meta, o = self.meta, self.options
        return {
            "schema_version": OUTPUT_SCHEMA,
            "detections": str(self.detections),
            "depth_dir": str(self.depth_dir),
            "depth": {
                "model": "metric" if meta.metric else "relative",
                "stored": meta.meaning,
                "units": self.units,
                "depth_is": self.depth_is,
                "scale": None if meta.metric else self.scale,
                "reference": self.reference,
                "note": None if meta.metric else "assumes the relative disparity has no shift; approximate",
                "sampling": f"median of finite values > 0 in the box or a {o.window}x{o.window} window",
                "box_point": o.box_point,
            },
            "camera": {
                **self.camera.as_dict(),
                "axes": "X right, Y down, Z forward (OpenCV)",
                "depth_size": [meta.width, meta.height],
            },
            "cleaning": {
                "method": o.clean,
                "half_window": o.clean_window,
                "sigmas": o.clean_sigmas if o.clean == "hampel" else None,
                "changed": self.changed,
            },
            "fps": meta.fps,
            "tracks": [t.to_json() for t in self.tracks],
        }


def tracks_csv(tracks: tuple[Track, ...] | list[Track]) -> str:
    """One row per detection; empty cells where there is no value (no depth, or disparity of a metric model)."""
    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(CSV_COLUMNS)
    for t in tracks:
        for p in t.points:
            row = {**p.to_json(), "track": t.id}
            wr.writerow(
                ["" if row[c] is None else (repr(row[c]) if isinstance(row[c], float) else row[c]) for c in CSV_COLUMNS]
            )
    return buf.getvalue()


def write_track_files(result: TrackResult, output: Path) -> None:
    """TRACK.json at `output` and TRACK.csv next to it (the folder must exist)."""
    output = Path(output)
    write_json(output, result.to_json())
    write_atomic(output.with_suffix(".csv"), tracks_csv(result.tracks).encode())


def plot_path(output: Path, track: int | str) -> Path:
    return Path(output).with_name(f"{Path(output).stem}_track{track}.png")


def _fmt(x, unit: str = "") -> str:
    return "n/a" if x is None else f"{x:.4g}{unit}"


def summary_line(track: Track, units: str) -> str:
    """The line `vda track` prints for a track."""
    s = track.summary
    u = f" {units}" if units == "m" else " (relative)"
    tort = _fmt(s.tortuosity) if s.tortuosity is not None else "undefined"
    return (
        f"track {track.id}: {s.detections} detections, {s.with_depth} with depth "
        f"({100 * s.valid_depth_ratio:.0f}%), path {_fmt(s.path_length)}{u}, tortuosity {tort}, "
        f"{s.outliers} cleaned"
    )
