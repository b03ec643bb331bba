"""The Python API as users call it (vda.load_model, vda.infer_video, vda.run, vda.read) and the outputs of issue 24:
npy-stack, --output-size, metric png16 at a fixed scale, the side-by-side preview, and the CLI's habits.

One small real video (x264) is computed once by the CLI and once by vda.run; every other output is a merge of those
stored windows (cheap), compared with the files, the per-frame formats and the stitching primitives.
"""

from __future__ import annotations

import re
import subprocess
import sys

import av
import cv2
import numpy as np
import pytest
import torch
from conftest import ROOT, TOL, one_thread_env, rel_err, run_vda, synthetic_frames, write_video

import vda
from vda import config
from vda.core import stitch
from vda.core.align import upsample
from vda.core.plan import Plan
from vda.io.decode import read_frames
from vda.io.probe import probe
from vda.io.writers import LEVELS, STACK_NAME, DepthMeta, dequantize, fixed_range, quantize
from vda.merge import merge
from vda.merge.first_pass import FirstPass
from vda.merge.render import job_for, load_piece

N, W, H, SIZE = 50, 64, 48, 70  # 3 windows; network input 70 (a multiple of 14)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("api_video") / "clip.mp4", synthetic_frames(N, W, H))


@pytest.fixture(scope="module")
def cli_out(tmp_path_factory, video, checkpoint):
    """`vda depth` through the CLI, per-frame npy: the reference every API output is held to."""
    out = tmp_path_factory.mktemp("api_cli") / "out"
    run_vda("depth", video, "-o", out, "--devices", "cpu", "--checkpoint", checkpoint, "--input-size", SIZE,
            "--unit-size", 1, "--format", "npy")  # fmt: skip
    return out


def test_import_is_light_and_versioned():
    code = "import sys, vda; print(vda.__version__, *(m in sys.modules for m in ('torch', 'cv2', 'numpy', 'ray')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert done.stdout.split() == [version, "False", "False", "False", "False"]
    assert issubclass(vda.VdaError, Exception) and vda.DepthMeta is DepthMeta
    assert {"load_model", "infer_video", "run", "read", "VdaError", "DepthMeta"} <= set(dir(vda))


@pytest.mark.slow
def test_api_depth_equals_the_cli(cli_out, video, checkpoint):
    """vda.load_model infers vits from the file; vda.infer_video ("auto" is fp32 on a CPU) equals `vda depth`, and
    yields tensors or network-size maps when asked."""
    model = vda.load_model(checkpoint, device="cpu")
    assert model.config.encoder == "vits" and not model.config.metric
    info = probe(video)

    def frames():
        return (f for _, f in read_frames(info, range(N)))

    ours = np.stack(list(vda.infer_video(model, frames(), input_size=SIZE)))
    cli = np.stack(list(vda.read(cli_out)))
    assert ours.dtype == np.float32 and ours.shape == (N, H, W)
    assert rel_err(ours, cli) <= TOL
    tensors = list(vda.infer_video(model, frames(), input_size=SIZE, tensors=True))
    assert all(t.device.type == "cpu" and tuple(t.shape) == (H, W) for t in tensors)
    assert rel_err(np.stack([t.numpy() for t in tensors]), ours) <= 1e-6
    plan = Plan.load(cli_out / "_run")
    net = np.stack(list(vda.infer_video(model, frames(), input_size=SIZE, output_size="net")))
    assert net.shape == (N, plan.settings.net_height, plan.settings.net_width)
    merged_net = np.stack(list(vda.read(_merged(cli_out, "npy", output_size="net"))))
    assert rel_err(net, merged_net) <= TOL


def _merged(cli_out, fmt, **kw):
    """The CLI's stored windows merged again into a sibling folder (cheap: no model)."""
    name = "_".join([fmt, *(f"{k}-{v}" for k, v in kw.items())])
    out = cli_out.parent / name
    if not (out / ".merged").is_file():
        merge(cli_out / "_run", out, fmt, workers=1, log=lambda _: None, **kw)
    return out


def test_run_is_silent_and_reports_each_video(tmp_path, cli_out, video, checkpoint, capfd, monkeypatch):
    """vda.run prints nothing, equals the CLI bit for bit (here as an npy-stack), and reports a bad input beside the
    good one; with nothing that can run it raises VdaError. At one thread, as the CLI's run (bits depend on it)."""
    monkeypatch.setenv("VDA_THREADS", "1")
    monkeypatch.setattr(config, "_loaded", None)  # a library user's process: settings read from the environment
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    out = tmp_path / "out"
    result = vda.run([video, bad], out, devices="cpu", checkpoint=checkpoint, input_size=SIZE, unit_size=1,
                     format="npy-stack")  # fmt: skip
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    assert [(v.name, v.status, v.frames) for v in result] == [("clip", "merged", N), ("broken", "refused", 0)]
    assert result["clip"].out == out / "clip" and result[1].error and not result.ok and result.exit_code == 2
    stack = np.load(out / "clip" / STACK_NAME, mmap_mode="r")
    assert np.array_equal(stack, np.stack(list(vda.read(cli_out))))
    with pytest.raises(vda.VdaError, match="none of the 2 inputs can run"):
        vda.run([bad, tmp_path / "missing.mp4"], tmp_path / "none", devices="cpu", checkpoint=checkpoint)
    with pytest.raises(vda.VdaError, match="unknown setting 'colour'"):
        vda.run(video, tmp_path / "x", devices="cpu", colour=True)
    assert capfd.readouterr().out == ""


