"""What the Ray backend costs over the local one, on one machine: the per-unit overhead, and the object-store transfer.

    python bench/bench_ray.py [--units 40] [--devices cpu,cpu] [--transfer-units 3] [--transfer-size 1920x1080]
                              [--simulate-ms 2.5] [--sim-windows 24] [--sim-size 640x360] [--only abc] [--record]

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
    run folder (vda.device.worker.write_piece), which every backend pays somewhere (a local worker in its store
    thread, the Ray driver in the stream's reader).
(c) The driver's cost, for both paths of the pieces (issue 23): a whole `vda depth` batch (run_depth: plan, queue,
    merges) on simulated devices (VDA_SIMULATE_MS_PER_FRAME: the host's real path, the model replaced by a wait), one
    actor per worker node. "shared folder": every node sees the run folder (one disk here), so the actors store their
    own pieces and the merges run as Ray tasks on the nodes. "through the driver": the same, with every node taken as
    one that cannot see it (ThroughDriver), so the pieces cross to the driver, which stores and merges them. Per
    window: the bytes the driver fetched from the actors (pieces and messages) and the driver's CPU time (this
    process and its merge processes, getrusage); and the units per second, between the first and the last Done.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # read as Ray is imported: every node on 127.0.0.1

import argparse  # noqa: E402
import io  # noqa: E402
import resource  # noqa: E402
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

from vda import config, events  # noqa: E402
from vda.core import stitch  # noqa: E402
from vda.core.plan import UNIT_WINDOWS, Plan  # noqa: E402
from vda.core.preprocess import network_shape  # noqa: E402
from vda.io.pieces import write_piece  # noqa: E402
from vda.io.rundir import RunDir  # noqa: E402
from vda.orchestrator.backends.base import VideoRun  # noqa: E402
from vda.orchestrator.backends.local import LocalBackend  # noqa: E402
from vda.orchestrator.backends.ray.backend import RayBackend  # noqa: E402
from vda.orchestrator.backends.ray.nodes import Roles  # noqa: E402
from vda.orchestrator.batch import DepthRequest, run_depth  # noqa: E402
from vda.orchestrator.launch import WorkerOptions  # noqa: E402
from vda.orchestrator.planning import create_plan  # noqa: E402
from vda.orchestrator.queue import QueuedVideo, WorkQueue  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20
SIMULATE_ENV = config.SIMULATE_ENV  # the simulated device (issue 21)
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


class ThroughDriver(RayBackend):
    """The Ray backend with every node taken as one that cannot see the run folder: its pieces cross to the driver,
    which stores them and merges (the path of a cluster without a shared folder)."""

    def assign_roles(self, shared, run, out) -> Roles:
        return Roles(frozenset(), (), tuple(sorted(shared)))


def driver_cpu() -> float:
    """CPU seconds of this process (the driver) and of its children that have ended (its merge processes)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def batch(backend, out: Path, videos: list[Path], ckpt: Path, args) -> tuple[float, float, float]:
    """One `vda depth` batch through run_depth, as the CLI runs it: (driver CPU seconds, wall seconds, its end)."""
    request = DepthRequest(
        [str(v) for v in videos], out, backend.devices, checkpoint=str(ckpt), input_size=args.sim_input_size,
        max_res=0, unit_size=args.sim_unit_size, fmt="npy", space_check=False,
    )  # fmt: skip
    DONE.clear()
    cpu, wall = driver_cpu(), time.perf_counter()
    code = run_depth(request, backend, stream=io.StringIO())
    cpu, wall = driver_cpu() - cpu, time.perf_counter() - wall
    assert code == 0, f"a batch failed (exit {code}); see {out / '_run' / 'logs'}"
    return cpu, wall, time.perf_counter()


def one_path(name: str, backend_class: type, cluster: Cluster, tmp: Path, ckpt: Path, videos: list[Path], args):
    devices = ["cpu"] * args.nodes
    backend = stamped(backend_class)(devices, WorkerOptions(checkpoint=str(ckpt)), address=cluster.address)
    out = tmp / name.replace(" ", "_") / "out"
    cpu, wall, end = batch(backend, out, videos, ckpt, args)
    plans = [Plan.load(out / "_run" / v.stem) for v in videos]
    windows, units = sum(len(p.all_pieces()) for p in plans), sum(len(p.units) for p in plans)
    got = backend.received()
    stamps = sorted(t for stamps in DONE.values() for t in stamps)
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    merged = ", ".join(f"{n[:8]} {m}" for n, (_, m) in sorted(backend.per_node().items()) if m)
    row(f"{name}: driver bytes per window", f"{(got['pieces'] + got['messages']) / windows:.0f} B",
        f"{got['pieces'] / windows / MB:.2f} MB of pieces + {got['messages'] / windows:.0f} B of messages")  # fmt: skip
    row(f"{name}: driver CPU per window", f"{cpu / windows * 1000:.1f} ms", f"{cpu:.1f} s over {windows} windows")
    row(f"{name}: units per second", f"{rate:.2f}", f"{units} units of {args.sim_unit_size} windows; merges: {merged}")
    row(f"{name}: whole batch", f"{wall:.1f} s", "plan, actors, units, merges")
    row(f"{name}: from the last unit to the end", f"{end - stamps[-1]:.1f} s", "the merges left, and closing")


