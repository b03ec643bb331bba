"""Digest every output of a fixed set of runs, to check that a refactor changed no byte (run at one thread).

Makes its own inputs (a synthetic scene encoded with libx264, synthetic vits checkpoints), runs `vda depth` in window
and stream mode, metric depth, `vda track` and `vda pointcloud`, and prints one sha256 per output file as JSON.
Run it before and after a change, in the same folder (paths are recorded in the outputs), and compare:

    VDA_THREADS=1 PYTHONPATH=/tmp/old python bench/output_digest.py [FOLDER] > before.json   # a checkout of the old
    VDA_THREADS=1 python bench/output_digest.py [FOLDER] > after.json                        # commit, then this one
    cmp before.json after.json

FOLDER (default /tmp/vda-output-digest) is emptied first; `FOLDER --digest-only` digests what a run left there. The
run id, random per plan, is blanked (`.merged`, depth_meta.json); processing_results.json holds timings and is
skipped. It runs on commits from before the package layout of issue 14 too (the CLI was orchestrator.cli then).
Recorded in RESULTS.md: issue 14's refactor (one package, config, errors, split track and merge) against e9fe9d5.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

try:  # the layout before issue 14 first: an editable install would find vda.model.synth for an old tree too
    from vda.synth import save_checkpoint, synthetic_scene
except ImportError:
    from vda.model.synth import save_checkpoint, synthetic_scene

NAMES = ("window", "png", "stream", "metric", "track", "mtrack", "clouds")  # one output folder each
SKIP = {"processing_results.json"}  # holds seconds and device timings, which differ run to run


def write_video(path: Path, frames: np.ndarray, fps: Fraction = Fraction(24)) -> Path:
    with av.open(str(path), "w") as box:
        stream = box.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"g": "10", "bf": "0", "threads": "1"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                box.mux(packet)
        for packet in stream.encode():
            box.mux(packet)
    return path


def vda(*args: str) -> None:
    import vda

    # before the package moved, the CLI was orchestrator.cli (looked up on disk: an editable install finds any name)
    cli = "vda.cli.main" if (Path(vda.__file__).parent / "cli").is_dir() else "orchestrator.cli"
    cmd = [sys.executable, "-c", f"import sys; from {cli} import main; sys.exit(main())", *args]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def _content(path: Path) -> bytes:
    """A file's bytes, with the run id (random per plan) blanked in JSON files and in the `.merged` marker."""
    if path.name == ".merged":
        return b"run id"
    if path.suffix == ".json":
        return re.sub(rb'"run_id": "[0-9a-f]+"', b'"run_id": "-"', path.read_bytes())
    return path.read_bytes()


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(_content(p)).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in SKIP and "_run" not in p.relative_to(root).parts
    }


def main() -> int:
    # One fixed folder: paths are recorded in the outputs (depth_meta.json's settings, TRACK.json), so two runs
    # compare only when they ran in the same place.
    t = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/vda-output-digest")
    if len(sys.argv) > 2 and sys.argv[2] == "--digest-only":
        json.dump({name: digests(t / name) for name in NAMES}, sys.stdout, indent=1, sort_keys=True)
        print()
        return 0
    shutil.rmtree(t, ignore_errors=True)
    t.mkdir(parents=True)
    run_all(t)
    json.dump({name: digests(t / name) for name in NAMES}, sys.stdout, indent=1, sort_keys=True)
    print()
    return 0


def run_all(t: Path) -> None:
    """Every command whose outputs are digested, on inputs made here."""
    video = write_video(t / "scene.mp4", synthetic_scene(70, 72, 128))
    rel = save_checkpoint(t / "ckpt", "vits", 0)
    met = save_checkpoint(t / "ckpt", "vits", 0, metric=True)
    common = ["--devices", "cpu,cpu", "--input-size", "126", "--unit-size", "2"]
    vda("depth", str(video), "-o", str(t / "window"), "--checkpoint", str(rel), *common, "--format", "npy")
    vda("depth", str(video), "-o", str(t / "png"), "--checkpoint", str(rel), *common, "--create-video")
    stream = ["--mode", "stream", "--input-size", "126", "--devices", "cpu,cpu", "--unit-size", "30"]
    vda("depth", str(video), "-o", str(t / "stream"), "--checkpoint", str(rel), *stream, "--format", "npy")
    vda("depth", str(video), "-o", str(t / "metric"), "--checkpoint", str(met), "--metric", *common, "--format", "exr")
    dets = [
        {"frame": f, "track": k, "point": [5.0 + 0.8 * f + 20 * (k - 1), 10.0 + 0.5 * f]}
        for f in range(70)
        for k in (1, 2)
    ]
    dets += [{"frame": f, "track": "box", "box": [60, 10 + f % 7, 90, 50]} for f in range(0, 70, 3)]
    (t / "dets.json").write_text(json.dumps({"detections": dets}))
    vda(
        "track",
        "--detections",
        str(t / "dets.json"),
        "--depth-dir",
        str(t / "window"),
        "-o",
        str(t / "track" / "t.json"),
        "--ref-depth",
        "3.0",
        "--clean",
        "hampel",
    )
    vda(
        "track",
        "--detections",
        str(t / "dets.json"),
        "--depth-dir",
        str(t / "metric"),
        "-o",
        str(t / "mtrack" / "t.json"),
        "--no-plots",
    )
    vda("pointcloud", "--depth-dir", str(t / "metric"), "--video", str(video), "-o", str(t / "clouds"))


if __name__ == "__main__":
    sys.exit(main())
