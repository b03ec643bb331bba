"""PyAV (FFmpeg) decoding on the host's cores, as a `Decoder`: frame-accurate seeks to planned keyframes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import av.video.reformatter
import numpy as np

from vda import config
from vda.core.video_info import VideoInfo
from vda.io.decoder import Decoder
from vda.io.probe import COUNT_MISMATCH, FrameCountMismatch, VideoError, _open

# swscale's area filter: it averages when downsizing (cv2.resize's INTER_LINEAR samples 4 pixels), and converting and
# resizing in one pass costs less than RGB at full size then a resize: 1080p to 720p, 3.7 against 5.3 ms per frame
# over the decode's own 10.7 (one thread, loaded 2-core machine; swscale's BILINEAR 6.2, FAST_BILINEAR 3.3).
SCALER = "AREA"


class PyAVDecoder(Decoder):
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
