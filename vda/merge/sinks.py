"""Where merged frames go: one file per frame (`FrameFiles`), or one array per video (`StackFile`, npy-stack), and the
colourised depth video (`VideoSink`), alone or beside the RGB frames (`SideBySideSink`).

Every sink takes a unit's frames at a time, in frame order, with `write(frames)`; then `close()` once all are written,
or `abort()` when the merge fails. A sink leaves nothing under a final name that could be mistaken for a complete
output: frame files are each written atomically, and the stack and the video are renamed only once complete.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import numpy as np

from vda.io.writers import STACK, STACK_NAME, create_stack, frame_name, write_frame, write_stack_frames


class Sink(Protocol):
    """A merged output, fed unit by unit in frame order."""

    def write(self, frames) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


@dataclass(frozen=True)
class FrameFiles:
    """One file per frame, in `fmt`, quantised over [lo, hi] for the png formats.

    Fed in the render processes (`render.render_unit`), not in merge's own: encoding is most of a merge's time, and
    each process writes the frames it renders, so it runs on every core.
    """

    out_dir: Path
    fmt: str
    lo: float
    hi: float
    frame_count: int = 0  # names grow past 6 digits from a million frames (writers.frame_digits)

    def write(self, frames: Iterable[tuple[int, np.ndarray]]) -> None:
        """Write each (frame index, depth map) as its own file."""
        for f, depth in frames:
            name = frame_name(f, self.fmt, self.frame_count)
            write_frame(Path(self.out_dir) / name, depth, self.fmt, self.lo, self.hi)

    def close(self) -> None:
        """Nothing to finish: each file is complete once written."""

    def abort(self) -> None:
        """Nothing to drop: the frames written are complete, and a merge that fails leaves no marker."""


def stack_tmp(out_dir: Path) -> Path:
    """Where an npy-stack is written before it is complete (hidden; renamed to STACK_NAME at the end)."""
    return Path(out_dir) / f".{STACK_NAME}.tmp"


@dataclass(frozen=True)
class StackRows:
    """The rows of the video's npy-stack that one render task makes final, written in place in the temporary file
    `StackFile` made (from the render processes, as `FrameFiles`)."""

    out_dir: Path

    def write(self, frames: Iterable[tuple[int, np.ndarray]]) -> None:
        write_stack_frames(stack_tmp(self.out_dir), frames)


def frame_writer(out_dir: Path, fmt: str, lo: float, hi: float, frame_count: int = 0) -> FrameFiles | StackRows:
    """What a render task writes its frames through, for `fmt` (`frame_count` sets the width of frame names)."""
    return StackRows(Path(out_dir)) if fmt == STACK else FrameFiles(Path(out_dir), fmt, lo, hi, frame_count)


class StackFile:
    """The npy-stack of a video, on the merge's side: preallocated before the render ([N, H, W] float32, disk space
    reserved), filled in place by the render tasks (`StackRows`), renamed to STACK_NAME once every frame is in."""

    def __init__(self, out_dir: Path, shape: tuple[int, int, int]):
        self.tmp, self.path = stack_tmp(out_dir), Path(out_dir) / STACK_NAME
        create_stack(self.tmp, shape)

    def write(self, frames) -> None:
        """Nothing here: the render processes write the rows."""

    def close(self) -> None:
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.tmp.unlink(missing_ok=True)


class VideoSink:
    """Colourised depth video at the source's exact fps, written to a temporary name then renamed."""

    def __init__(self, path: Path, fps: Fraction | float, width: int, height: int):
        import av

        self.path, self.tmp = path, path.with_name(f".{path.name}.tmp.mp4")
        self.container = av.open(str(self.tmp), "w")
        if "libx264" in av.codecs_available:
            # A preview: veryfast encodes about twice as fast as x264's default (bench_stages.py, "colourised video").
            self.stream = self.container.add_stream("libx264", rate=fps, options={"preset": "veryfast"})
        else:
            self.stream = self.container.add_stream("mpeg4", rate=fps)
        self.stream.width, self.stream.height = width - width % 2, height - height % 2
        self.stream.pix_fmt = "yuv420p"

    def write(self, frames: Iterable[np.ndarray] | None) -> None:
        """Encode colourised (RGB) frames; None, what a render without video returns, writes nothing."""
        import av

        for rgb in frames or []:
            rgb = np.ascontiguousarray(rgb[: self.stream.height, : self.stream.width])
            for packet in self.stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Drop the partial video: only a complete one ever gets the final name."""
        self.container.close()
        self.tmp.unlink(missing_ok=True)


class SideBySideSink(VideoSink):
    """The RGB frames (left) and the colourised depth (right) in one video: what people share and check first."""

    def __init__(self, path: Path, fps: Fraction | float, rgb: Iterator[np.ndarray], width: int, height: int):
        super().__init__(path, fps, 2 * width, height)
        self.rgb = rgb

    def write(self, frames: Iterable[np.ndarray] | None) -> None:
        super().write(np.concatenate([next(self.rgb), depth], axis=1) for depth in frames or [])