@pytest.mark.parametrize("fmt", ["png16", "png8", "npy", "npz", "exr", "npy-stack"])
def test_read_equals_the_files(cli_out, fmt):
    """vda.read in every format: len, indexing (negative too), iteration and .meta, against the files read by hand."""
    out = _merged(cli_out, fmt)
    frames = vda.read(out)
    meta = frames.meta
    assert len(frames) == N and meta.format == fmt and (meta.width, meta.height) == (W, H)
    for i in (0, 23, N - 1):
        if fmt in LEVELS:
            q = meta.quantization
            stored = cv2.imread(str(out / f"depth_{i:06d}.png"), cv2.IMREAD_UNCHANGED)
            by_hand = (q["lo"] + stored.astype(np.float64) * (q["hi"] - q["lo"]) / q["levels"]).astype(np.float32)
        elif fmt == "npz":
            by_hand = np.load(out / f"depth_{i:06d}.npz")["depth"]
        elif fmt == "exr":
            by_hand = cv2.imread(str(out / f"depth_{i:06d}.exr"), cv2.IMREAD_UNCHANGED)
        elif fmt == "npy":
            by_hand = np.load(out / f"depth_{i:06d}.npy")
        else:
            by_hand = np.load(out / STACK_NAME, mmap_mode="r")[i]
        assert frames[i].dtype == np.float32 and np.array_equal(frames[i], by_hand), (fmt, i)
    assert np.array_equal(frames[-1], frames[N - 1])
    with pytest.raises(IndexError):
        frames[N]
    assert np.array_equal(np.stack(list(frames)), np.stack([frames[i] for i in range(N)]))


def test_npy_stack_equals_per_frame_npy(cli_out):
    out = _merged(cli_out, "npy-stack")
    stack = np.load(out / STACK_NAME, mmap_mode="r")
    assert stack.dtype == np.float32 and stack.shape == (N, H, W)
    assert np.array_equal(stack, np.stack([np.load(cli_out / f"depth_{i:06d}.npy") for i in range(N)]))
    assert sorted(p.name for p in out.iterdir()) == [".merged", STACK_NAME, "depth_meta.json"]  # no temporary


def test_net_output_is_the_maps_before_upsampling(cli_out):
    """--output-size net: the network's shape, equal to the stored windows aligned and blended with no upsampling;
    upsampled, it gives the source-size output (bilinear weights sum to one, so alignment commutes with them)."""
    run = cli_out / "_run"
    plan = Plan.load(run)
    out = _merged(cli_out, "npy", output_size="net")
    net = np.stack(list(vda.read(out)))
    h, w = plan.settings.net_height, plan.settings.net_width
    assert net.shape == (N, h, w) and (vda.read(out).meta.width, vda.read(out).meta.height) == (w, h)
    assert vda.read(out).meta.settings["output_size"] == "net"
    job = job_for(plan, run, out, "npy", False)
    params, _, _ = FirstPass(job, plan).result()

    def aligned(wi: int, i: int) -> np.ndarray:
        return stitch.apply_scale_shift(load_piece(job, wi).numpy()[i], *map(np.float32, params[wi]))

    for f in range(N):
        src = stitch.frame_source(f, N)
        expect = aligned(src.w, src.i)
        if src.weight < 1.0:
            expect = stitch.blend(aligned(src.w - 1, src.i + stitch.STRIDE), expect, src.weight)
        assert np.array_equal(net[f], expect), f
    sized = np.stack(list(vda.read(_merged(cli_out, "npy", output_size="40x30"))))
    assert sized.shape == (N, 30, 40)
    source = np.stack(list(vda.read(cli_out)))
    assert rel_err(upsample(torch.from_numpy(net), (H, W)).numpy(), source) <= 1e-5


