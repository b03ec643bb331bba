"""Throughput of every stage at 1920x1080, in frames/s, on the machine and device present.

    python bench/bench_stages.py [--frames 66] [--encoders vits] [--precisions fp32] [--only model ...] [--record]

Stages: decode (PyAV, x264 1080p), preprocess (resize to 518 + normalise), model (per encoder and
precision, window mode), the worker's store of a window, merge (alignment chain + blending to 1080p), writing
each format (one core, and all cores), PNG and EXR compression settings, the colourised video, and end to end
(`vda depth`, local backend). It also prints
how many cores the merge needs to keep up with N GPUs running vits at the authors' published speed
(7.5 ms per frame in fp16 on an A100). `--record` appends the table to bench/RESULTS.md with the date,
machine and commit. Weights are the synthetic ones (speed does not depend on their values).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import subprocess
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np
import torch
from bench_infer import append_results, depth_cmd, synthetic_checkpoint, synthetic_state, synthetic_video

from vda.core import stitch
from vda.core.align import WindowAligner, chain_step
from vda.core.preprocess import network_shape, preprocess
from vda.io.decode import read_frames
from vda.io.pngenc import DEFLATE, encode_gray
from vda.io.prefetch import Prefetch
from vda.io.probe import probe
from vda.io.writers import FORMATS, colorize, encode, quantize
from vda.model.network import load_model

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED_VITS_MS = 7.5  # authors' README: vits, fp16, A100, 1x32x518x518, per frame
W, H = 1920, 1080
ROWS: list[tuple[str, str, str]] = []
STAGES = ["decode", "overlap", "preprocess", "model", "store", "merge", "writers", "video", "end-to-end"]


def row(stage: str, fps: float, note: str = "") -> None:
    figure = f"{fps:.1f}" if fps >= 10 else f"{fps:.3g}"  # slow CPU figures keep three significant digits
    ROWS.append((stage, figure, note))
    print(f"{stage:<34} {figure:>9} frames/s  {note}", flush=True)


def timed(fn, n: int) -> float:
    t = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t)


def bench_decode(video: Path) -> list[np.ndarray]:
    info = probe(video)
    frames = []
    row(
        "decode (PyAV, rgb24)",
        timed(lambda: frames.extend(f for _, f in read_frames(info, range(info.frame_count))), info.frame_count),
    )
    row(
        "decode, threaded queue",
        timed(lambda: sum(1 for _ in Prefetch(read_frames(info, range(info.frame_count)))), info.frame_count),
    )
    return frames


def bench_overlap(tmp: Path, compute_ratio: float = 1.25, windows: int = 12) -> None:
    """How busy a device stays when it takes 22 decoded frames per window from the decode thread's queue.

    The device is simulated by a sleep (it holds no GIL, as CUDA work does not) lasting `compute_ratio` times the
    time the decoder needs for a window's frames; with perfect overlap it is busy 100% of the time.
    """
    from vda.device.unit import DECODE_AHEAD

    info = probe(synthetic_video(tmp / "overlap.mp4", windows * stitch.STRIDE, W, H, block=8, shift=9))
    t = time.perf_counter()
    sum(1 for _ in Prefetch(read_frames(info, range(info.frame_count)), DECODE_AHEAD))
    window_s = (time.perf_counter() - t) / info.frame_count * stitch.STRIDE * compute_ratio

    def full_window(frames) -> bool:
        return len([f for _, f in zip(range(stitch.STRIDE), frames)]) == stitch.STRIDE

    for maxsize in (8, DECODE_AHEAD):
        frames = Prefetch(read_frames(info, range(info.frame_count)), maxsize)
        full_window(frames)  # the first window waits for the decoder whatever the queue: time the steady state after
        computed, t = 0, time.perf_counter()
        while True:
            time.sleep(window_s)  # the device computes the window it has
            computed += 1
            if not full_window(frames):
                break
        seconds = time.perf_counter() - t
        busy = computed * window_s / seconds
        note = f"device busy {busy:.0%} (window compute {window_s * 1000:.0f} ms, {compute_ratio}x its decode time)"
        row(f"decode overlap, queue of {maxsize} frames", computed * stitch.STRIDE / seconds, note)


def bench_preprocess(frames: list[np.ndarray], device: torch.device) -> None:
    shape = network_shape(H, W, 518)
    batch = torch.from_numpy(np.stack(frames[:8]))

    def run():
        for _ in range(4):
            preprocess(batch.to(device), shape)

    run()
    row(f"preprocess to {shape[1]}x{shape[0]} ({device.type})", timed(run, 32))


def bench_model(encoders, precisions, device: torch.device, frames: int) -> float:
    """Window-mode frames/s: each window encodes its 22 new frames and runs the head once over 32 frames.

    The encoder (per frame) and the head (per window) are timed apart, so a few encoder frames give the figure.
    """
    vits_fps = 0.0
    shape = network_shape(H, W, 518)
    grid = (shape[0] // 14, shape[1] // 14)
    for enc in encoders:
        model = load_model(synthetic_state(enc), encoder=enc, device=device)
        x = torch.randn(frames, 3, *shape, device=device)
        for prec in precisions:
            if device.type == "cpu" and prec == "fp16":
                continue
            dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(prec)

            def sync():
                if device.type == "cuda":
                    torch.cuda.synchronize()

            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                feats = model.encode(x, 4)  # warm-up, and the features the head pass reuses
                window = [torch.cat([f] * (stitch.WINDOW // frames + 1))[: stitch.WINDOW] for f in feats]
                sync()
                t = time.perf_counter()
                model.encode(x, 4)
                sync()
                enc_s = (time.perf_counter() - t) / frames
                t = time.perf_counter()
                model.decode(window, grid, stitch.WINDOW, micro_batch=4)
                sync()
                head_s = time.perf_counter() - t
            fps = stitch.STRIDE / (stitch.STRIDE * enc_s + head_s)
            note = f"encoder {enc_s * 1000:.0f} ms/frame, head {head_s * 1000:.0f} ms per 32-frame window"
            row(f"model {enc} {prec} ({device.type}), window mode", fps, note)
            vits_fps = fps if enc == "vits" else vits_fps
    return vits_fps


def bench_merge(windows: int = 3) -> float:
    """Chain + blending to 1080p on one core, from raw windows at network resolution."""
    torch.set_num_threads(1)
    shape = network_shape(H, W, 518)
    rng = np.random.RandomState(0)
    raw = [torch.from_numpy(rng.rand(32, *shape).astype(np.float32) + 0.5) for _ in range(windows)]
    n = windows * stitch.STRIDE + 10
    chain, aligner, count = stitch.AlignmentChain(), WindowAligner((H, W)), 0

    def run():
        nonlocal count
        for w, d in enumerate(raw):
            aligner.add(w, d, *chain_step(chain, d[[0, 1, stitch.KEYFRAME]], (H, W)))
            count += sum(1 for _ in aligner.frames(w, n))

    t = time.perf_counter()
    run()
    fps = count / (time.perf_counter() - t)
    torch.set_num_threads(os.cpu_count() or 1)
    row("merge: chain + blend (1 core)", fps, f"{count} frames at {W}x{H}")
    for threads in sorted({1, os.cpu_count() or 1}):  # pass 1 alone: what `follow` does while the workers run
        torch.set_num_threads(threads)
        chain = stitch.AlignmentChain()
        t = time.perf_counter()
        for d in raw:
            scale, shift = chain_step(chain, d[[0, 1, stitch.KEYFRAME]], (H, W))
            aligned = stitch.apply_scale_shift(d[stitch.ALIGN :].numpy(), scale, shift)  # the range, as FirstPass
            aligned.min(), aligned.max()
        per_s = len(raw) / (time.perf_counter() - t)
        keeps_up = per_s * stitch.STRIDE / (1000 / PUBLISHED_VITS_MS)
        note = f"{per_s:.1f} windows/s: keeps up with {keeps_up:.1f} GPUs at the published vits speed"
        row(f"merge pass 1: chain + range ({threads} thread(s))", per_s * stitch.STRIDE, note)
    torch.set_num_threads(os.cpu_count() or 1)
    return fps


def bench_store(windows: int = 4) -> None:
    """The worker's store of one window (network resolution) to the run folder, which overlaps the next window."""
    from vda.device.transfer import piece_to_host
    from vda.device.worker import _store
    from vda.io.pieces import UnitStore

    shape = network_shape(H, W, 518)
    depth = torch.rand(stitch.WINDOW, *shape)
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "fp16"):
            t = time.perf_counter()
            with UnitStore() as store:
                for w in range(windows):
                    _, host, event = piece_to_host(depth, precision)
                    store.submit(lambda w=w, host=host, event=event: _store(Path(tmp) / f"{w}.npy", host, event, 0, w))
            ms = (time.perf_counter() - t) / windows * 1000
            mb = Path(tmp, "0.npy").stat().st_size / 1e6
            row(
                f"worker store, {precision} window",
                1000 / ms * stitch.STRIDE,
                f"{ms:.0f} ms per window of {mb:.0f} MB, in a background thread",
            )


