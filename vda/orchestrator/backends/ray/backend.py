"""RayBackend: the backend contract (vda.orchestrator.backends.base) over a Ray cluster; see the package docstring."""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vda import config
from vda.core.plan import Plan
from vda.errors import BackendError
from vda.io.rundir import RunDir
from vda.orchestrator.backends.base import Backend, MergeRequest, VideoRun
from vda.orchestrator.backends.ray.actor import actor_class
from vda.orchestrator.backends.ray.cluster import DRIVER, connect, disconnect, ray_module, short
from vda.orchestrator.backends.ray.handle import RayHandle
from vda.orchestrator.backends.ray.merges import MergeTasks
from vda.orchestrator.backends.ray.nodes import Roles, check_nodes, roles
from vda.orchestrator.backends.ray.weights import Weights, ship_weights
from vda.orchestrator.launch import inner_device


class RayBackend(Backend):
    """Workers as Ray actors on the nodes of a cluster; pieces stored and merges run on the nodes that share the
    folders with the driver, and by the driver for the others."""

    name = "ray"
    gpu_pool = "the Ray cluster"
    all_gpus_by_default = True  # every GPU of the cluster, wherever it is
    plans_first = True  # open() checks every input on every node, from its plan

    def __init__(self, devices: list[str], options, image: str | None = None, address: str | None = None):
        super().__init__(devices, options, image, address)
        self.plans: dict[str, Plan] = {}
        self.handles: list[RayHandle] = []
        self.weights: Weights | None = None
        self.roles = Roles(frozenset(), (), ())
        self.merges: MergeTasks | None = None
        self._closed = False

    @staticmethod
    def visible_gpus(address: str | None = None) -> int:
        """The GPUs of the whole cluster (ray.cluster_resources): --gpus N takes N of them, on whichever nodes."""
        connect(address)
        return int(ray_module().cluster_resources().get("GPU", 0))

    def open(self, root: RunDir, videos: list[VideoRun]) -> None:
        """Connect; check that the cluster can hold the devices, that every node that may run a worker reads every
        input, and which of them share the run and output folders; ship the weights: all before any work, so that
        a run that cannot work says so at once."""
        super().open(root, videos)
        connect(self.address)
        self.plans = {self.worker_path(v.folder.path): Plan.load(v.folder.path) for v in videos}
        nodes = self._worker_nodes()
        self._check_room(nodes)
        run, out = root.path.resolve(), _output_root(videos)
        shared = check_nodes(nodes, list(self.plans.values()), [run] + ([out] if out else []))
        self.roles = self.assign_roles(shared, run, out)
        print(self.roles.line(run, out), file=sys.stderr, flush=True)
        self.merges = MergeTasks(self.roles.merge)
        self.merges_here = not self.roles.merge  # else pass 1 runs in the merge tasks, not beside the workers here
        self.merge_slots = max(1, len(self.roles.merge))
        self.weights = ship_weights(next(iter(self.plans.values())), self.options.checkpoint)

    def assign_roles(self, shared: dict[str, set[str]], run: Path, out: Path | None) -> Roles:
        """What each node does, from the folders it shares with the driver (bench_ray.py overrides it to measure
        the path through the driver on one machine, where every node shares every folder)."""
        return roles(shared, run, out)

    def resources(self, device: str) -> tuple[float, float]:
        """(CPUs, GPUs) the actor of `device` holds. Devices that name the same GPU hold an even share each
        (cuda:0,cuda:0: half a GPU each; Ray picks which GPU, on which node); a CPU worker computes on its CPUs
        (VDA_THREADS, default 1), a GPU worker decodes and stores with one."""
        cpus = self.options.threads or config.current().threads or 1
        gpus = 1 / self.devices.count(device) if device.startswith("cuda") else 0.0
        return float(cpus if device == "cpu" else 1), gpus

    def _worker_nodes(self) -> list[dict]:
        kinds = {"GPU" if d.startswith("cuda") else "CPU" for d in self.devices}
        nodes = [n for n in ray_module().nodes() if n["Alive"] and any(n["Resources"].get(k, 0) > 0 for k in kinds)]
        if not nodes:
            raise BackendError(f"no node of the Ray cluster offers {' or '.join(sorted(kinds))}; add such nodes")
        return nodes

    def _check_room(self, nodes: list[dict]) -> None:
        """The devices fit in the cluster's resources at once, and each actor fits on one node (else some actors
        would wait for ever)."""
        have = ray_module().cluster_resources()
        need = [self.resources(d) for d in self.devices]
        cpus, gpus = sum(c for c, _ in need), sum(g for _, g in need)
        if cpus > have.get("CPU", 0) + 1e-9 or gpus > have.get("GPU", 0) + 1e-9:
            raise BackendError(
                f"{len(self.devices)} device(s) need {cpus:g} CPU(s) and {gpus:g} GPU(s), and the Ray cluster offers "
                f"{have.get('CPU', 0):g} CPU(s) and {have.get('GPU', 0):g} GPU(s); ask for fewer devices, or add nodes"
            )
        most = max(nodes, key=lambda n: (n["Resources"].get("GPU", 0), n["Resources"].get("CPU", 0)))["Resources"]
        for c, g in need:
            if not any(n["Resources"].get("CPU", 0) >= c and n["Resources"].get("GPU", 0) >= g for n in nodes):
                raise BackendError(
                    f"a worker needs {c:g} CPU(s) and {g:g} GPU(s) on one node, and no node of the Ray cluster has "
                    f"that (the largest: {most.get('CPU', 0):g} CPU(s), {most.get('GPU', 0):g} GPU(s)); lower "
                    "VDA_THREADS, or add larger nodes"
                )

    def worker_path(self, path: Path) -> str:
        """Absolute: an actor's working folder is not the driver's."""
        return str(Path(path).resolve())

    def start_worker(self, slot: int, device: str, log_path: Path, on_line: Callable[[str], None]) -> RayHandle:
        """An actor holding the device's resources, spread over the nodes (so that each node's link, disk and spare
        CPUs serve as few devices as can be)."""
        cpus, gpus = self.resources(device)
        held = f"{cpus:g} CPU" + (f", {gpus:g} GPU" if gpus else "")
        options: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus, "max_concurrency": 4, "max_restarts": 0}
        options["scheduling_strategy"] = "SPREAD"
        faults = config.current().faults.env()  # fault rehearsal reaches the actors as it reaches local workers
        if faults:
            options["runtime_env"] = {"env_vars": faults}
        threads = int(cpus) if device == "cpu" else (self.options.threads or 1)
        o = self.options
        actor = (
            actor_class()
            .options(**options)
            .remote(
                inner_device(device), slot, threads, o.micro_batch, o.compile, self.weights, self.roles.store, o.runtime
            )
        )
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as log:
            log.write(f"$ ray actor holding {held}  # slot {slot} on {device}\n")
        handle = RayHandle(actor, self.plans, held, log_path, on_line)
        self.handles.append(handle)
        return handle

    def merge(self, request: MergeRequest) -> str:
        """As a Ray task on a node that shares the folders, or here on the driver where none does; where it ran."""
        if self.merges is None:  # never opened: nothing but the driver knows the folders
            self.merges = MergeTasks(())
        return self.merges.run(request)

    def per_node(self) -> dict[str, tuple[int, int]]:
        """(units computed, merges run) per Ray node id, and DRIVER for the merges it ran."""
        units: Counter[str] = Counter()
        for handle in self.handles:
            if handle.node:
                units[handle.node] += handle.units
        merged = self.merges.merged if self.merges else Counter()
        return {node: (units[node], merged[node]) for node in {*units, *merged} if units[node] or merged[node]}

    def received(self) -> dict[str, int]:
        """Bytes of pieces and of messages the driver fetched from the actors' streams (what each ray.get gave)."""
        return {kind: sum(h.received[kind] for h in self.handles) for kind in ("pieces", "messages")}

    def close(self) -> None:
        """Stop every actor and merge of the run, say what each node did, and leave the cluster."""
        if self._closed:
            return
        self._closed = True
        if self.merges is not None:
            self.merges.cancel()
        for handle in self.handles:  # kill them all first: each stop() then only waits for its stream to end
            handle.halt()
        for handle in self.handles:
            handle.stop()
        counts = self.per_node()
        if counts:
            print(f"vda: ray: per node: {per_node_text(counts)}", file=sys.stderr, flush=True)
        if self.handles:
            got = self.received()
            print(
                f"vda: ray: the driver received {got['pieces']} bytes of pieces and {got['messages']} bytes of "
                "messages from the actors",
                file=sys.stderr,
                flush=True,
            )
        self.weights = None
        disconnect()


def per_node_text(counts: dict[str, tuple[int, int]]) -> str:
    """`1a2b3c4d 12 units, 1 merge; driver 0 units, 2 merges`: the nodes by units computed, the driver last."""
    order = sorted(counts, key=lambda n: (n == DRIVER, -counts[n][0], -counts[n][1], n))
    plural = lambda n, word: f"{n} {word}" + ("" if n == 1 else "s")  # noqa: E731
    return "; ".join(f"{short(n)} {plural(counts[n][0], 'unit')}, {plural(counts[n][1], 'merge')}" for n in order)


def _output_root(videos: list[VideoRun]) -> Path | None:
    """The folder every output of the batch is in (OUT), or None when some output is not known."""
    outs = [v.out for v in videos]
    if not outs or any(o is None for o in outs):
        return None
    return Path(os.path.commonpath([str(Path(o).resolve()) for o in outs]))
