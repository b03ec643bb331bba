"""Trajectory plots drawn with matplotlib: top view, side view and depth over time, one PNG per track.

`trajectory_figure` draws one `vda.analysis.track_io.Track` (its attributes, not TRACK.json's keys) as a matplotlib
Figure and `encode_png` turns that into the bytes of TRACK_track<ID>.png. Figures are made without pyplot (no
display, no global state: Agg, safe in threads), so users restyle them as any matplotlib figure.
"""

from __future__ import annotations

import io

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from vda.analysis.track_io import Track

LINE, RAW, START, END = "#1f64b4", "#aaaaaa", "#28a028", "#dc2828"
SIZE_IN, DPI = (15.6, 5.4), 100  # 1560 x 540 pixels: three panels side by side


def _panel(ax: Axes, x, y, cleaned, *, title: str, xlabel: str, ylabel: str) -> None:
    """One view: the path, its start and end, and the points the cleaning replaced."""
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(color="#e4e4e4", linewidth=0.8)
    if not x:
        ax.text(0.5, 0.5, "no points with depth", transform=ax.transAxes, ha="center", va="center", color="grey")
        return
    ax.plot(x, y, color=LINE, linewidth=1.8, marker="o" if len(x) == 1 else None, markersize=3)
    ax.plot(x[0], y[0], "o", color=START, markersize=7)
    ax.plot(x[-1], y[-1], "s", color=END, markersize=7, markerfacecolor="none", markeredgewidth=2)
    marked = [(a, b) for a, b, c in zip(x, y, cleaned) if c]
    if marked:
        ax.scatter(*zip(*marked), s=60, facecolors="none", edgecolors=END, linewidths=1)


def trajectory_figure(track: Track, *, units: str, title: str) -> Figure:
    """Top view (X, Z), side view (Z, Y with Y down) and depth over time, for one track of vda track."""
    pts = track.valid_points
    x, y, z = [p.x for p in pts], [p.y for p in pts], [p.z for p in pts]
    t, cleaned = [p.time_s for p in pts], [p.cleaned for p in pts]
    raw = [float("nan") if p.depth_raw is None else p.depth_raw for p in pts]
    u = "m" if units == "m" else "rel."
    s = track.summary
    tort = "undefined" if s.tortuosity is None else f"{s.tortuosity:.3g}"
    fig = Figure(figsize=SIZE_IN, dpi=DPI, layout="constrained")
    fig.suptitle(
        f"{title}: path {s.path_length:.4g} {u}, tortuosity {tort}, depth valid {100 * s.valid_depth_ratio:.0f}%, "
        f"cleaned {s.outliers}   (green dot: start, red square: end, red ring: cleaned)",
        fontsize=11,
    )
    top, side, depth = fig.subplots(1, 3)
    _panel(top, x, z, cleaned, title="top view", xlabel=f"X right ({u})", ylabel=f"Z forward ({u})")
    _panel(side, z, y, cleaned, title="side view", xlabel=f"Z forward ({u})", ylabel=f"Y down ({u})")
    for ax in (top, side):  # a circle stays round: one unit is as long on both axes
        ax.set_aspect("equal", adjustable="datalim")
    side.invert_yaxis()
    any_cleaned = any(cleaned)
    if any_cleaned:
        depth.plot(t, raw, color=RAW, linewidth=1.2, label="before cleaning")
    _panel(
        depth,
        t,
        z,
        cleaned,
        title="depth over time" + (" (grey: before cleaning)" if any_cleaned else ""),
        xlabel="time (s)",
        ylabel=f"depth ({u})",
    )
    return fig


def encode_png(fig: Figure) -> bytes:
    """The figure as PNG bytes (Agg)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()
