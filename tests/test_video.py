"""Video IO on real files with a real decoder (PyAV/FFmpeg)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from conftest import SHARED, numbered_frames, portrait_phone_video, synthetic_frames, write_images, write_video
from media import frame_number

from vda.core.video_info import fit_max_res
from vda.io.decode import read_frames
from vda.io.prefetch import Prefetch
from vda.io.probe import VideoError, probe
from vda.model.synth import synthetic_scene


@pytest.mark.shared
@pytest.mark.parametrize(
    ("name", "count", "fps", "size"),
    [
        ("davis_rollercoaster.mp4", 70, Fraction(24), (960, 540)),
        ("Tokyo-Walk_rgb.mp4", 195, Fraction(15), (1280, 720)),
    ],
)
def test_probe_real_videos(name, count, fps, size):
    """Optional: the authors' two example clips, where ../shared/videos has them (our build machines)."""
    info = probe(SHARED / "videos" / name)
    assert (info.frame_count, info.fps_fraction, (info.width, info.height)) == (count, fps, size)
    assert info.kind == "video" and len(info.head_sha256) == 64


def test_seeking_equals_sequential_decoding(tmp_path):
    frames = synthetic_frames(45, 64, 48)
    info = probe(write_video(tmp_path / "v.mp4", frames))
    assert info.frame_count == 45 and len(info.keyframes) > 2
    everything = dict(read_frames(info, range(45)))
    wanted = [0, 12, 13, *range(24, 40)]
    got = dict(Prefetch(read_frames(info, wanted)))
    assert sorted(got) == wanted
    for i in wanted:
        assert np.array_equal(got[i], everything[i])


def test_fps_is_an_exact_fraction(tmp_path):
    info = probe(write_video(tmp_path / "ntsc.mp4", synthetic_frames(3), fps=Fraction(30000, 1001)))
    assert info.fps_fraction == Fraction(30000, 1001)


def test_image_folder_sorted_by_name(tmp_path):
    frames = synthetic_frames(5)
    folder = write_images(tmp_path / "imgs", frames)
    info = probe(folder)
    assert (info.kind, info.frame_count, info.width, info.height) == ("images", 5, 64, 48)
    got = [f for _, f in read_frames(info, range(5))]
    assert all(np.array_equal(a, b) for a, b in zip(got, frames))  # PNG is lossless


def test_resize_to_max_res(tmp_path):
    assert fit_max_res(1920, 1080, 1280) == (1280, 720)
    assert fit_max_res(640, 360, 1280) == (640, 360)
    assert fit_max_res(1920, 1080, 0) == (1920, 1080)
    info = probe(write_images(tmp_path / "i", synthetic_frames(2)))
    assert next(read_frames(info, [0], (32, 24)))[1].shape == (24, 32, 3)


def test_bad_inputs(tmp_path):
    with pytest.raises(VideoError, match="input not found"):
        probe(tmp_path / "missing.mp4")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all")
    with pytest.raises(VideoError, match="cannot be opened as a video"):
        probe(text)
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoError, match="holds no images"):
        probe(tmp_path / "empty")
    bad = write_images(tmp_path / "bad", synthetic_frames(3))
    (bad / "img_00001.png").write_bytes(b"garbage")
    with pytest.raises(VideoError, match="cannot read image .*img_00001.png"):
        probe(bad)


def test_mixed_sizes_in_folder(tmp_path):
    folder = write_images(tmp_path / "mixed", synthetic_frames(2, 64, 48) + synthetic_frames(1, 32, 24))
    with pytest.raises(VideoError, match="img_00002.png is 32x24, the first is 64x48"):
        probe(folder)  # found at plan time
    info = probe(write_images(tmp_path / "same", synthetic_frames(3, 64, 48)))
    write_images(tmp_path / "same", synthetic_frames(3, 64, 40))  # replaced after probing: found while reading
    with pytest.raises(VideoError, match="img_00000.png is 64x40, the first is 64x48"):
        list(read_frames(info, range(3)))


def test_truncated_video_names_the_frame(tmp_path):
    path = write_video(tmp_path / "full.mp4", synthetic_frames(40, 64, 48))
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(VideoError, match="truncated or corrupt"):
        probe(cut)  # the mp4 index is at the end: a cut file cannot be opened


def test_decoder_errors_surface_in_the_consumer():
    def broken():
        yield 1
        raise RuntimeError("decoder exploded")

    it = Prefetch(broken())
    assert next(it) == 1
    with pytest.raises(RuntimeError, match="decoder exploded"):
        next(it)


