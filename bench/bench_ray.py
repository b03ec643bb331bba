"""What the Ray backend costs over the local one, on one machine: the per-unit overhead, and the object-store transfer.

    python bench/bench_ray.py [--units 40] [--devices cpu,cpu] [--transfer-units 3] [--transfer-size 1920x1080]
                              [--record]

Everything runs for real: a `ray.cluster_utils.Cluster` on this machine (a head that runs no worker, where this
process attaches as the driver, and one worker node per device, each with its own raylet and object store, bound to
127.0.0.1), the synthetic vits weights and a synthetic x264 clip. It prints figures and ratios, no verdict.

(a) Per-unit overhead: the host round trip of one unit, Ready -> Assign -> Done, through the real queue (WorkQueue),
    over units whose pieces are already stored, so that no compute hides it (as bench_queue.py's "claim"): the median
    gap between two Done messages of one worker, for the local backend (worker processes and their pipes) and for the
    Ray backend (actors on other nodes, actor calls and their streams), and the ratio ray / local.
(b) Object-store transfer per unit: an actor on a worker node yields a default unit's pieces (UNIT_WINDOWS windows of
    WINDOW frames at network resolution in fp16, for --transfer-size frames at input size 518, as a GPU run stores
    them) and the driver fetches each (ray.get): MB per unit, ms per unit (the actor's put, the transfer between the
    two nodes' object stores over loopback, the driver's get) and MB/s; then the driver's store of those pieces into a
    run folder (vda.pipeline.worker.write_piece), which every backend pays somewhere (a local worker in its store
    thread, the Ray driver in the stream's reader).
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # read as Ray is imported: every node on 127.0.0.1

import argparse  # noqa: E402
import io  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402
from bench_infer import append_results, synthetic_checkpoint, synthetic_video  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from vda import events  # noqa: E402
from vda.core import stitch  # noqa: E402
from vda.core.plan import UNIT_WINDOWS  # noqa: E402
from vda.core.preprocess import network_shape  # noqa: E402
from vda.io.rundir import RunDir  # noqa: E402
from vda.orchestrator.backends.base import VideoRun  # noqa: E402
from vda.orchestrator.backends.local import LocalBackend  # noqa: E402
from vda.orchestrator.backends.ray import RayBackend  # noqa: E402
from vda.orchestrator.launch import WorkerOptions  # noqa: E402
from vda.orchestrator.planning import create_plan  # noqa: E402
from vda.orchestrator.queue import QueuedVideo, WorkQueue  # noqa: E402
from vda.pipeline.worker import write_piece  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20
ROWS: list[tuple[str, str, str]] = []


def row(figure: str, value: str, note: str = "") -> None:
    ROWS.append((figure, value, note))
    print(f"  {figure:<52} {value:>12}  {note}", flush=True)


def stamped(backend_class: type) -> type:
    """`backend_class`, noting when each Done message reaches the host, per worker slot."""

    class Stamped(backend_class):
        def start_worker(self, slot, device, log_path, on_line):
            def stamp(line: str) -> None:
                if line.startswith(events.PREFIX) and isinstance(events.decode(line), events.Done):
                    with LOCK:
                        DONE.setdefault((self.name, slot), []).append(time.perf_counter())
                on_line(line)

            return super().start_worker(slot, device, log_path, stamp)

    return Stamped


LOCK = threading.Lock()
DONE: dict[tuple[str, int], list[float]] = {}


def round_trip(backend, name: str, tmp: Path, ckpt: Path, video: Path, devices: list[str]) -> tuple[float, int]:
    """Median seconds from one Done to the next of a worker, over units of one window already stored."""
    run = RunDir(tmp / name / "_run")
    plan, _ = create_plan(video, run.path, checkpoint=str(ckpt), input_size=56, max_res=0, unit_size=1)
    queued = [QueuedVideo(VideoRun(name, run, video), plan)]
    work = WorkQueue(queued, backend, devices, run, stream=io.StringIO())  # every unit pending: nothing stored yet
    for piece in plan.all_pieces():  # now store them: each Assign finds its unit done and answers at once
        write_piece(run.piece(plan.settings.mode, piece), np.zeros((1, 1, 1), np.float32), piece, 0.0)
    backend.open(run, [queued[0].run])
    try:
        work.run()
    finally:
        backend.close()
    gaps = [b - a for (kind, _), stamps in DONE.items() if kind == backend.name for a, b in zip(stamps, stamps[1:])]
    return statistics.median(gaps), len(plan.units)


def overhead(cluster: Cluster, tmp: Path, ckpt: Path, args) -> None:
    print("(a) per-unit overhead: Done -> Ready -> Assign -> Done over stored units")
    video = synthetic_video(tmp / "claims.mp4", args.units * stitch.STRIDE + stitch.WINDOW, 32, 24)
    devices = args.devices.split(",")
    options = WorkerOptions(checkpoint=str(ckpt))
    local_s, units = round_trip(stamped(LocalBackend)(devices, options), "local", tmp, ckpt, video, devices)
    row("local backend: unit round trip", f"{local_s * 1000:.2f} ms", f"median over {units} units, {args.devices}")
    backend = stamped(RayBackend)(devices, options, address=cluster.address)
    ray_s, units = round_trip(backend, "ray", tmp, ckpt, video, devices)
    row("ray backend: unit round trip", f"{ray_s * 1000:.2f} ms", f"median over {units} units, actors on 2 nodes")
    row("ray / local", f"{ray_s / local_s:.1f}x", "per-unit overhead ratio")


@ray.remote(num_cpus=1)
class PieceSource:
    """Stands for a worker actor: yields a unit's pieces, as DeviceActor.serve does."""

    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def unit(self, shape: tuple[int, ...], pieces: int):
        piece = np.random.default_rng(0).random(shape, dtype=np.float32).astype(np.float16)
        for k in range(pieces):
            yield ("piece", f"win_{k:06d}.npy", piece, k, 0.0)