def paths(cluster: Cluster, tmp: Path, ckpt: Path, args) -> None:
    width, height = map(int, args.sim_size.split("x"))
    frames = stitch.WINDOW + (args.sim_windows - 1) * stitch.STRIDE
    print(
        f"(c) the driver's cost: {args.sim_videos} videos of {frames} frames {args.sim_size} at input "
        f"{args.sim_input_size}, {args.nodes} simulated devices at {args.simulate_ms} ms/frame"
    )
    videos = [synthetic_video(tmp / f"sim{k}.mp4", frames, width, height, shift=3 + k) for k in range(args.sim_videos)]
    warm = synthetic_video(tmp / "warm.mp4", stitch.WINDOW, width, height)  # node caches and worker processes ready
    batch(RayBackend(["cpu"] * args.nodes, WorkerOptions(checkpoint=str(ckpt)), address=cluster.address), tmp / "warm",
          [warm], ckpt, args)  # fmt: skip
    known = {"shared": ("shared folder", RayBackend), "driver": ("through the driver", ThroughDriver)}
    for path in args.paths.split(","):
        one_path(*known[path], cluster, tmp, ckpt, videos, args)


def start_cluster(nodes: int, store_mb: int, cpus: int = 1) -> Cluster:
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": store_mb * MB})
    for _ in range(nodes):
        cluster.add_node(num_cpus=cpus, object_store_memory=store_mb * MB)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    return cluster


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="abc", help="the sections to run, of a, b and c")
    ap.add_argument("--units", type=int, default=40, help="stored units per round-trip run (a)")
    ap.add_argument("--devices", default="cpu,cpu", help="workers of (a): local processes, or actors on one node each")
    ap.add_argument("--transfer-units", type=int, default=3, help="units fetched in (b)")
    ap.add_argument("--transfer-size", default="1920x1080", help="frame size whose pieces (b) moves, at input 518")
    ap.add_argument("--nodes", type=int, default=3, help="worker nodes, and simulated devices in (c)")
    ap.add_argument("--simulate-ms", type=float, default=2.5, help="(c): ms per frame of a simulated device")
    ap.add_argument("--paths", default="shared,driver", help="(c): the paths of the pieces to run, in this order")
    ap.add_argument("--sim-videos", type=int, default=3, help="(c): videos in the batch")
    ap.add_argument("--sim-windows", type=int, default=12, help="(c): windows of each video")
    ap.add_argument("--sim-size", default="640x360", help="(c): the clip's frame size")
    ap.add_argument("--sim-input-size", type=int, default=518, help="(c): network input size")
    ap.add_argument("--sim-unit-size", type=int, default=2, help="(c): windows per unit")
    ap.add_argument("--store-mb", type=int, default=1024, help="object store per node, MB (a unit must fit)")
    ap.add_argument("--record", action="store_true", help="append the figures to bench/RESULTS.md")
    args = ap.parse_args()
    print(f"{os.cpu_count()} cores, torch {torch.__version__}, ray {ray.__version__}; load {os.getloadavg()[0]:.1f}")
    nodes = max(len(args.devices.split(",")), args.nodes)
    cluster = start_cluster(nodes, args.store_mb, cpus=2)  # a CPU for an actor, one for a merge beside it
    try:
        with tempfile.TemporaryDirectory(prefix="vda-bench-ray-") as tmp:
            tmp = Path(tmp)
            ckpt = synthetic_checkpoint(tmp / "ckpt")
            if "a" in args.only:
                overhead(cluster, tmp, ckpt, args)
            if "b" in args.only:
                transfer(tmp, args)
            if "c" in args.only:
                os.environ[SIMULATE_ENV] = str(args.simulate_ms)  # the driver's plan; the actors get it from config
                paths(cluster, tmp, ckpt, args)
    finally:
        ray.shutdown()
        cluster.shutdown()
    if args.record:
        setup = (
            f"Ray {ray.__version__}, one machine: a head and {nodes} worker nodes of 2 CPUs on 127.0.0.1; "
            f"(a) {args.units} stored units on {args.devices}; "
            f"(b) {args.transfer_units} units at {args.transfer_size}; "
            f"(c) {args.nodes} simulated devices at {args.simulate_ms} ms/frame, {args.sim_videos} videos of "
            f"{args.sim_windows} windows of "
            f"{args.sim_size} at input {args.sim_input_size}, {args.sim_unit_size} windows per unit."
        )
        append_results("bench_ray.py", setup, ("figure", "value", "note"), ROWS)


if __name__ == "__main__":
    t0 = time.time()
    sys.exit(main())
