"""Video and image-folder input: exact probing, frame-accurate seeking, a threaded decoder.

Frame counts come from the packets themselves (demuxed, not decoded) where packets and frames match one to one, and
from decoding everywhere else; never from container metadata (a header's frame count). fps is an exact Fraction.
Seeking jumps to the last keyframe at or before the wanted frame (positions recorded while probing),
so a worker decodes only its unit's frames instead of the video from the start.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import av
import av.video.reformatter
import cv2
import numpy as np

from vda import config
from vda.errors import InputError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
HEAD_BYTES = 1 << 20  # content hash covers the first MiB: cheap, and catches a replaced file
DEFAULT_IMAGE_FPS = Fraction(30)
log = logging.getLogger(__name__)


class VideoError(InputError):
    """Unusable input; the message names the problem and the fix."""


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


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def _read_image(path: Path) -> np.ndarray:
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
    first = _read_image(files[0])
    small = cv2.imread(str(files[0]), cv2.IMREAD_REDUCED_GRAYSCALE_8).shape
    for f in files[1:]:
        reduced = cv2.imread(str(f), cv2.IMREAD_REDUCED_GRAYSCALE_8)  # decodes at 1/8 size: cheap
        if reduced is None:
            raise VideoError(f"cannot read image {f}; remove it or replace it with a valid image")
        if reduced.shape != small:
            size = _read_image(f).shape
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


def _plain_edit_list(path: Path) -> bool:
    """Whether the video track's MP4 edit list is absent or one plain entry (media time >= 0 at rate 1: the B-frame
    delay every encoder writes). Anything else (an empty edit, several entries, a rate) makes packets and frames
    differ in ways the demuxer's discard flags may not show."""
    moov = _mp4_box(path, b"moov")
    if moov is None:
        return False
    for trak in _boxes(moov, b"trak"):
        mdia = next(_boxes(trak, b"mdia"), b"")
        hdlr = next(_boxes(mdia, b"hdlr"), b"")
        if hdlr[8:12] != b"vide":
            continue
        elst = next((e for edts in _boxes(trak, b"edts") for e in _boxes(edts, b"elst")), None)
        if elst is None:
            return True
        version, count = elst[0], int.from_bytes(elst[4:8], "big")
        entry = elst[8:28] if version == 1 else elst[8:20]
        if count != 1 or len(entry) < (20 if version == 1 else 12):
            return False
        t = 8 if version == 1 else 4
        media_time = int.from_bytes(entry[t : 2 * t], "big", signed=True)
        rate = int.from_bytes(entry[2 * t : 2 * t + 4], "big", signed=True)
        return media_time >= 0 and rate == 0x10000
    return False


def _boxes(data: bytes, kind: bytes):
    """The payloads of the boxes of `kind` among `data`'s top-level boxes."""
    at = 0
    while at + 8 <= len(data):
        size, name = int.from_bytes(data[at : at + 4], "big"), data[at + 4 : at + 8]
        head = 8
        if size == 1:
            size, head = int.from_bytes(data[at + 8 : at + 16], "big"), 16
        elif size == 0:
            size = len(data) - at
        if size < head:
            return
        if name == kind:
            yield data[at + head : at + size]
        at += size


def _mp4_box(path: Path, kind: bytes, limit: int = 1 << 28) -> bytes | None:
    """A top-level box of an MP4 file, read without reading the rest (the media data can be gigabytes)."""
    with open(path, "rb") as fh:
        while header := fh.read(8):
            if len(header) < 8:
                return None
            size, head = int.from_bytes(header[:4], "big"), 8
            if size == 1:
                size, head = int.from_bytes(fh.read(8), "big"), 16
            if header[4:8] == kind:
                return fh.read(min(size - head, limit)) if size else fh.read(limit)
            if size < head:
                return None
            fh.seek(size - head, 1)
    return None


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