@pytest.mark.slow
def test_metric_png16_at_a_fixed_scale_round_trips_to_a_millimetre(tmp_path, video, tmp_path_factory):
    """--png-scale 0.001: stored value = depth in mm, the same for every video; read back within 0.5 mm."""
    from vda.model.synth import save_checkpoint

    metric = save_checkpoint(tmp_path_factory.mktemp("metric_ckpt"), "vits", 0, metric=True)
    result = vda.run(video, tmp_path / "m", devices="cpu", checkpoint=metric, metric=True, input_size=SIZE,
                     format="npy")  # fmt: skip
    assert result.ok
    exact = np.stack(list(vda.read(tmp_path / "m")))
    meta = merge(tmp_path / "m" / "_run", tmp_path / "png", "png16", png_scale=0.001, workers=1, log=lambda _: None)
    assert meta.quantization["scale"] == 0.001 and meta.quantization["lo"] == 0.0
    stored = np.stack([cv2.imread(str(tmp_path / "png" / f"depth_{i:06d}.png"), -1) for i in range(N)])
    assert np.array_equal(stored, np.clip(np.rint(exact * 1000), 0, 65535).astype(np.uint16))  # millimetres
    back = np.stack(list(vda.read(tmp_path / "png")))
    assert np.abs(back - np.minimum(exact, 65.535)).max() <= 0.0005 + 1e-6
    lo, hi = fixed_range(0.001, 65535)  # the writer alone: 1 mm steps over [0, 65.535] m
    depth = np.array([[0.0, 0.0014, 1.2345, 65.5]], np.float32)
    assert np.abs(dequantize(quantize(depth, lo, hi, 65535), lo, hi, 65535) - depth).max() <= 0.0005 + 1e-6
    with pytest.raises(vda.VdaError, match="needs metric depth"):
        vda.run(video, tmp_path / "r", devices="cpu", format="png16", png_scale=0.001)


def test_side_by_side_preview(cli_out, video):
    """RGB on the left, colourised depth on the right, one frame per input frame."""
    out = _merged(cli_out, "png8", create_video="side-by-side")
    with av.open(str(out / "depth_vis.mp4")) as box:
        frames = [f.to_ndarray(format="rgb24") for f in box.decode(video=0)]
    assert len(frames) == N and frames[0].shape == (H, 2 * W, 3)
    rgb = [f for _, f in read_frames(probe(video), range(N))]
    assert np.abs(frames[10][:, :W].astype(int) - rgb[10]).mean() < 12  # the video itself, through x264 twice
    assert np.abs(frames[10][:, W:].astype(int) - rgb[10]).mean() > 20  # and depth beside it


def test_cli_habits(tmp_path, video, checkpoint):
    """-v/--debug after the subcommand, `vda plan` without device flags, counts refused by argparse."""
    from vda.cli.main import parser
    from vda.io.rundir import RunDir
    from vda.orchestrator.backends.base import MergeRequest

    args = parser().parse_args(["depth", "a.mp4", "-o", "o", "--devices", "cpu", "-v", "--debug"])
    assert args.verbose and args.debug and parser().parse_args(["-v", "merge", "r", "-o", "o"]).verbose
    done = run_vda("plan", video, "-o", tmp_path / "run", "--checkpoint", checkpoint, "-v")
    assert "wrote" in done.stdout and "INFO" in done.stderr
    for flags in (["--retries", "-1"], ["--merge-workers", "0"], ["--output-size", "0x5"], ["--png-scale", "-1"]):
        done = run_vda("depth", video, "-o", tmp_path / "o", "--devices", "cpu", *flags, check=False)
        assert done.returncode == 2 and f"argument {flags[0]}" in done.stderr, flags
    request = MergeRequest(RunDir(tmp_path), tmp_path, "png16", "side-by-side", output_size="net", png_scale=0.001)
    assert request.flags("/in/a.mp4") == ["--format", "png16", "--create-video", "side-by-side", "--output-size",
                                          "net", "--png-scale", "0.001", "--input", "/in/a.mp4"]  # fmt: skip
    assert MergeRequest(RunDir(tmp_path), tmp_path, "npy", True).flags() == ["--format", "npy", "--create-video"]


def test_readme_example_runs(tmp_path, video, vits_state):
    """The README's example, as written, with the published vits file name in $VDA_MODELS_DIR (synthetic weights)."""
    text = (ROOT / "README.md").read_text()
    code = text.split("<!-- api-example -->\n```python\n", 1)[1].split("```", 1)[0]
    models = tmp_path / "models"
    models.mkdir()
    torch.save(vits_state, models / "video_depth_anything_vits.pth")
    (tmp_path / "clip.mp4").symlink_to(video)
    env = {"PYTHONPATH": str(ROOT), "VDA_MODELS_DIR": str(models)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env=one_thread_env(**env), timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "6 (48, 64) float32"
    assert lines[1] == f"clip merged {N} out" and lines[2].startswith(f"{N} ({H}, {W}) relative inverse depth")
    assert "licence Apache-2.0" in done.stderr  # load_model said which published checkpoint it used
