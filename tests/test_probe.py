"""Planning from the container (issue 21): frames counted from packets, exactly, and decoded where they may differ.

Every video here is encoded for real (tests/media.py) and counted three ways: the probe planning uses, the probe that
decodes every frame, and the frames read_frames hands a worker. They must agree on every one.
"""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
import torch
from conftest import numbered_frames, portrait_phone_video, read_output, run_vda, synthetic_frames, write_video
from media import trim_edit_list

from vda.device.serve import work_runs
from vda.io.decode import read_frames
from vda.io.frame_source import FrameSource
from vda.io.probe import COUNT_MISMATCH, FrameCountMismatch, check_frame_count, decode_count, probe
from vda.io.rundir import RunDir
from vda.merge import merge
from vda.orchestrator.planning import create_plan, probe_input

VFR = [i * 40 + (i % 3) * 7 for i in range(60)]  # ms: 40, 47, 54, ... a variable frame rate
VIDEOS = {  # name -> (how it is made, how planning counts it)
    "x264.mp4": (lambda p: write_video(p, synthetic_frames(45)), "packets"),
    "bframes_long_gop.mp4": (lambda p: write_video(p, numbered_frames(120), gop=250, bframes=3), "packets"),
    "bframes_short_gop.mp4": (lambda p: write_video(p, numbered_frames(100), gop=12, bframes=2), "packets"),
    "rotated.mp4": (lambda p: portrait_phone_video(p), "packets"),
    "odd_ffv1.mkv": (lambda p: write_video(p, synthetic_frames(21, 63, 47), codec="ffv1"), "packets"),
    "audio.mp4": (lambda p: write_video(p, numbered_frames(50), fps=Fraction(25), audio=True), "packets"),
    "vfr.mkv": (lambda p: write_video(p, numbered_frames(60), pts=VFR), "packets"),
    "vfr.mp4": (lambda p: write_video(p, numbered_frames(60), pts=VFR), "packets"),
    "mpegts.ts": (lambda p: write_video(p, numbered_frames(70), bframes=2), "packets"),
    "vp9.webm": (lambda p: write_video(p, synthetic_frames(50), codec="libvpx-vp9"), "packets"),
    "no_pts.h264": (lambda p: write_video(p, numbered_frames(40), bframes=2), "decode"),
    "mpeg4.avi": (lambda p: write_video(p, numbered_frames(40), codec="mpeg4", bframes=2), "decode"),
    "edit_list_cut.mp4": (
        lambda p: trim_edit_list(
            write_video(p.with_suffix(".full.mp4"), numbered_frames(100), gop=12, bframes=2), p, 5
        ),
        "decode",
    ),
}


@pytest.mark.parametrize("name", VIDEOS)
def test_the_planned_count_is_what_decoding_gives(tmp_path, name):
    make, counted = VIDEOS[name]
    path = make(tmp_path / name)
    info, exact = probe(path), decode_count(path)
    assert info.counted == counted
    assert info.frame_count == exact.frame_count
    if not name.endswith(".h264"):  # a raw stream cannot seek, even to its start: the seeking reader does not read it
        assert sum(1 for _ in read_frames(info, range(info.frame_count))) == info.frame_count
    assert (info.fps, info.width, info.height, info.rotation) == (exact.fps, exact.width, exact.height, exact.rotation)
    if counted == "packets":  # the keyframes workers seek to, from packet flags, are the decoder's keyframes
        assert info.keyframes == exact.keyframes
        check_frame_count(info)  # what the worker of the last unit checks: it passes


def test_the_last_unit_check_finds_a_wrong_count(tmp_path):
    info = probe(write_video(tmp_path / "v.mp4", synthetic_frames(45), gop=10))
    for wrong in (info.frame_count - 2, info.frame_count + 3):
        info.frame_count = wrong
        with pytest.raises(FrameCountMismatch, match=f"^{COUNT_MISMATCH}: .* planned with {wrong} frames .* finds 45;"):
            check_frame_count(info)


