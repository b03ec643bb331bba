"""The report's page: one self-contained HTML file (inline style, inline images, one small inline script).

Nothing is fetched when it opens: the strips are JPEG data URIs, the timeline inline SVG (vda.report.charts), and the
script only sorts the videos' table (by a column's data-* value, on a click of its header, or on load from the
address: report.html#sort=status). Every text from the records is escaped.
"""

from __future__ import annotations

import base64
import time
from html import escape

from vda.report.data import RunRecord, VideoRow

STYLE = """
body{font:13px/1.4 system-ui,sans-serif;margin:16px 24px;color:#222;background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:22px 0 6px;border-bottom:1px solid #ddd}
table{border-collapse:collapse}td,th{padding:3px 8px;text-align:left;vertical-align:top;border-bottom:1px solid #eee}
th[data-sort]{cursor:pointer;text-decoration:underline dotted}td.n,th.n{text-align:right}
.state{display:inline-block;padding:1px 8px;border-radius:9px;background:#eee}
.merged{color:#1b6e1b}.failed,.refused{color:#b00020;font-weight:600}.pending,.computed{color:#a06000}
.error{color:#b00020;max-width:60em}.log{color:#666;font-size:11px;word-break:break-all}
.row{display:flex;gap:48px;flex-wrap:wrap}.sub{color:#666;font-size:11px}
img.strip{display:block;height:108px}figure{margin:8px 0}figure svg{max-width:100%;height:auto}
"""
SCRIPT = r"""
document.querySelectorAll('#videos th[data-sort]').forEach(function(th){th.addEventListener('click',function(){
var key=th.dataset.sort,body=document.querySelector('#videos tbody'),rows=Array.from(body.rows);
var up=th.dataset.dir!=='up';th.dataset.dir=up?'up':'down';
rows.sort(function(a,b){var x=a.dataset[key],y=b.dataset[key];
var d=isNaN(x)||isNaN(y)?x.localeCompare(y):x-y;return up?d:-d;});
rows.forEach(function(r){body.appendChild(r);});});});
var h=location.hash.match(/sort=(\w+)/),th=h&&document.querySelector('#videos th[data-sort="'+h[1]+'"]');
if(th)th.click();
"""
# Status order when sorting by status: the ones to look at first.
STATUS_RANK = {"failed": 0, "refused": 1, "pending": 2, "computed": 3, "merged": 4}


def seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 120:
        return f"{s:.1f} s"
    return f"{int(s // 3600)}:{int(s % 3600 // 60):02d}:{int(s % 60):02d}" if s >= 3600 else f"{s / 60:.1f} min"


def page(run: RunRecord, timeline: str, strips: list[bytes | None]) -> str:
    title = f"vda report: {run.out.name or run.out}"
    return "".join(
        [
            f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>',
            f"<style>{STYLE}</style></head><body>",
            f'<h1>{escape(title)}</h1><p><span class="state" id="state">{escape(run.state)}</span> ',
            f"written {time.strftime('%Y-%m-%d %H:%M:%S')} from {escape(str(run.run_dir))}</p>",
            summary(run),
            devices(run, timeline),
            videos(run, strips),
            f"<script>{SCRIPT}</script></body></html>",
        ]
    )


def _table(rows: list[tuple[str, object]], table_id: str) -> str:
    cells = "".join(f'<tr><th>{escape(k)}</th><td data-key="{escape(k)}">{escape(str(v))}</td></tr>' for k, v in rows)
    return f'<table id="{table_id}">{cells}</table>'