def _encode_many(fmt: str, depth: np.ndarray, n: int) -> int:
    for _ in range(n):
        encode(depth, fmt, 0.0, 10.0)
    return n


def encoder_row(stage: str, encode_once, n: int, note: str = "") -> float:
    """Time n calls of encode_once (which returns the file's bytes) and print frames/s and the file size."""
    size = len(encode_once()) / 1e6

    def run():
        for _ in range(n):
            encode_once()  # not kept: holding n large outputs would time the allocator too

    fps = timed(run, n)
    row(stage, fps, f"{size:.2f} MB{note}")
    return fps


def bench_writers() -> dict[str, float]:
    rng = np.random.RandomState(1)
    yy, xx = np.mgrid[0:H, 0:W]
    depth = (np.sin(xx / 90) + np.cos(yy / 70) + 2.5 + 0.01 * rng.rand(H, W)).astype(np.float32)
    per_core = {
        fmt: encoder_row(f"write {fmt} (1 core)", lambda fmt=fmt: encode(depth, fmt, 0.0, 10.0), 6, " per frame")
        for fmt in FORMATS
    }
    cores = os.cpu_count() or 1
    with cf.ProcessPoolExecutor(cores) as pool:
        list(pool.map(_encode_many, ["png16"] * cores, [depth] * cores, [1] * cores))  # warm the workers
        n = 4 * cores
        fps = timed(lambda: list(pool.map(_encode_many, ["png16"] * cores, [depth] * cores, [4] * cores)), n)
    row(f"write png16 ({cores} processes)", fps)
    q = quantize(depth, 0.0, 10.0, 65535)
    for level in (0, 1, 2, 3):
        encoder_row(f"png16 {DEFLATE} level {level}", lambda level=level: encode_gray(q, level), n)
    for name in ("NO", "ZIP"):  # exr: vda writes uncompressed; ZIP is OpenEXR's usual default
        params = [cv2.IMWRITE_EXR_TYPE, cv2.IMWRITE_EXR_TYPE_FLOAT]
        params += [cv2.IMWRITE_EXR_COMPRESSION, getattr(cv2, f"IMWRITE_EXR_COMPRESSION_{name}")]
        encoder_row(f"exr compression {name}", lambda params=params: cv2.imencode(".exr", depth, params)[1], 3)
    for level in (1, 3):  # the encoder vda used before: libpng through OpenCV, adaptive row filters, zlib
        params = [cv2.IMWRITE_PNG_COMPRESSION, level]
        stage = f"png16 OpenCV/libpng level {level}"
        encoder_row(stage, lambda params=params: cv2.imencode(".png", q, params)[1], 3, " (the encoder before)")
    return per_core