def test_a_portrait_phone_video_is_read_upright(tmp_path):
    info = probe(portrait_phone_video(tmp_path / "portrait.mp4"))
    assert (info.width, info.height, info.rotation) == (48, 64, 270)
    frames = [f for _, f in read_frames(info, [0, 17, 29])]  # from the start and after seeking
    for f in frames:
        assert f.shape == (64, 48, 3) and f.flags.c_contiguous
        assert f[:16, -12:].mean() > 200 and f[:16, :12].mean() < 50  # the stored top-left is now top-right
    small = [f for _, f in read_frames(info, [5], size=(24, 32))]
    assert small[0].shape == (32, 24, 3)  # --max-res resizing happens after turning upright
    assert small[0][:8, -6:].mean() > 200 and small[0][:8, :6].mean() < 50  # swscale resized it as stored, then turned


def _indices(info, wanted) -> list[int]:
    return [frame_number(f) for _, f in read_frames(info, wanted)]


def test_bframes_and_a_long_gop(tmp_path):
    """B-frames reorder decoding; one keyframe in 120 frames means a late span decodes from the start."""
    import av
    from av.video.frame import PictureType

    path = write_video(tmp_path / "long_gop.mp4", numbered_frames(120), gop=250, bframes=3)
    with av.open(str(path)) as c:
        kinds = {PictureType(f.pict_type) for f in c.decode(video=0)}
    assert PictureType.B in kinds
    info = probe(path)
    assert info.frame_count == 120 and [k[0] for k in info.keyframes] == [0]
    assert _indices(info, range(120)) == list(range(120))
    assert _indices(info, [*range(90, 100), 119]) == [*range(90, 100), 119]


def test_bframes_with_short_gop_seek_to_the_right_frame(tmp_path):
    info = probe(write_video(tmp_path / "bf.mp4", numbered_frames(100), gop=12, bframes=2))
    assert len(info.keyframes) >= 8
    wanted = [0, 13, 14, 37, *range(60, 75), 99]
    assert _indices(info, wanted) == wanted


def test_odd_size_lossless_video(tmp_path):
    frames = list(synthetic_scene(9, 39, 67))
    info = probe(write_video(tmp_path / "odd.mkv", frames, codec="ffv1"))
    assert (info.width, info.height, info.frame_count) == (67, 39, 9)
    got = [f for _, f in read_frames(info, range(9))]
    assert all(np.array_equal(a, b) for a, b in zip(got, frames))  # FFV1 in RGB is lossless
    small = [f for _, f in read_frames(info, [4], size=fit_max_res(67, 39, 33))]
    assert small[0].shape == (19, 33, 3)


def test_audio_track_is_ignored(tmp_path):
    import av

    path = write_video(tmp_path / "with_audio.mp4", numbered_frames(50), fps=Fraction(25), audio=True)
    with av.open(str(path)) as c:
        assert len(c.streams.audio) == 1 and c.streams.audio[0].frames > 0
    info = probe(path)
    assert (info.frame_count, info.fps_fraction) == (50, Fraction(25))
    assert _indices(info, [0, 1, 30, 31, 49]) == [0, 1, 30, 31, 49]


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_variable_frame_rate(tmp_path, suffix):
    """Irregular timestamps: every frame is counted once and found again by seeking; fps is the average."""
    rng = np.random.RandomState(3)
    pts = np.cumsum(rng.choice([20, 33, 40, 67], size=60)).tolist()
    pts = [0] + pts[:-1]
    info = probe(write_video(tmp_path / f"vfr{suffix}", numbered_frames(60), pts=pts))
    assert info.frame_count == 60 and len(info.keyframes) >= 5
    assert 10 < info.fps_fraction < 60
    assert _indices(info, range(60)) == list(range(60))
    assert _indices(info, [25, 26, 27, 58]) == [25, 26, 27, 58]


def test_a_unit_continues_the_previous_units_decoder(tmp_path, monkeypatch):
    """The worker's FrameSource: consecutive window units of a video read from one decoder, which never seeks back
    (frame 0 and the re-read keyframe and overlap are kept), and give the frames a fresh decoder gives, resized."""
    from vda.core.plan import window_unit_frames
    from vda.device.unit import REREAD
    from vda.io.decode_pyav import PyAVDecoder
    from vda.io.frame_source import FrameSource

    info = probe(write_video(tmp_path / "bf.mp4", numbered_frames(150, 96, 64), gop=12, bframes=2))
    seeks = []
    real = PyAVDecoder._seek
    monkeypatch.setattr(PyAVDecoder, "_seek", lambda self, key: seeks.append(key) or real(self, key))
    source = FrameSource(keep=REREAD)
    for windows in [(0, 2), (2, 4), (4, 6)]:
        wanted = [i for a, b in window_unit_frames(windows, info.frame_count)[0] for i in range(a, b)]
        fresh = list(read_frames(info, wanted, (48, 32)))
        assert windows == (0, 2) or seeks  # a fresh decoder seeks to the unit's keyframe
        seeks.clear()
        got = list(Prefetch(source.read(info, wanted, (48, 32))))
        assert seeks == []
        assert [i for i, _ in got] == wanted and all(np.array_equal(a, b) for (_, a), (_, b) in zip(got, fresh))
    assert len(source._parked) == 1
    source.close()
