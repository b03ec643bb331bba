"""Probing video and image-folder input exactly, and checking that an input is still the one planned.

Frame counts come from the packets themselves (demuxed, not decoded) where packets and frames match one to one, and
from decoding everywhere else; never from container metadata (a header's frame count). fps is an exact Fraction.
The keyframe positions recorded here let a decoder (vda.io.decode) seek to a unit's first frame.
"""

from __future__ import annotations

import hashlib
import logging
from fractions import Fraction
from pathlib import Path

import av
import av.video.reformatter
import cv2
import numpy as np

from vda import config
from vda.core.video_info import VideoInfo
from vda.errors import InputError
from vda.io.mp4 import _plain_edit_list

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
HEAD_BYTES = 1 << 20  # content hash covers the first MiB: cheap, and catches a replaced file
DEFAULT_IMAGE_FPS = Fraction(30)
log = logging.getLogger(__name__)


class VideoError(InputError):
    """Unusable input; the message names the problem and the fix."""


def head_hash(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_dir():
        for f in image_files(path):
            h.update(f.name.encode())
            h.update(str(f.stat().st_size).encode())
    else:
        with open(path, "rb") as fh:
            h.update(fh.read(HEAD_BYTES))
    return h.hexdigest()


NOT_FOUND = "not found"


def identity_mismatch(path: Path, info: VideoInfo) -> str | None:
    """Why `path` is not the input `info` was probed from (NOT_FOUND, "its size differs", "its content differs"),
    or None when it is: what a worker checks before it computes a planned video, and each Ray node before the run."""
    path = Path(path)
    if not path.exists():
        return NOT_FOUND
    if path.is_file() and path.stat().st_size != info.size_bytes:
        return "its size differs"
    if head_hash(path) != info.head_sha256:
        return "its content differs"
    return None


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def read_image(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise VideoError(f"cannot read image {path}; remove it or replace it with a valid image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _open(path: Path, threads: int | None = None):
    """The container and its video stream, decoding on `threads` threads (frame and slice threading; None: the
    process's share, VDA_THREADS, else FFmpeg's default of one per core)."""
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as err:
        raise VideoError(
            f"{path} cannot be opened as a video ({err.__class__.__name__}): it is not a video, or it is truncated "
            "or corrupt; pass a complete mp4/mkv/mov file or a folder of images"
        ) from err
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path} has no video stream; pass a video file or a folder of images")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    stream.codec_context.thread_count = threads or config.current().threads or 0
    return container, stream


def _fps(stream) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise VideoError("the video declares no frame rate; re-mux it (ffmpeg -r) or use a folder of images")
    return Fraction(rate.numerator, rate.denominator)


def probe(path: str | Path, *, decode: bool = False) -> VideoInfo:
    """Identity, exact frame count, fps and size of a video file or image folder.

    A video is counted from its packets, demuxed without decoding (tens of thousands of packets/s against hundreds
    of decoded frames/s: planning an hour takes seconds), wherever packets and frames are known to match one to one;
    wherever they may not (see `packet_count`), and with `decode`, every frame is decoded and counted instead.
    """
    path = Path(path)
    if not path.exists():
        raise VideoError(f"input not found: {path}; check the path")
    if path.is_dir():
        return _probe_images(path)
    if not decode:
        info = packet_count(path)
        if info is not None:
            return info
    return decode_count(path)


def _probe_images(path: Path) -> VideoInfo:
    files = image_files(path)
    if not files:
        raise VideoError(f"{path} holds no images ({', '.join(sorted(IMAGE_EXTS))}); add frames or pass a video")
    first = read_image(files[0])
    small = cv2.imread(str(files[0]), cv2.IMREAD_REDUCED_GRAYSCALE_8).shape
    for f in files[1:]:
        reduced = cv2.imread(str(f), cv2.IMREAD_REDUCED_GRAYSCALE_8)  # decodes at 1/8 size: cheap
        if reduced is None:
            raise VideoError(f"cannot read image {f}; remove it or replace it with a valid image")
        if reduced.shape != small:
            size = read_image(f).shape
            raise VideoError(
                f"image {f.name} is {size[1]}x{size[0]}, the first is {first.shape[1]}x{first.shape[0]}; "
                "all images of a sequence must have one size"
            )
    h, w = first.shape[:2]
    return VideoInfo(
        str(path),
        "images",
        sum(f.stat().st_size for f in files),
        head_hash(path),
        len(files),
        str(DEFAULT_IMAGE_FPS),
        w,
        h,
        counted="files",
    )


def _upright_size(frame) -> tuple[int, tuple[int, int]]:
    """The rotation (side data of the first frame: 0, 90, 180 or 270) and the upright (width, height)."""
    rotation = round(frame.rotation / 90) * 90 % 360
    return rotation, (frame.height, frame.width) if rotation in (90, 270) else (frame.width, frame.height)


def decode_count(path: Path) -> VideoInfo:
    """The exact probe: every frame decoded and counted, keyframes as the decoder flags them."""
    container, stream = _open(path)
    count, keyframes, size, rotation = 0, [], None, 0
    try:
        fps = _fps(stream)
        for frame in container.decode(stream):
            if frame.key_frame and frame.pts is not None:
                keyframes.append((count, int(frame.pts)))
            if size is None:
                rotation, size = _upright_size(frame)
            count += 1
    except av.error.FFmpegError as err:
        raise VideoError(f"{path}: decoding failed at frame {count} ({err}); the file is truncated or corrupt") from err
    finally:
        container.close()
    if count == 0:
        raise VideoError(f"{path} has zero decodable frames; pass a non-empty video")
    return VideoInfo(
        str(path), "video", path.stat().st_size, head_hash(path), count, str(fps), size[0], size[1], keyframes, rotation
    )


# Codecs whose demuxed packets hold exactly one shown frame each (VP9's hidden frames travel in superframes with a
# shown one). Anything else is counted by decoding: MPEG-4 part 2 in AVI packs two frames in a packet and follows with
# an empty one, VP8 may store hidden frames alone, and a codec not listed here has not been checked.
PACKET_CODECS = frozenset({"h264", "hevc", "av1", "vp9", "ffv1", "mjpeg", "prores", "png", "rawvideo", "dnxhd"})
# Packets decoded at the start of every packet count: one frame each, or the stream is counted by decoding (field-coded
# video gives two packets per frame); the first frame also gives the size and the rotation. 48 frames of 1080p x264
# take about 0.2 s on one core (the 240 frames/s).
SAMPLE_PACKETS = 48


class _Fallback(Exception):
    """Packets and frames may differ here: count by decoding (the message says why, for the host log)."""


def packet_count(path: Path) -> VideoInfo | None:
    """The fast probe, from the container: packets demuxed, not decoded; None where packets and frames may differ.

    Counted by decoding instead (None): streams without pts or with repeated pts, a codec outside PACKET_CODECS, an
    MP4 edit list that is more than one plain entry, packets flagged discarded or corrupt, empty packets, a packet
    that runs past the end of the file (a truncated file), a stream that does not open on a keyframe or shows frames
    before it, and any sample packet that decodes to other than one frame. The worker that decodes a video's last unit
    checks the count again (check_frame_count), and a mismatch fails the video until it is planned by decoding.
    """
    container, stream = _open(path)
    try:
        fps = _fps(stream)
        if stream.codec_context.name not in PACKET_CODECS:
            raise _Fallback(f"codec {stream.codec_context.name}")
        if "mp4" in container.format.name and not _plain_edit_list(path):
            raise _Fallback("an MP4 edit list")
        pts, keys, first = _demux(container, stream, path.stat().st_size)
    except _Fallback as why:
        log.info("%s: counted by decoding (%s)", path, why)
        return None
    except av.error.FFmpegError:
        return None  # the decoding probe reports it, with the frame
    finally:
        container.close()
    order = {p: i for i, p in enumerate(sorted(pts))}
    rotation, size = _upright_size(first)
    keyframes = sorted((order[k], k) for k in keys)
    return VideoInfo(
        str(path),
        "video",
        path.stat().st_size,
        head_hash(path),
        len(pts),
        str(fps),
        size[0],
        size[1],
        keyframes,
        rotation,
        counted="packets",
    )


def _demux(container, stream, file_size: int) -> tuple[list[int], list[int], object]:
    """Every packet's pts and the keyframes' pts, in decode order, and the first frame (from the sample decode)."""
    pts, keys, sample = [], [], []
    for packet in container.demux(stream):
        if packet.size == 0 and packet.pts is None:
            continue  # the demuxer's end-of-stream packet
        if packet.pts is None or packet.size == 0 or packet.is_discard or packet.is_corrupt:
            raise _Fallback("a packet without pts, empty, discarded or corrupt")
        if packet.pos >= 0 and packet.pos + packet.size > file_size:
            raise _Fallback("a packet past the end of the file")
        if not pts and not packet.is_keyframe:
            raise _Fallback("the stream does not start on a keyframe")
        pts.append(int(packet.pts))
        if packet.is_keyframe:
            keys.append(int(packet.pts))
        if len(pts) <= SAMPLE_PACKETS:
            sample += packet.decode()
            if len(pts) == SAMPLE_PACKETS:
                sample += stream.decode(None)  # flush: every sample packet's frame is out
    if not pts:
        raise _Fallback("no packets")
    if len(pts) < SAMPLE_PACKETS:
        sample += stream.decode(None)
    if len(sample) != min(len(pts), SAMPLE_PACKETS) or any(f.pts is None for f in sample):
        raise _Fallback(f"{min(len(pts), SAMPLE_PACKETS)} sample packets decoded to {len(sample)} frames with pts")
    if len(set(pts)) != len(pts) or min(pts) != keys[0]:
        raise _Fallback("repeated pts, or frames shown before the first keyframe")
    return pts, keys, min(sample, key=lambda f: f.pts)


class FrameCountMismatch(VideoError):
    """The planned count, taken from the container, is not what decoding finds: the video fails, and a rerun plans it
    by decoding (the message starts with COUNT_MISMATCH, which the host recognises)."""


COUNT_MISMATCH = "frame count mismatch"


def check_frame_count(info: VideoInfo) -> None:
    """Decode from the last planned keyframe to the end and check the frames there are the planned ones: the check a
    worker makes on a video's last unit when its count came from packets. Where a seek lands past the keyframe
    (MPEG-TS seeks by bytes), it starts from an earlier one, and at worst from the first frame."""
    if info.kind != "video" or info.counted != "packets" or not info.keyframes:
        return
    container, stream = _open(Path(info.path))
    index, found = 0, 0
    try:
        for key, pts in [*reversed(info.keyframes[-3:]), (0, None)]:
            index, found = key, _frames_from(container, stream, pts)
            if found is not None:
                break
    except av.error.FFmpegError as err:
        raise FrameCountMismatch(f"{COUNT_MISMATCH}: {info.path}: decoding after frame {index} failed ({err})") from err
    finally:
        container.close()
    if index + found != info.frame_count:
        raise FrameCountMismatch(
            f"{COUNT_MISMATCH}: {info.path} was planned with {info.frame_count} frames counted from its packets, and "
            f"decoding finds {index + found}; run the same command again: it plans this video by decoding it"
        )


def _frames_from(container, stream, pts: int | None) -> int | None:
    """Frames from the keyframe at `pts` (None: the first frame) to the end; None if the seek landed past it."""
    if pts is None:
        container.seek(0, stream=stream)
        return sum(1 for _ in container.decode(stream))
    container.seek(pts, stream=stream, backward=True, any_frame=False)
    found = 0
    for frame in container.decode(stream):
        if frame.pts is None or frame.pts < pts:
            continue
        if found == 0 and frame.pts != pts:
            return None
        found += 1
    return found if found else None
