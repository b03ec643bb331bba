"""The run plan: the queue units of one video, written as RUN_DIR/plan.json.

Pure planning functions plus typed, versioned (de)serialisation. The plan is the contract between the host, the device
workers and the merge, possibly on different hosts and in containers, so everything a worker needs is in it.

A unit is the smallest piece of work the queue hands to a device: a run of whole windows (window mode) or of frames
(stream mode). Units depend only on the video and the settings, never on the devices, so a rerun on any number of
devices finds the same units and reuses every finished one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from vda.core import stitch
from vda.core.video_info import VideoInfo, spans
from vda.errors import VdaError

SCHEMA_VERSION = 2
PLAN_NAME = "plan.json"
# Stream mode: frames a unit replays before its range, to warm the temporal cache (docs/stream.md).
STREAM_WARMUP = 96
# Default unit sizes (bench/bench_queue.py). A unit costs its device the host's round trip (0.4 ms),
# the seek to its first frame (314 ms at 1080p with 250-frame GOPs, hidden by decoding one unit ahead: 0 ms left) and
# its first window's 10 re-encoded overlap frames: 5.7% of the compute of 8 windows, at any device speed. 5 windows
# would be the smallest unit under 10%; 8 windows (176 frames) are 1.3 s of vits at the published A100 speed, and
# keep the last unit of a batch short enough that no device waits long for another.
UNIT_WINDOWS = 8
# A stream unit replays 1 + STREAM_WARMUP frames: 400 frames per unit keep frames computed over frames produced at
# (400 + 97) / 400 = 1.24, under the 1.25 docs/stream.md promises.
STREAM_UNIT_FRAMES = 400
SEGMENT = 32  # stream mode: frames per stored file, so that a killed worker leaves most of its unit stored
MODES = ("window", "stream")
# "auto" is a per-device choice made where the model runs (vda.device.resolve_precision): fp16 on a GPU,
# fp32 on a CPU. A plan over cpu and cuda devices then computes each window in what its device does well, and a unit
# retried on the other kind still runs (an fp16 unit on a CPU would fail).
AUTO = "auto"
PRECISION_NAMES = ("fp32", "fp16", "bf16")
PRECISION_CHOICES = (AUTO, *PRECISION_NAMES)


class PlanError(VdaError):
    """A plan that cannot be used as is; the message says what to do."""


@dataclass
class Settings:
    encoder: str
    metric: bool
    checkpoint: str  # file name; resolved at run time through models/ or an explicit path
    checkpoint_sha256: str
    input_size: int = 518
    max_res: int = 1280
    precision: str = "auto"
    mode: str = "window"
    frame_width: int = 0  # after max_res: the resolution of the output depth maps
    frame_height: int = 0
    net_height: int = 0  # network input resolution
    net_width: int = 0
    unit_size: int = UNIT_WINDOWS  # windows per unit (window mode) or frames per unit (stream mode)
    stream_warmup: int = STREAM_WARMUP
    simulated: bool = False  # planned under VDA_SIMULATE_MS_PER_FRAME: its pieces are no depth, never mixed with real


@dataclass(frozen=True)
class Unit:
    index: int
    span: tuple[int, int]  # [start, stop): windows (window mode) or output frames (stream mode)
    decode: tuple[tuple[int, int], ...]  # [start, stop) frame spans the worker decodes
    produces: tuple[int, int]  # [start, stop) output frames this unit's windows make final

    @property
    def computed_frames(self) -> int:
        """Frames the encoder runs on for this unit; over `produced_frames`, the cost of cutting the work up."""
        return sum(b - a for a, b in self.decode)

    @property
    def produced_frames(self) -> int:
        return self.produces[1] - self.produces[0]


@dataclass
class Plan:
    input: VideoInfo
    settings: Settings
    units: list[Unit]
    run_id: str
    schema_version: int = SCHEMA_VERSION

    @property
    def frame_count(self) -> int:
        return self.input.frame_count

    @property
    def num_windows(self) -> int:
        return stitch.num_windows(self.frame_count)

    def pieces(self, unit: Unit) -> list[int]:
        """What a unit stores, one file each: its windows, or the first frames of its SEGMENT-frame segments."""
        a, b = unit.span
        return list(range(a, b)) if self.settings.mode == "window" else list(range(a, b, SEGMENT))

    def all_pieces(self) -> list[int]:
        return [p for u in self.units for p in self.pieces(u)]

    def save(self, run_dir: Path) -> None:
        from vda.files import write_json

        units = [  # by hand: asdict copies each unit's tuples deep, a second at 10,000 units
            {"index": u.index, "span": u.span, "decode": u.decode, "produces": u.produces} for u in self.units
        ]
        data = {"input": asdict(self.input), "settings": asdict(self.settings), "units": units}
        write_json(Path(run_dir) / PLAN_NAME, {**data, "run_id": self.run_id, "schema_version": self.schema_version})

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
        try:
            info = data["input"]
            info["keyframes"] = [tuple(k) for k in info.get("keyframes", [])]
            units = [
                Unit(u["index"], tuple(u["span"]), tuple(tuple(s) for s in u["decode"]), tuple(u["produces"]))
                for u in data["units"]
            ]
            plan = cls(VideoInfo(**info), Settings(**data["settings"]), units, data["run_id"], data["schema_version"])
        except (KeyError, TypeError) as err:
            raise PlanError(f"{path} is incomplete ({err}); delete the run folder and plan again") from None
        if [u.index for u in units] != list(range(len(units))):
            raise PlanError(f"{path}: units are not numbered 0..{len(units) - 1}; delete the run folder and plan again")
        return plan


def split_fixed(total: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of `size` covering 0..total, the last one shorter: they depend on nothing else."""
    return [(a, min(a + size, total)) for a in range(0, total, size)]


def window_unit_frames(windows: tuple[int, int], n_frames: int) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """Frames to decode and frames produced for a contiguous run of windows."""
    first, last = windows[0], windows[1] - 1
    needed = set()
    for w in range(first, last + 1):
        needed.update(stitch.window_inputs(w, n_frames))
    produced = (stitch.window_outputs(first, n_frames).start, stitch.window_outputs(last, n_frames).stop)
    return spans(needed), produced


def stream_unit_frames(frames: tuple[int, int], warmup: int) -> list[tuple[int, int]]:
    """Frames a stream unit decodes: frame 0 (the stream's first frame), its warm-up, then its own range."""
    start, stop = frames
    return spans({0, *range(max(1, start - warmup), stop)})


def default_unit_size(mode: str) -> int:
    return UNIT_WINDOWS if mode == "window" else STREAM_UNIT_FRAMES


def make_units(n_frames: int, mode: str, unit_size: int, warmup: int = STREAM_WARMUP) -> list[Unit]:
    """Cut a video into queue units of `unit_size` windows (window mode) or frames (stream mode)."""
    if unit_size < 1:
        raise PlanError(f"--unit-size must be at least 1, got {unit_size}")
    if mode == "window":
        units = []
        for k, span in enumerate(split_fixed(stitch.num_windows(n_frames), unit_size)):
            decode, produces = window_unit_frames(span, n_frames)
            units.append(Unit(k, span, tuple(decode), produces))
        return units
    if mode == "stream":
        return [
            Unit(k, span, tuple(stream_unit_frames(span, warmup)), span)
            for k, span in enumerate(split_fixed(n_frames, unit_size))
        ]
    raise PlanError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