def summary(run: RunRecord) -> str:
    count = {s: sum(v.status == s for v in run.videos) for s in STATUS_RANK}
    frames = run.frames_done
    fps = frames / run.wall_s if run.wall_s > 0 else None
    cpu = run.host_cpu_s
    rows = [
        ("inputs", len(run.videos)),
        ("videos done", count["merged"]),
        ("videos failed", count["failed"] + count["refused"]),
        ("videos not finished", count["pending"] + count["computed"]),
        ("frames", f"{frames} of {sum(v.frames for v in run.videos)}"),
        ("wall time", seconds(run.wall_s) if run.started is not None else "-"),
        ("frames per second", f"{fps:.2f}" if fps else "-"),
        ("backend", run.backend),
        ("host CPU per frame", f"{1000 * cpu / frames:.1f} ms" if cpu is not None and frames else "-"),
    ]
    settings = _table(list(run.settings.items()), "settings")
    return f'<h2>Summary</h2><div class="row">{_table(rows, "summary")}{settings}</div>'


def devices(run: RunRecord, timeline: str) -> str:
    head = "<tr><th>slot</th><th>device</th><th>node</th><th class=n>units</th><th class=n>frames</th>"
    head += "<th class=n>busy</th><th class=n>failures</th><th class=n>worker starts</th><th>log</th></tr>"
    rows = []
    for d in run.devices:
        busy = f"{100 * d.busy_s / run.wall_s:.0f}%" if run.wall_s > 0 else "-"
        note = f'<div class="error">retired: {escape(d.retired)}</div>' if d.retired else ""
        rows.append(
            f'<tr class="device"><td>{d.slot}</td><td>{escape(d.device)}{note}</td>'
            f"<td>{escape(', '.join(d.nodes) or '-')}</td><td class=n>{d.units}</td><td class=n>{d.frames}</td>"
            f"<td class=n>{busy}</td><td class=n>{d.failures}</td><td class=n>{d.worker_starts}</td>"
            f'<td class="log">{escape(str(run.run_dir / d.log))}</td></tr>'
        )
    return f'<h2>Devices</h2><table id="devices">{head}{"".join(rows)}</table>{timeline}'


def videos(run: RunRecord, strips: list[bytes | None]) -> str:
    head = '<th data-sort="status">status</th><th data-sort="name">video</th>'
    head += "<th class=n>frames</th><th>size</th><th class=n>fps</th>"
    head += '<th data-sort="time" class=n>time</th><th data-sort="share" class=n>share</th>'
    head += "<th>RGB above, depth below</th>"
    total = run.device_s
    rows = [_video_row(v, total, s) for v, s in zip(run.videos, strips)]
    return f'<h2>Videos</h2><table id="videos"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _video_row(v: VideoRow, total: float, jpeg: bytes | None) -> str:
    info = v.info
    size = f"{info.width}x{info.height}" if info else "-"
    fps = f"{float(info.fps_fraction):.2f}" if info else "-"
    time_s = v.device_s + (v.merge[1] - v.merge[0] if v.merge else 0.0)
    share = v.device_s / total if total > 0 else 0.0
    node = f" @{escape(v.merge_node)}" if v.merge_node else ""
    merge = f'<div class="sub">merge {seconds(v.merge[1] - v.merge[0])}{node}</div>' if v.merge else ""
    error = ""
    if v.error or v.status in ("failed", "refused"):
        error = f'<div class="error">{escape(v.error or "not computed")}</div>'
        error += f'<div class="log">log: {escape(v.log or "-")}</div>'
    img = f'<img class="strip" alt="" src="data:image/jpeg;base64,{base64.b64encode(jpeg).decode()}">' if jpeg else ""
    data = f'data-status="{STATUS_RANK.get(v.status, 9)}" data-name="{escape(v.name)}" data-time="{time_s:.3f}"'
    return (
        f'<tr class="video" {data} data-share="{share:.5f}"><td class="{escape(v.status)}">{escape(v.status)}</td>'
        f'<td><b>{escape(v.name)}</b><div class="log">{escape(v.input)}</div>{error}</td>'
        f"<td class=n>{v.frames}</td><td>{size}</td><td class=n>{fps}</td>"
        f"<td class=n>{seconds(v.device_s)}{merge}</td><td class=n>{100 * share:.1f}%</td><td>{img}</td></tr>"
    )