def test_a_keyframe_off_its_planned_index_fails_the_decode(tmp_path):
    """A packet in the middle that decoded to no frame: the count from packets is one short from there on. The last
    unit's check, from the last keyframe on, agrees with such a plan; the decode that passes the shifted keyframe
    does not, in the seeking reader and in the workers' FrameSource alike."""
    info = probe(write_video(tmp_path / "v.mp4", synthetic_frames(45), gop=10))
    key = info.keyframes[2][0]  # shifted from the third keyframe on
    assert len(info.keyframes) > 3 and key > info.keyframes[1][0] + 2
    info.keyframes = [(k if k < key else k - 1, pts) for k, pts in info.keyframes]
    info.frame_count -= 1
    check_frame_count(info)  # the tail alone looks right
    assert len(list(read_frames(info, range(0, key - 1)))) == key - 1  # nothing passed yet
    shifted = f"^{COUNT_MISMATCH}: .* keyframe {key - 1} of the plan .* as frame {key};"
    for frames in (read_frames(info, range(key - 2, key + 2)), FrameSource().read(info, range(key - 2, key + 2))):
        with pytest.raises(FrameCountMismatch, match=shifted):
            list(frames)


def test_a_resume_reads_the_probe_back(tmp_path, monkeypatch):
    src = write_video(tmp_path / "v.mp4", synthetic_frames(45))
    run = RunDir(tmp_path / "run")
    first, _ = probe_input(src, run)
    assert json.loads(run.probe.read_text())["info"]["frame_count"] == 45

    def no_probe(*args, **kwargs):
        raise AssertionError("probed again")

    monkeypatch.setattr("vda.orchestrator.planning.probe", no_probe)
    assert probe_input(src, run) == (first, False)
    src.write_bytes(src.read_bytes() + b"\0")  # another file under the same name: probed again
    with pytest.raises(AssertionError, match="probed again"):
        probe_input(src, run)


@pytest.mark.slow
def test_a_wrong_count_fails_the_video_and_a_rerun_plans_it_by_decoding(tmp_path, checkpoint):
    """The probe cache is edited to say two frames fewer, as a container whose packets mislead would: the worker of
    the last unit finds the real count, the video fails in one line, and the same command then plans it by decoding
    and gives the output of a clean run."""
    src = write_video(tmp_path / "clip.mp4", synthetic_frames(46, 64, 48))
    out, args = tmp_path / "out", ["--checkpoint", checkpoint, "--input-size", 56, "--unit-size", 1, "--format", "npy"]
    run = RunDir(out / "_run")
    probe_input(src, run)
    cached = json.loads(run.probe.read_text())
    cached["info"]["frame_count"] = 44
    run.probe.write_text(json.dumps(cached))
    failed = run_vda("depth", src, "-o", out, "--devices", "cpu", *args, check=False)
    assert failed.returncode != 0
    (line,) = [x for x in failed.stderr.splitlines() if x.startswith("vda: error:")]
    assert f"{COUNT_MISMATCH}: " in line and "planned with 44 frames" in line and "finds 46" in line
    assert not (out / "depth_meta.json").exists()
    run_vda("depth", src, "-o", out, "--devices", "cpu", *args)
    clean = RunDir(tmp_path / "clean")
    create_plan(src, clean.path, checkpoint=str(checkpoint), input_size=56, unit_size=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the CLI's workers run: the same bits
    try:
        work_runs([clean.path], "cpu", checkpoint=str(checkpoint))
    finally:
        torch.set_num_threads(threads)
    merge(clean.path, tmp_path / "clean_out", "npy", workers=1)
    assert np.array_equal(read_output(out), read_output(tmp_path / "clean_out"))


def test_the_queue_starts_on_the_first_planned_input(tmp_path, checkpoint):
    """Input b is counted by decoding (MPEG-4 part 2), 3,000 frames: its planning outlasts a's by seconds, so the run
    starts on a while b is still being planned, and takes b in when it is."""
    a = write_video(tmp_path / "a.mp4", synthetic_frames(40, 64, 48))
    b = write_video(tmp_path / "b.avi", numbered_frames(3000, 320, 240), codec="mpeg4")
    out = tmp_path / "out"
    args = ["--checkpoint", checkpoint, "--input-size", 28, "--max-res", 64, "--format", "npy", "--no-space-check"]
    done = run_vda("depth", a, b, "-o", out, "--devices", "cpu", *args, env={"VDA_SIMULATE_MS_PER_FRAME": "0"})
    start = done.stderr.splitlines()[0]
    assert start.startswith("vda: 1/2 inputs planned so far, 40 frames in 1 units on cpu (local)"), done.stderr
    record = json.loads((out / "_run" / "processing_results.json").read_text())
    assert [(v["name"], v["status"], v["frames"]) for v in record["videos"]] == [
        ("a", "merged", 40),
        ("b", "merged", 3000),
    ]
    assert len(list((out / "b").glob("depth_*.npy"))) == 3000
