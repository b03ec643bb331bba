"""The run plan: which device computes which windows, written as RUN_DIR/plan.json.

Pure planning functions plus typed, versioned (de)serialisation. The plan is the contract between
the orchestrator, the chunk workers and the merge, possibly on different hosts and in containers,
so everything a worker needs is in it and every path in it is relative to RUN_DIR.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vda import stitch
from vda.video import VideoInfo, spans

SCHEMA_VERSION = 1
PLAN_NAME = "plan.json"
CHUNKS_DIR = "chunks"  # RUN_DIR/chunks/K holds the stream segments chunk K computed (they depend on the split)
# RUN_DIR/windows holds every computed window, whichever chunk or device computed it: a window depends only on the
# video and the settings, so a rerun on any number of devices reuses every finished one.
WINDOWS_DIR = "windows"
STREAM_WARMUP = 96  # frames a stream chunk replays before its range (see README: chunked stream accuracy)


class PlanError(Exception):
    """A plan that cannot be used as is; the message says what to do."""


@dataclass
class Settings:
    encoder: str
    metric: bool
    checkpoint: str  # file name; resolved at run time through models/ or an explicit path
    checkpoint_sha256: str
    input_size: int = 518
    max_res: int = 1280
    precision: str = "fp32"
    mode: str = "window"
    frame_width: int = 0  # after max_res: the resolution of the output depth maps
    frame_height: int = 0
    net_height: int = 0  # network input resolution
    net_width: int = 0


@dataclass
class Chunk:
    index: int
    device: str
    units: tuple[int, int]  # [start, stop): windows (window mode) or output frames (stream mode)
    decode: list[tuple[int, int]]  # [start, stop) frame spans the worker decodes
    produces: tuple[int, int]  # [start, stop) output frames this chunk's units make final


@dataclass
class Plan:
    input: VideoInfo
    settings: Settings
    chunks: list[Chunk]
    run_id: str
    schema_version: int = SCHEMA_VERSION
    extra: dict = field(default_factory=dict)

    @property
    def frame_count(self) -> int:
        return self.input.frame_count

    @property
    def num_windows(self) -> int:
        return stitch.num_windows(self.frame_count)

    def save(self, run_dir: Path) -> None:
        from vda.writers import write_json

        write_json(Path(run_dir) / PLAN_NAME, asdict(self))

    @classmethod
    def load(cls, run_dir: Path) -> Plan:
        path = Path(run_dir) / PLAN_NAME
        if not path.is_file():
            raise PlanError(f"{path} not found; run `vda plan` first (or `vda depth`)")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise PlanError(f"{path} is not valid JSON ({err}); delete the run folder and plan again") from err
        if data.get("schema_version") != SCHEMA_VERSION:
            raise PlanError(
                f"{path} has schema {data.get('schema_version')}, this vda reads {SCHEMA_VERSION}; plan again"
            )
        info = data["input"]
        info["keyframes"] = [tuple(k) for k in info.get("keyframes", [])]
        chunks = [
            Chunk(c["index"], c["device"], tuple(c["units"]), [tuple(s) for s in c["decode"]], tuple(c["produces"]))
            for c in data["chunks"]
        ]
        for c in chunks:
            if not isinstance(c.index, int) or c.index < 0:
                raise PlanError(f"{path}: bad chunk index {c.index!r}")
        return cls(
            VideoInfo(**info),
            Settings(**data["settings"]),
            chunks,
            data["run_id"],
            data["schema_version"],
            data.get("extra", {}),
        )


def split_even(total: int, parts: int) -> list[tuple[int, int]]:
    """[start, stop) ranges covering 0..total in `parts` pieces whose sizes differ by at most one."""
    parts = max(1, min(parts, total))
    base, extra = divmod(total, parts)
    out, start = [], 0
    for k in range(parts):
        stop = start + base + (k < extra)
        out.append((start, stop))
        start = stop
    return out


def window_chunk_frames(windows: tuple[int, int], n_frames: int) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """Frames to decode and frames produced for a contiguous run of windows."""
    first, last = windows[0], windows[1] - 1
    needed = set()
    for w in range(first, last + 1):
        needed.update(stitch.window_inputs(w, n_frames))
    produced = (stitch.window_outputs(first, n_frames).start, stitch.window_outputs(last, n_frames).stop)
    return spans(needed), produced


def stream_chunk_frames(frames: tuple[int, int], warmup: int) -> list[tuple[int, int]]:
    start, stop = frames
    return spans({0, *range(max(1, start - warmup), stop)})


def make_chunks(n_frames: int, devices: list[str], mode: str, warmup: int = STREAM_WARMUP) -> list[Chunk]:
    """Split the work over devices: whole windows in window mode (each computed exactly once), frames in stream mode."""
    if not devices:
        raise PlanError("no devices given; use --devices cpu, --gpus N or --gpu-ids ...")
    chunks = []
    if mode == "window":
        for k, units in enumerate(split_even(stitch.num_windows(n_frames), len(devices))):
            decode, produces = window_chunk_frames(units, n_frames)
            chunks.append(Chunk(k, devices[k], units, decode, produces))
    elif mode == "stream":
        for k, units in enumerate(split_even(n_frames, len(devices))):
            chunks.append(Chunk(k, devices[k], units, stream_chunk_frames(units, warmup), units))
    else:
        raise PlanError(f"unknown mode {mode!r}; choose window or stream")
    return chunks