def read_frames(
    info: VideoInfo, indices: Iterable[int], size: tuple[int, int] | None = None, threads: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """(index, RGB uint8 frame) for the given indices, in increasing order, resized to `size` (w, h) if given.

    A video's frames are converted and resized in one pass by swscale (`_SeekingReader`); image folders by OpenCV.
    """
    if info.kind == "images":
        yield from _read_images(info, spans(indices), size)
        return
    reader = _SeekingReader(info, size, threads)
    try:
        for a, b in spans(indices):
            yield from reader.span(a, b)
    finally:
        reader.close()


def _read_images(info: VideoInfo, runs: list[tuple[int, int]], size: tuple[int, int] | None):
    resize = None if size is None or size == (info.width, info.height) else size
    files = image_files(Path(info.path))
    for a, b in runs:
        for i in range(a, b):
            img = _read_image(files[i])
            if (img.shape[1], img.shape[0]) != (info.width, info.height):
                raise VideoError(
                    f"image {files[i].name} is {img.shape[1]}x{img.shape[0]}, the first is "
                    f"{info.width}x{info.height}; all images of a sequence must have one size"
                )
            yield i, img if resize is None else cv2.resize(img, resize)


class Decoder(Protocol):
    """What decodes a video for the workers: spans of frames in increasing order, upright, RGB at the asked size.

    `_SeekingReader` (PyAV, on the CPU's cores) is the one built. A GPU decoder (NVDEC through torchcodec or
    PyNvVideoCodec, handing out frames already on the device) would implement these three members; it is not built
    or tested here, as it needs a GPU.
    """

    next_index: int  # the frame the running decode yields next

    def span(self, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]: ...

    def close(self) -> None: ...


# swscale's area filter: it averages when downsizing (cv2.resize's INTER_LINEAR samples 4 pixels), and converting and
# resizing in one pass costs less than RGB at full size then a resize: 1080p to 720p, 3.7 against 5.3 ms per frame
# over the decode's own 10.7 (one thread, loaded 2-core machine; swscale's BILINEAR 6.2, FAST_BILINEAR 3.3).
SCALER = "AREA"


class _SeekingReader:
    """Decodes spans in increasing order, seeking forward to a keyframe only when that skips frames.

    Frames come out upright and at `size` (w, h): swscale converts the decoder's YUV to RGB and resizes in one pass.
    Where the plan counted frames from packets, every planned keyframe a decode passes is checked to come out at its
    planned index (FrameCountMismatch): a packet in the middle that decodes to two frames or none shifts every later
    frame, which the last unit's check (check_frame_count, from the last keyframe on) cannot see. Units overlap (a
    window's context), so the decodes of a video's units pass every keyframe after its first.
    """

    def __init__(self, info: VideoInfo, size: tuple[int, int] | None = None, threads: int | None = None):
        self.info = info
        self.container, self.stream = _open(Path(info.path), threads)
        self.frames = None  # the running decode iterator
        self.next_index = 0  # index of the frame self.frames yields next
        turned = info.rotation in (90, 270)
        upright = size if size is not None and size != (info.width, info.height) else None
        # swscale works on the frames as stored: a turned video is scaled to the turned size, then turned upright
        self._scaled = None if upright is None else (upright[::-1] if turned else upright)
        self._scaler = av.video.reformatter.VideoReformatter()
        self._threads = threads or config.current().threads or 0
        self._planned = {pts: index for index, pts in info.keyframes} if info.counted == "packets" else {}

    def close(self) -> None:
        self.container.close()

    def _rgb(self, frame) -> np.ndarray:
        """The frame as a player shows it, at the asked size: turned by the display matrix, as ffmpeg's autorotate."""
        if self._scaled is None:
            rgb = frame.to_ndarray(format="rgb24")
        else:
            w, h = self._scaled
            rgb = self._scaler.reformat(frame, w, h, "rgb24", interpolation=SCALER, threads=self._threads).to_ndarray()
        k = self.info.rotation // 90
        return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb

    def _seek(self, key: tuple[int, int]) -> None:
        self.container.seek(key[1], stream=self.stream, backward=True, any_frame=False)
        self.frames = self.container.decode(self.stream)
        for frame in self.frames:
            if frame.pts is None or frame.pts < key[1]:
                continue
            if frame.pts != key[1]:
                raise VideoError(f"{self.info.path}: seeking missed keyframe {key[0]}; re-mux the video")
            self.next_index = key[0]
            self._pending = frame
            return
        raise VideoError(f"{self.info.path}: the video ended at keyframe {key[0]}; it is truncated")

    def span(self, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        key = max((k for k in self.info.keyframes if k[0] <= start), default=None)
        self._pending = None
        if self.frames is None or (key is not None and self.next_index < key[0]) or self.next_index > start:
            if key is not None and key[0] > 0:
                self._seek(key)
            else:
                self.container.seek(0, stream=self.stream)
                self.frames, self.next_index = self.container.decode(self.stream), 0
        try:
            while self.next_index < stop:
                frame = self._pending if self._pending is not None else next(self.frames, None)
                self._pending = None
                if frame is None:
                    raise VideoError(
                        f"{self.info.path}: the video ended at frame {self.next_index}, before frame "
                        f"{stop - 1}; it is truncated"
                    )
                index, self.next_index = self.next_index, self.next_index + 1  # first: a caller may stop at the yield
                if self._planned.get(frame.pts, index) != index:
                    raise FrameCountMismatch(
                        f"{COUNT_MISMATCH}: {self.info.path}: keyframe {self._planned[frame.pts]} of the plan (counted "
                        f"from packets) decodes as frame {index}; run the same command again: it plans this video by "
                        "decoding it"
                    )
                if index >= start:
                    yield index, self._rgb(frame)
        except av.error.FFmpegError as err:
            raise VideoError(
                f"{self.info.path}: decoding failed at frame {self.next_index} ({err}); "
                "the file is truncated or corrupt"
            ) from err


class FrameSource:
    """The frames of a worker's units, from one decoder per video kept from unit to unit.

    A unit that begins where the previous unit of the same video ended (the next unit of a video, on one worker)
    continues that unit's decode instead of seeking back and decoding up to a GOP again: the frames it reads again,
    frame 0 and the last `keep` decoded (a window's keyframe and overlap), are kept from the previous unit, by
    reference (nothing writes to a decoded frame). The next unit's decode, started while the current unit computes,
    waits for the current one's to finish (its decoder is busy); both decoding at once would only share the same
    cores. So a thread must not hold a `read` of a video unfinished while it starts another of the same video.
    `threads`: decoder threads (None: VDA_THREADS).
    """

    PARKED = 2  # videos whose decoder stays open: the current one and one more (a batch alternating two videos)

    def __init__(self, threads: int | None = None, keep: int = 0):
        self.threads, self.keep = threads, keep
        self._free = threading.Condition()
        self._parked: dict[tuple, tuple[Decoder, dict[int, np.ndarray]]] = {}  # oldest first
        self._busy: set[tuple] = set()

    def read(self, info: VideoInfo, indices: Iterable[int], size: tuple[int, int] | None = None):
        """read_frames(info, indices, size), from this source's decoder of `info` when one is parked."""
        if info.kind == "images":
            yield from _read_images(info, spans(indices), size)
            return
        key = (info.path, info.head_sha256, size)
        reader, kept = self._take(key, info, size)
        try:
            for a, b in spans(indices):
                yield from self._span(reader, kept, a, b)
        except GeneratorExit:  # stopped early (the unit ended): the decoder is still good where it stands
            raise
        except BaseException:  # a decoding error: that decoder is not reused
            reader.close()
            reader = None
            raise
        finally:
            self._park(key, reader, kept)

    def _span(self, reader: Decoder, kept: dict[int, np.ndarray], a: int, b: int):
        for i in range(a, b):
            if i in kept:
                yield i, kept[i]
                continue
            for j, frame in reader.span(i, b):
                kept[j] = frame
                for old in [k for k in kept if 0 < k <= j - self.keep]:
                    del kept[old]
                yield j, frame
            return

    def _take(self, key: tuple, info: VideoInfo, size) -> tuple[Decoder, dict[int, np.ndarray]]:
        with self._free:
            while key in self._busy:
                self._free.wait()
            self._busy.add(key)
            parked = self._parked.pop(key, None)
        return parked or (_SeekingReader(info, size, self.threads), {})

    def _park(self, key: tuple, reader: Decoder | None, kept: dict[int, np.ndarray]) -> None:
        with self._free:
            self._busy.discard(key)
            if reader is not None:
                self._parked[key] = (reader, kept)
                while len(self._parked) > self.PARKED:
                    old = next(iter(self._parked))
                    self._parked.pop(old)[0].close()
            self._free.notify_all()

    def close(self) -> None:
        with self._free:
            for reader, _ in self._parked.values():
                reader.close()
            self._parked.clear()


_END = object()


def threaded(items: Iterable, maxsize: int = 8) -> Prefetch:
    """Run `items` in a background thread feeding a bounded queue, from now on; its exceptions re-raise here.

    Decoding then overlaps with model compute, and a decoder made for the next unit seeks and fills its queue while
    the current unit computes. `close()` stops the producer (at its next frame).
    """
    return Prefetch(items, maxsize)


class Prefetch:
    """The iterator `threaded` returns (see there)."""

    def __init__(self, items: Iterable, maxsize: int):
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._produce, args=(iter(items),), name="vda-decode", daemon=True)
        self._thread.start()

    def _produce(self, items: Iterator) -> None:
        try:
            for item in items:
                while not self._stop.is_set():
                    try:
                        self._queue.put((None, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._put((None, _END))
        except BaseException as err:  # handed to the consumer, which re-raises it
            self._put((err, None))
        finally:  # a generator stopped early runs its cleanup now, in this thread (a FrameSource parks its decoder)
            close = getattr(items, "close", None)
            if close is not None:
                close()

    def _put(self, entry) -> None:
        """Hand on the end or an error, unless the consumer has gone (then the queue may stay full forever)."""
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Prefetch:
        return self

    def __next__(self):
        if self._finished:
            raise StopIteration
        err, item = self._queue.get()
        if err is not None:
            self.close()
            raise err
        if item is _END:
            self._finished = True
            raise StopIteration
        return item

    def close(self) -> None:
        self._finished = True
        self._stop.set()

    def __del__(self) -> None:
        self._stop.set()