def bench_video(n: int = 20) -> None:
    """The merge's colourised video (its own sink: x264 veryfast), colourising included, against x264's default."""
    from vda.merge.sinks import VideoSink as _VideoSink

    rng = np.random.RandomState(2)
    depth = cv2.resize(rng.rand(H // 16, W // 16).astype(np.float32), (W, H))  # smooth, as depth maps are
    with tempfile.TemporaryDirectory() as tmp:
        sink = _VideoSink(Path(tmp) / "v.mp4", 30, W, H)

        def run():
            for i in range(n):
                sink.write([colorize(np.roll(depth, 5 * i, axis=1), 0, 1)])
            sink.close()

        row("colourised video (inferno, x264 veryfast)", timed(run, n))
        with av.open(f"{tmp}/default.mp4", "w") as c:
            s = c.add_stream("libx264", rate=30)
            s.width, s.height, s.pix_fmt = W, H, "yuv420p"

            def run_default():
                for i in range(n):
                    frame = av.VideoFrame.from_ndarray(colorize(np.roll(depth, 5 * i, axis=1), 0, 1), format="rgb24")
                    for p in s.encode(frame):
                        c.mux(p)
                for p in s.encode():
                    c.mux(p)

            row("colourised video, x264 default preset", timed(run_default, n))


def bench_end_to_end(video: Path, frames: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = depth_cmd(video, f"{tmp}/out", synthetic_checkpoint(tmp), "cpu", "--max-res", "0", "--format", "png16")
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        row("end to end: vda depth vits, png16", frames / (time.perf_counter() - t), "local backend, 1 CPU worker")


def record(args) -> None:
    append_results("bench_stages.py", f"Input {W}x{H}.", ("stage", "frames/s", "note"), ROWS)


def cores_needed(merge_fps: float, png16_fps: float, gpus: list[int]) -> None:
    per_core = 1 / (1 / merge_fps + 1 / png16_fps)
    gpu_fps = 1000 / PUBLISHED_VITS_MS
    print(f"\nmerge + png16 per core: {per_core:.1f} frames/s; a GPU at the published vits speed: {gpu_fps:.0f}/s")
    for n in gpus:
        print(f"  {n} GPU(s): the merge needs {n * gpu_fps / per_core:.0f} cores to keep up")
    needs = "; ".join(f"{n} GPU(s) need {n * gpu_fps / per_core:.0f} cores" for n in gpus)
    ROWS.append(("merge + png16 per core", f"{per_core:.1f}", needs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=66, help="length of the synthetic 1080p clip")
    ap.add_argument("--encoders", nargs="+", default=["vits"])
    ap.add_argument("--precisions", nargs="+", default=None)
    ap.add_argument("--model-frames", type=int, default=8, help="frames through the encoder per timing")
    ap.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4, 5, 8])
    ap.add_argument("--skip-end-to-end", action="store_true")
    ap.add_argument("--only", nargs="+", choices=STAGES, default=STAGES, help="run only these stages")
    ap.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precisions = args.precisions or (["fp16", "bf16"] if device.type == "cuda" else ["fp32"])
    print(f"{os.cpu_count()} cores, device {device}, torch {torch.__version__}")
    only = set(args.only) - ({"end-to-end"} if args.skip_end_to_end else set())
    merge_fps = png16_fps = None
    with tempfile.TemporaryDirectory() as tmp:
        video = synthetic_video(Path(tmp) / "clip.mp4", args.frames, W, H, block=8, shift=9)
        if only & {"decode", "preprocess"}:
            frames = bench_decode(video)
            if "preprocess" in only:
                bench_preprocess(frames, device)
            del frames
        if "overlap" in only:
            bench_overlap(Path(tmp))
        if "model" in only:
            bench_model(args.encoders, precisions, device, args.model_frames)
        if "store" in only:
            bench_store()
        if "merge" in only:
            merge_fps = bench_merge()
        if "writers" in only:
            png16_fps = bench_writers()["png16"]
        if "video" in only:
            bench_video()
        if "end-to-end" in only:
            bench_end_to_end(video, args.frames)
    if merge_fps and png16_fps:
        cores_needed(merge_fps, png16_fps, args.gpus)
    if args.record:
        record(args)


if __name__ == "__main__":
    main()
