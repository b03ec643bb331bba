"""What a probe knows of an input, and the pure helpers over frame indices and sizes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction


@dataclass
class VideoInfo:
    path: str
    kind: str  # "video" or "images"
    size_bytes: int
    head_sha256: str
    frame_count: int
    fps: str  # exact fraction "num/den"
    width: int  # of the upright frames (see rotation), before any --max-res
    height: int
    keyframes: list[tuple[int, int]] = field(default_factory=list)  # (frame index, pts) of keyframes
    # Degrees the container's display matrix turns the decoded frames counterclockwise, in 0..270 (a phone's
    # portrait video: ffmpeg's -90, stored as 270). Frames are handed out upright; width/height are the upright ones.
    rotation: int = 0
    # How frame_count was found: "packets" (demuxed, see packet_count), "decode" (every frame decoded) or "files"
    # (an image folder). Not part of the input's identity: a resume may count the same input another way.
    counted: str = "decode"

    @property
    def fps_fraction(self) -> Fraction:
        return Fraction(self.fps)


def fit_max_res(width: int, height: int, max_res: int) -> tuple[int, int]:
    """(w, h) after the authors' --max-res rule (0 or less keeps the size)."""
    if max_res > 0 and max(width, height) > max_res:
        scale = max_res / max(width, height)
        return round(width * scale), round(height * scale)
    return width, height


def spans(indices: Iterable[int]) -> list[tuple[int, int]]:
    """Indices -> sorted [start, stop) runs."""
    out: list[list[int]] = []
    for i in sorted(set(indices)):
        if out and out[-1][1] == i:
            out[-1][1] += 1
        else:
            out.append([i, i + 1])
    return [(a, b) for a, b in out]
