"""Just enough of the MP4 box structure to see whether a track's edit list is plain (frames play as stored)."""

from __future__ import annotations

from pathlib import Path


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
