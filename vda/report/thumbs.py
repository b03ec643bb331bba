"""Each video's strip for the report: FRAMES frames of the input above their colourised depth, as one small JPEG.

Frames are decoded with the project's reader (only the few sampled, seeking to each; never the whole video) and the
depth read from the merged output through its depth_meta.json, so a strip shows what the user will get. A row that
cannot be read (an input moved away, an output not merged) is left grey: the report is still written.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from vda.errors import VdaError
from vda.io.decode import read_frames
from vda.io.writers import DepthMeta, colorize, read_depth
from vda.report.data import VideoRow

FRAMES = 4  # frames per strip
THUMB_H = 54  # pixels: a 1,000-video page stays light (about 8 KB per strip)
MAX_ASPECT = 2.4  # a panorama's thumbnail is cropped to this width / height
JPEG_QUALITY = 72
GREY = 96
STRIP_WORKERS = 4  # decoding and PNG reading release the GIL: a few threads keep 200 strips within seconds
log = logging.getLogger(__name__)


def sample(frame_count: int, k: int = FRAMES) -> list[int]:
    """k frame indices spread over the video (the middle of k equal parts), fewer for a shorter one."""
    k = min(k, frame_count)
    return sorted({int((i + 0.5) * frame_count / k) for i in range(k)})


def thumb_size(width: int, height: int) -> tuple[int, int]:
    """(w, h) of one thumbnail: THUMB_H high, the frame's aspect (within MAX_ASPECT), even sizes for the encoders."""
    aspect = min(max(width / max(height, 1), 1 / MAX_ASPECT), MAX_ASPECT)
    return max(2, round(THUMB_H * aspect / 2) * 2), THUMB_H


def strip(video: VideoRow) -> bytes | None:
    """The JPEG of a video's strip, or None when there is nothing to show (an input never planned)."""
    info = video.info
    if info is None or info.frame_count == 0:
        return None
    indices = sample(info.frame_count)
    size = thumb_size(info.width, info.height)
    rgb = _rgb(video, indices, size)
    depth = _depth(video, indices, size) if video.status == "merged" and video.out is not None else None
    blank = np.full((size[1], size[0] * len(indices), 3), GREY, np.uint8)
    image = np.concatenate([blank if rgb is None else rgb, blank if depth is None else depth])
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return buf.tobytes() if ok else None


def strips(videos: list[VideoRow], workers: int = STRIP_WORKERS) -> list[bytes | None]:
    """`strip` of every video, in order, on a few threads."""
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="vda-thumbs") as pool:
        return list(pool.map(strip, videos))


def _rgb(video: VideoRow, indices: list[int], size: tuple[int, int]) -> np.ndarray | None:
    if not Path(video.info.path).exists():
        return None
    try:
        frames = dict(read_frames(video.info, indices, size, threads=1))
    except (VdaError, OSError, ValueError) as err:  # a damaged input: its row stays grey, the report goes on
        log.info("report: no frames of %s: %s", video.name, err)
        return None
    if len(frames) != len(indices):
        return None
    return np.concatenate([frames[i] for i in indices], axis=1)


def _depth(video: VideoRow, indices: list[int], size: tuple[int, int]) -> np.ndarray | None:
    try:
        meta = DepthMeta.load(video.out)
        maps = [cv2.resize(read_depth(video.out, i, meta), size, interpolation=cv2.INTER_AREA) for i in indices]
    except (VdaError, OSError, ValueError, IndexError) as err:
        log.info("report: no depth of %s: %s", video.name, err)
        return None
    values = np.concatenate([m.ravel() for m in maps])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    lo, hi = (float(v) for v in np.percentile(values, [2, 98]))  # one range per strip: its frames compare
    return np.concatenate([colorize(m, lo, hi) for m in maps], axis=1)
