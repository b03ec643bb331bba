"""The single pass: one video through one network, frames in, final depth out (`vda.infer_video`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from vda.core import stitch
from vda.core.align import CHAIN_OUTPUTS, WindowAligner, chain_step, upsample
from vda.core.plan import AUTO, MODES
from vda.core.preprocess import network_shape
from vda.device.feed import FrameFeed
from vda.device.networks import as_network
from vda.device.runtime import Runtime
from vda.device.stream import stream_depths
from vda.device.window import WindowRunner
from vda.errors import UsageError


def infer_video(
    model,
    frames: Iterable[np.ndarray],
    *,
    input_size: int = 518,
    mode: str = "window",
    precision: str = AUTO,
    device="cpu",
    micro_batch: int | None = None,
    compile: bool = False,
    out_size: tuple[int, int] | str | None = None,
    tensors: bool = False,
) -> Iterator[np.ndarray]:
    """`model`: a torch module (the torch runtime) or any `Network`. Yield one float32 depth map per input frame, in
    order: at the frame's resolution, or at `out_size` ((H, W), or
    "net": the network's, no upsampling); as tensors on the device with `tensors`. The alignment is fitted at the
    frame's resolution whatever `out_size` is, as the merge does, so every size holds the same depth. `precision` "auto"
    is the CLI's rule: fp16 on a GPU, fp32 on a CPU.

    Raw depth is rounded exactly as the workers store it (fp16 in fp16, a recomputed window in fp32), and the same
    fp32 fallback applies, so `vda depth` on any number of devices equals this single pass in every precision."""
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    runtime = Runtime.create(device, precision, micro_batch, compile)
    feed = FrameFeed(enumerate(frames))
    size = feed.first().shape[:2]
    shape = network_shape(*size, input_size)
    out = shape if out_size == "net" else tuple(out_size or size)
    net = as_network(model, runtime, shape)
    net.check_device(runtime.device, device)
    if mode == "stream":
        for _, depth in stream_depths(net, runtime, feed.indexed(), shape):
            up = upsample(depth[None], out)[0]
            yield up if tensors else up.cpu().numpy()
        return
    runner = WindowRunner(net, runtime, shape)
    chain, aligner = stitch.AlignmentChain(metric=net.metric), WindowAligner(out, host=not tensors)
    w = 0
    while w == 0 or w * stitch.STRIDE < feed.frame_count_hint(w * stitch.STRIDE):
        n = feed.frame_count_hint(w * stitch.STRIDE + stitch.WINDOW - 1)
        depth = runner.run(w, feed, n)
        aligner.add(w, depth, *chain_step(chain, depth[CHAIN_OUTPUTS], size))
        yield from (d for _, d in aligner.frames(w, n))
        w += 1
