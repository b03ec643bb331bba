"""Trajectory plots drawn with OpenCV: top view, side view and depth over time, one PNG per track.

`trajectory_figure` draws one `vda.analysis.track_io.Track` (its attributes, not TRACK.json's keys) as a BGR image
and `encode_png` turns that into the bytes of TRACK_track<ID>.png.

OpenCV instead of a plotting library keeps the container's dependencies as they are; the tick and range maths
are pure functions (tested), the drawing only turns them into lines and text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from vda.analysis.track_io import Track

FONT = cv2.FONT_HERSHEY_SIMPLEX
WHITE, BLACK, GRID, GREY = (255, 255, 255), (0, 0, 0), (228, 228, 228), (170, 170, 170)
LINE, CLEANED, START, END = (180, 100, 20), (40, 40, 220), (40, 160, 40), (40, 40, 220)  # BGR
PANEL_W, PANEL_H, TITLE_H = 520, 500, 44
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 78, 24, 46, 64


def nice_step(span: float, count: int = 5) -> float:
    """The 1, 2 or 5 times a power of ten step nearest to span / count (Heckbert's rounding)."""
    raw = span / max(count, 1)
    if not (raw > 0 and math.isfinite(raw)):
        return 1.0
    mag = 10 ** math.floor(math.log10(raw))
    frac = raw / mag
    return (1 if frac < 1.5 else 2 if frac < 3 else 5 if frac < 7 else 10) * mag


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick positions inside [lo, hi], rounded to the step's decimals (0.6, not 0.6000000000000001)."""
    step = nice_step(hi - lo, count)
    digits = max(0, -math.floor(math.log10(step))) + 2
    first = math.ceil(lo / step - 1e-9)
    ticks = [round((first + i) * step, digits) for i in range(int((hi - lo) / step + 1e-9) + 2)]
    return [t + 0.0 for t in ticks if lo - step * 1e-9 <= t <= hi + step * 1e-9]


def tick_label(value: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 0
    return f"{value:.{min(decimals, 6)}f}"


def data_range(values: Sequence[float], pad: float = 0.06) -> tuple[float, float]:
    """[lo, hi] of the values with a margin; a single value gets a range around it."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0, 1.0
    lo, hi = float(v.min()), float(v.max())
    if hi - lo <= 1e-12 * max(abs(lo), abs(hi), 1e-12):
        half = 0.5 if lo == 0 else 0.05 * abs(lo)
        return lo - half, hi + half
    m = (hi - lo) * pad
    return lo - m, hi + m


def equal_aspect(
    xlim: tuple[float, float], ylim: tuple[float, float], width_px: int, height_px: int
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Widen one range so that one unit is the same number of pixels on both axes (a circle stays round)."""
    (x0, x1), (y0, y1) = xlim, ylim
    per_px = max((x1 - x0) / width_px, (y1 - y0) / height_px)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    hx, hy = per_px * width_px / 2, per_px * height_px / 2
    return (cx - hx, cx + hx), (cy - hy, cy + hy)


def to_pixels(
    xs, ys, xlim: tuple[float, float], ylim: tuple[float, float], rect: tuple[int, int, int, int], y_down: bool = False
) -> np.ndarray:
    """Data -> integer pixel positions inside rect (x, y, w, h); y grows upwards unless y_down."""
    x, y, w, h = rect
    xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    px = x + (xs - xlim[0]) / (xlim[1] - xlim[0]) * w
    fy = (ys - ylim[0]) / (ylim[1] - ylim[0])
    py = y + (fy if y_down else 1 - fy) * h
    return np.stack([px, py], axis=-1).round().astype(np.int32)


def _text(img, s: str, org: tuple[int, int], scale: float = 0.45, color=BLACK, align: str = "left") -> None:
    (tw, th), _ = cv2.getTextSize(s, FONT, scale, 1)
    x, y = org
    x = x - tw if align == "right" else x - tw // 2 if align == "center" else x
    cv2.putText(img, s, (int(x), int(y)), FONT, scale, color, 1, cv2.LINE_AA)


def draw_panel(
    img: np.ndarray,
    origin: tuple[int, int],
    series: list[dict],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    equal: bool = False,
    y_down: bool = False,
) -> None:
    """One plot into img at origin: frame, grid, ticks, labels and the series.

    A series is {"x", "y", "color", "line": bool, "marks": mask or None, "ends": bool}.
    """
    ox, oy = origin
    rect = (ox + MARGIN_L, oy + MARGIN_T, PANEL_W - MARGIN_L - MARGIN_R, PANEL_H - MARGIN_T - MARGIN_B)
    x, y, w, h = rect
    xs = np.concatenate([np.asarray(s["x"], dtype=np.float64) for s in series]) if series else np.zeros(0)
    ys = np.concatenate([np.asarray(s["y"], dtype=np.float64) for s in series]) if series else np.zeros(0)
    xlim, ylim = data_range(xs), data_range(ys)
    if equal:
        xlim, ylim = equal_aspect(xlim, ylim, w, h)
    _text(img, title, (ox + PANEL_W // 2, oy + 22), 0.55, align="center")
    _text(img, ylabel, (x - 6, y - 8), 0.42, align="left" if len(ylabel) > 10 else "center")
    _text(img, xlabel, (x + w // 2, y + h + 48), 0.45, align="center")
    for tx in nice_ticks(*xlim):
        px = int(to_pixels([tx], [ylim[0]], xlim, ylim, rect)[0, 0])
        cv2.line(img, (px, y), (px, y + h), GRID, 1)
        cv2.line(img, (px, y + h), (px, y + h + 5), BLACK, 1)
        _text(img, tick_label(tx, nice_step(xlim[1] - xlim[0])), (px, y + h + 20), 0.4, align="center")
    for ty in nice_ticks(*ylim):
        py = int(to_pixels([xlim[0]], [ty], xlim, ylim, rect, y_down)[0, 1])
        cv2.line(img, (x, py), (x + w, py), GRID, 1)
        cv2.line(img, (x - 5, py), (x, py), BLACK, 1)
        _text(img, tick_label(ty, nice_step(ylim[1] - ylim[0])), (x - 8, py + 5), 0.4, align="right")
    cv2.rectangle(img, (x, y), (x + w, y + h), BLACK, 1)
    if xs.size == 0:
        _text(img, "no points with depth", (x + w // 2, y + h // 2), 0.6, GREY, align="center")
        return
    for s in series:
        pts = to_pixels(s["x"], s["y"], xlim, ylim, rect, y_down)
        if len(pts) == 0:
            continue
        if s.get("line", True) and len(pts) > 1:
            cv2.polylines(img, [pts.reshape(-1, 1, 2)], False, s["color"], 2, cv2.LINE_AA)
        if len(pts) == 1:
            cv2.circle(img, tuple(int(c) for c in pts[0]), 3, s["color"], -1, cv2.LINE_AA)
        marks = s.get("marks")
        if marks is not None:
            for p in pts[np.asarray(marks, bool)]:
                cv2.circle(img, (int(p[0]), int(p[1])), 5, CLEANED, 1, cv2.LINE_AA)
        if s.get("ends"):
            cv2.circle(img, (int(pts[0][0]), int(pts[0][1])), 5, START, -1, cv2.LINE_AA)
            cv2.drawMarker(img, (int(pts[-1][0]), int(pts[-1][1])), END, cv2.MARKER_SQUARE, 10, 2)


def trajectory_figure(track: Track, *, units: str, title: str) -> np.ndarray:
    """BGR image: top view (X, Z), side view (Z, Y with Y down) and depth over time, for one track of vda track."""
    pts = track.valid_points
    x = [p.x for p in pts]
    y = [p.y for p in pts]
    z = [p.z for p in pts]
    t = [p.time_s for p in pts]
    raw = [p.depth_raw for p in pts]
    cleaned = [p.cleaned for p in pts]
    u = "m" if units == "m" else "rel."
    img = np.full((TITLE_H + PANEL_H, 3 * PANEL_W, 3), WHITE, np.uint8)
    s = track.summary
    tort = "undefined" if s.tortuosity is None else f"{s.tortuosity:.3g}"
    head = (
        f"{title}: path {s.path_length:.4g} {u}, tortuosity {tort}, depth valid "
        f"{100 * s.valid_depth_ratio:.0f}%, cleaned {s.outliers}"
    )
    _text(img, head, (16, 30), 0.6)
    legend = "green dot: start, red square: end, red ring: cleaned"
    _text(img, legend, (3 * PANEL_W - 16, 30), 0.45, GREY, align="right")
    main = {"color": LINE, "ends": True, "marks": cleaned}
    draw_panel(
        img,
        (0, TITLE_H),
        [{"x": x, "y": z, **main}],
        title="top view",
        xlabel=f"X right ({u})",
        ylabel=f"Z forward ({u})",
        equal=True,
    )
    draw_panel(
        img,
        (PANEL_W, TITLE_H),
        [{"x": z, "y": y, **main}],
        title="side view",
        xlabel=f"Z forward ({u})",
        ylabel=f"Y down ({u})",
        equal=True,
        y_down=True,
    )
    series = [{"x": t, "y": raw, "color": GREY}] if any(cleaned) else []
    series.append({"x": t, "y": z, **main})
    draw_panel(
        img,
        (2 * PANEL_W, TITLE_H),
        series,
        title="depth over time" + (" (grey: before cleaning)" if any(cleaned) else ""),
        xlabel="time (s)",
        ylabel=f"depth ({u})",
    )
    return img


def encode_png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise OSError("encoding a PNG plot failed")
    return buf.tobytes()
