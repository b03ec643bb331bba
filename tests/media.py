"""Test footage made on the spot: procedural frames, and real files written with real encoders (PyAV/FFmpeg).

No third-party footage is needed: every video a test reads is encoded here, with the properties that break naive
readers (B-frames and a long GOP, a phone's rotation tag, odd sizes, an audio track, variable frame rate) and the
containers whose packets are not one frame each (a raw H.264 stream without pts, MPEG-4 part 2 in AVI, an MP4 whose
edit list cuts its first frames). MPEG-TS (a .ts path) and VP9 in WebM (codec="libvpx-vp9", a .webm path) are
write_video's too.
"""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np


def synthetic_frames(n: int, width: int = 64, height: int = 48, seed: int = 0) -> list[np.ndarray]:
    """Moving gradients with noise: enough structure for the model to give varied depth."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    frames = []
    for t in range(n):
        r = (xx * 4 + t * 3) % 256
        g = (yy * 5 + t * 2) % 256
        b = ((xx + yy) * 2 + t * 7) % 256
        img = np.stack([r, g, b], -1) + rng.randint(0, 20, (height, width, 3))
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return frames


def numbered_frames(n: int, width: int = 64, height: int = 48) -> list[np.ndarray]:
    """Frame i shows the bits of i as black/white columns (8 px wide), readable after lossy coding: see frame_number."""
    frames = []
    for i in range(n):
        img = np.full((height, width, 3), 128, np.uint8)
        for bit in range(width // 8):
            img[:, bit * 8 : bit * 8 + 8] = 255 if (i >> bit) & 1 else 0
        frames.append(img)
    return frames


def frame_number(frame: np.ndarray) -> int:
    """The index numbered_frames wrote into `frame`."""
    cols = frame[:, : frame.shape[1] // 8 * 8].reshape(frame.shape[0], -1, 8, 3).mean(axis=(0, 2, 3))
    return sum(1 << bit for bit, value in enumerate(cols) if value > 128)


def write_video(
    path: Path,
    frames: list[np.ndarray],
    fps: Fraction = Fraction(24),
    *,
    codec: str = "libx264",
    gop: int = 10,
    bframes: int = 0,
    audio: bool = False,
    pts: list[int] | None = None,
) -> Path:
    """Encode with a real encoder through PyAV; decoding it back is what the tests exercise.

    - libx264 (yuv420p, even sizes) by default, keyframes every `gop` frames so that workers really seek;
      `bframes` > 0 adds B-frames (decode order differs from presentation order).
    - codec="ffv1" writes lossless RGB (bgr0), at any size, odd ones included; use a .mkv path.
    - audio=True muxes a 1 kHz AAC tone beside the video, interleaved as a real file has it.
    - pts: presentation times in units of 1/1000 s, one per frame, for variable frame rate (mkv or mp4).
    """
    path = Path(path)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        if codec == "ffv1":
            stream.pix_fmt = "bgr0"
        else:
            stream.pix_fmt = "yuv420p"
            stream.options = {"g": str(gop), "bf": str(bframes), "keyint_min": str(gop)}
        if pts is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        sound = container.add_stream("aac", rate=48000, layout="mono") if audio else None
        samples = 0
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
            if sound is not None:  # audio up to this frame's end time
                end = int(48000 * (pts[i + 1] / 1000 if pts and i + 1 < len(pts) else (i + 1) / fps))
                while samples < end:
                    n = min(1024, max(end - samples, 1))
                    t = (samples + np.arange(n)) / 48000
                    chunk = av.AudioFrame.from_ndarray(
                        (0.2 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)[None], format="fltp", layout="mono"
                    )
                    chunk.sample_rate, chunk.pts = 48000, samples
                    for packet in sound.encode(chunk):
                        container.mux(packet)
                    samples += n
        for packet in stream.encode():
            container.mux(packet)
        if sound is not None:
            for packet in sound.encode():
                container.mux(packet)
    return path


def set_display_rotation(path: Path) -> Path:
    """Write the display matrix a phone writes for portrait (shown turned 90 clockwise) into an mp4's 'tkhd' box."""
    data = bytearray(Path(path).read_bytes())
    box = data.find(b"tkhd")
    assert data[box + 4] == 0  # version 0: 32-bit times, so the matrix sits at a fixed offset
    matrix = box + 4 + 4 + 4 * 5 + 8 + 2 * 4  # after version/flags, 5 times/ids, reserved, layer..volume
    (height,) = struct.unpack(">I", data[matrix + 40 : matrix + 44])  # the track height, 16.16 fixed point
    data[matrix : matrix + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, height, 0, 0x40000000)
    Path(path).write_bytes(bytes(data))
    return Path(path)


def trim_edit_list(src: Path, dst: Path, frames: int, fps: Fraction = Fraction(24)) -> Path:
    """A copy of a video-only mp4 whose edit list starts `frames` frames later, as a cut without re-encoding makes it:
    those frames are still in the file (the first ones are needed to decode the rest) but players do not show them."""
    data = bytearray(Path(src).read_bytes())
    assert data.count(b"elst") == 1 and data.count(b"mdhd") == 1, "one track with one edit list"
    mdhd = data.find(b"mdhd") + 4
    assert data[mdhd] == 0  # version 0: 32-bit fields
    (timescale,) = struct.unpack(">I", data[mdhd + 12 : mdhd + 16])
    elst = data.find(b"elst") + 4
    assert data[elst] == 0 and struct.unpack(">I", data[elst + 4 : elst + 8]) == (1,)  # version 0, one entry
    (media_time,) = struct.unpack(">i", data[elst + 12 : elst + 16])
    data[elst + 12 : elst + 16] = struct.pack(">i", media_time + int(frames * timescale / fps))
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def portrait_phone_video(path: Path, n: int = 30, width: int = 64, height: int = 48) -> Path:
    """A landscape x264 mp4 tagged as a phone's portrait video; a white block marks the stored top-left corner."""
    frames = [np.zeros((height, width, 3), np.uint8) for _ in range(n)]
    for f in frames:
        f[:12, :16] = 255
    return set_display_rotation(write_video(path, frames))


def write_images(folder: Path, frames: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"img_{i:05d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    return folder