def transfer(tmp: Path, args) -> None:
    width, height = map(int, args.transfer_size.split("x"))
    shape = (stitch.WINDOW, *network_shape(height, width, 518))
    print(f"(b) object-store transfer per unit: {UNIT_WINDOWS} windows of {shape} fp16, node to driver")
    source = PieceSource.remote()
    where = ray.get(source.node.remote())
    me = ray.get_runtime_context().get_node_id()
    assert where != me, "the source actor must run on another node than the driver's"
    seconds, stores, size = [], [], 0
    for u in range(args.transfer_units + 1):  # the first unit warms the path up and is not counted
        t0 = time.perf_counter()
        items = [ray.get(ref) for ref in source.unit.options(num_returns="streaming").remote(shape, UNIT_WINDOWS)]
        t1 = time.perf_counter()
        for _, name, array, piece, secs in items:
            write_piece(tmp / "store" / name, array, piece, secs)
        t2 = time.perf_counter()
        if u:
            seconds.append(t1 - t0)
            stores.append(t2 - t1)
            size = sum(item[2].nbytes for item in items)
    mb, ms = size / MB, statistics.median(seconds) * 1000
    row("transfer of one unit, node -> driver", f"{ms:.0f} ms", f"{mb:.0f} MB per unit, {mb / ms * 1000:.0f} MB/s")
    row("  per window", f"{ms / UNIT_WINDOWS:.1f} ms", f"{mb / UNIT_WINDOWS:.1f} MB")
    store_ms = statistics.median(stores) * 1000
    row("driver's store of that unit (write_piece)", f"{store_ms:.0f} ms", f"{mb / store_ms * 1000:.0f} MB/s to disk")
    ray.kill(source)


def start_cluster(devices: int, store_mb: int) -> Cluster:
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": store_mb * MB})
    for _ in range(devices):
        cluster.add_node(num_cpus=1, object_store_memory=store_mb * MB)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    return cluster


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, default=40, help="stored units per round-trip run (a)")
    ap.add_argument("--devices", default="cpu,cpu", help="workers of (a): local processes, or actors on one node each")
    ap.add_argument("--transfer-units", type=int, default=3, help="units fetched in (b)")
    ap.add_argument("--transfer-size", default="1920x1080", help="frame size whose pieces (b) moves, at input 518")
    ap.add_argument("--store-mb", type=int, default=1024, help="object store per node, MB (a unit must fit)")
    ap.add_argument("--record", action="store_true", help="append the figures to bench/RESULTS.md")
    args = ap.parse_args()
    print(f"{os.cpu_count()} cores, torch {torch.__version__}, ray {ray.__version__}; load {os.getloadavg()[0]:.1f}")
    cluster = start_cluster(len(args.devices.split(",")), args.store_mb)
    try:
        with tempfile.TemporaryDirectory(prefix="vda-bench-ray-") as tmp:
            tmp = Path(tmp)
            ckpt = synthetic_checkpoint(tmp / "ckpt")
            overhead(cluster, tmp, ckpt, args)
            transfer(tmp, args)
    finally:
        ray.shutdown()
        cluster.shutdown()
    if args.record:
        setup = (
            f"Ray {ray.__version__}, one machine: a head and {len(args.devices.split(','))} worker nodes on 127.0.0.1; "
            f"(a) {args.units} stored units on {args.devices}; (b) {args.transfer_units} units at {args.transfer_size}."
        )
        append_results("bench_ray.py", setup, ("figure", "value", "note"), ROWS)


if __name__ == "__main__":
    t0 = time.time()
    sys.exit(main())
