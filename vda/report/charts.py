"""The report's chart: the run's timeline, drawn with matplotlib (no display needed: a Figure, no pyplot).

One lane per device, one bar per unit attempt, coloured by what became of it (done: by video, alternating, so unit
boundaries show; retried, failed, dropped, still running: their own colours), and one lane per host that merged.
Each device lane is an SVG group with the id `lane-<slot>`. The chart is inline SVG (text stays text) while it is
small, a PNG when the attempts are so many that SVG would outweigh the page's thumbnails.
"""

from __future__ import annotations

import base64
import io
import re

import matplotlib
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from vda.report.data import OUTCOMES, RunRecord

SVG_MAX_BARS = 2000  # above this, a PNG: SVG costs about 250 bytes a bar
COLOURS = {"retried": "#f08c00", "failed": "#d62728", "dropped": "#9e9e9e", "running": "#2ca02c"}
DONE = ("#3b6fb6", "#7fa7dc")  # alternate per video
MERGE = "#8e5ea2"
NODE_CHARS = 8  # a Ray node id is 56 hex digits; 8 tell a cluster's nodes apart


def _lanes(run: RunRecord) -> list[tuple[str, str]]:
    """(id, label) per lane, top to bottom: the devices, then each host that merged."""
    lanes = []
    for d in run.devices:
        node = f" @{d.nodes[0][:NODE_CHARS]}" if len(d.nodes) == 1 else f" @{len(d.nodes)} nodes" if d.nodes else ""
        lanes.append((f"lane-{d.slot}", f"{d.slot}: {d.device}{node}"))
    hosts = sorted({v.merge_node or "host" for v in run.videos if v.merge})
    lanes += [(f"merge-{h}", f"merge @{h[:NODE_CHARS]}") for h in hosts]
    return lanes


def _bars(run: RunRecord) -> dict[str, tuple[list[tuple[float, float]], list[str]]]:
    """Per lane id: (start, width) and colour of each bar."""
    order = {v.name: k for k, v in enumerate(run.videos)}
    bars: dict[str, tuple[list, list]] = {}
    for a in run.attempts:
        colour = DONE[order.get(a.video, 0) % 2] if a.outcome == "done" else COLOURS[a.outcome]
        spans, colours = bars.setdefault(f"lane-{a.slot}", ([], []))
        spans.append((a.start, max(a.end - a.start, 1e-3)))
        colours.append(colour)
    for v in run.videos:
        if v.merge:
            spans, colours = bars.setdefault(f"merge-{v.merge_node or 'host'}", ([], []))
            spans.append((v.merge[0], max(v.merge[1] - v.merge[0], 1e-3)))
            colours.append(MERGE if v.status != "failed" else COLOURS["failed"])
    return bars


def timeline(run: RunRecord) -> str:
    """The timeline as an HTML fragment: a <figure class="timeline"> holding an inline SVG or a PNG."""
    lanes, bars = _lanes(run), _bars(run)
    fig = Figure(figsize=(10, 0.9 + 0.34 * max(len(lanes), 1)), dpi=96)
    ax = fig.add_subplot()
    for row, (lane, _) in enumerate(lanes):
        spans, colours = bars.get(lane, ([], []))
        ax.broken_barh(spans, (row - 0.38, 0.76), facecolors=colours, edgecolor="white", linewidth=0.3, gid=lane)
    ax.set_yticks(range(len(lanes)), [label for _, label in lanes], fontsize=8)
    ax.set_ylim(len(lanes) - 0.5, -0.5)
    ax.set_xlim(0, max(run.wall_s, max((a.end for a in run.attempts), default=0), 1e-3))
    ax.set_xlabel("seconds since the run began", fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", color="#e0e0e0", linewidth=0.5)
    ax.set_axisbelow(True)
    legend = [Patch(color=DONE[0], label="done")] + [Patch(color=COLOURS[o], label=o) for o in OUTCOMES[1:]]
    ax.legend(handles=[*legend, Patch(color=MERGE, label="merge")], ncol=6, fontsize=7, loc="lower left",
              bbox_to_anchor=(0, 1.0), frameon=False)  # fmt: skip
    fig.tight_layout(pad=0.4)
    count = sum(len(s) for s, _ in bars.values())
    head = f'<figure class="timeline" data-lanes="{len(run.devices)}" data-bars="{count}">'
    return head + (_svg(fig) if count <= SVG_MAX_BARS else _png(fig)) + "</figure>"


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "vda"}):  # text as text; stable ids
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)  # matplotlib's RDF block: bytes, no use here
    return text[text.index("<svg") :]  # the XML prolog and doctype have no place inside HTML


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96)
    return f'<img alt="timeline" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'
