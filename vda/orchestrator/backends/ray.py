"""Ray backend: `vda depth --backend ray`, one long-lived Ray actor per device, anywhere in a Ray cluster.

Each device is an actor that holds its resource (a GPU, or CPUs for a CPU device) on whichever node Ray places it. The
actor runs vda.pipeline.worker's DeviceWorker in its own process: it loads the model once and computes the units the
queue (vda.orchestrator.queue) hands it, as a local worker process does, behind the same WorkerHandle: a message goes
in by an actor call (`send`), and everything the worker says comes back, in order, on one streaming call (`serve`).

What crosses the cluster, and why:
- Results: each piece's depth comes back through Ray's object store, and the driver stores it in RUN_DIR with the
  worker's own writer (vda.pipeline.worker.write_piece). No node but the driver's needs the run folder, so resume,
  merge and the output layout are those of the other backends.
- Plans: sent to an actor with its first unit of each video (a few kB); an actor never reads the run folder.
- Weights: put in the object store once per run; a node fetches them once into a node-local cache
  (<tmp>/vda-ray-<uid>/<sha256>.pth) that every actor there loads, so no actor reads them from the driver's disk.
- Inputs: decoded where the actor runs, so every node must see them at the same path; `open` checks this on every node
  that can host a worker, before any work, and refuses in one line naming the node and the path.

Faults: an actor that dies, or whose node is lost, ends its stream with an error; its handle then reports a non-zero
exit, and the queue redoes the units it held on the other devices, as for a local worker that died. Ctrl-C stops every
actor (`close`); a driver killed with -9 takes its actors with it (Ray ends the actors of a driver that is gone), and
the same command resumes from RUN_DIR.
"""

from __future__ import annotations

import io
import logging
import os
import queue
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vda import config, events
from vda.core.plan import Plan
from vda.errors import EXIT_BUG, EXIT_ERROR, BackendError, VdaError, one_line
from vda.io.rundir import RunDir
from vda.io.writers import write_atomic
from vda.orchestrator.backends.base import ERROR_PREFIX, START_FAILED, Backend, LinePump, MergeRequest, VideoRun
from vda.orchestrator.launch import inner_device
from vda.orchestrator.progress import NODE_ID_CHARS

ACTOR_DIED = 137  # the exit code of a worker whose actor died or whose node was lost (as if killed)
START_TIMEOUT_S = 600.0  # an actor that Ray cannot place for this long (no such resource free) retires its device
CHECK_TIMEOUT_S = 120.0  # how long each node gets to answer the input check
STOP_GRACE_S = 10.0
IN_FLIGHT = 16  # items (pieces, lines) an actor may have on their way to the driver before it waits for it
CACHE_DIR = "vda-ray"  # the node-local weights cache, under the node's temporary folder

_started_here = False  # whether this process called ray.init (and so ends the connection at close)
log = logging.getLogger(__name__)


def _ray():
    """The ray module, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise BackendError("--backend ray needs Ray: pip install 'vda[ray]', or use --backend local") from None
    return ray


def connect(address: str | None) -> None:
    """Connect this process to the Ray cluster at `address` (auto, HOST:PORT; None starts a private single-node Ray
    here), once. Worker output stays in the worker logs (RUN_DIR/logs), not on the driver's terminal."""
    global _started_here
    ray = _ray()
    if ray.is_initialized():
        return
    if address:
        _check_reachable(address)
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as err:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise BackendError(
            f"cannot start or reach {where} ({one_line(err)[:200]}); check --ray-address (`ray status` on the head "
            "node prints it), or use --backend local"
        ) from None
    _started_here = True


def _check_reachable(address: str) -> None:
    """Refuse at once an address where nothing listens: ray.init would retry it for ever."""
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return  # auto (Ray finds the cluster started on this machine, or says there is none)
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as err:
        raise BackendError(
            f"cannot reach the Ray cluster at {address} ({err.strerror or type(err).__name__}); check --ray-address "
            "(`ray status` on the head node prints it), or use --backend local"
        ) from None


def short(node: str | None) -> str:
    """A node id as logs show it (Ray's full ids are 56 hex digits; `ray list nodes` shows them)."""
    return (node or "?")[:NODE_ID_CHARS]


class RayHandle:
    """A worker actor as the queue sees a worker (WorkerHandle): messages in by actor calls, its lines out of a stream
    that a LinePump reads, as it reads a local worker's stdout. Pieces in that stream are stored here, on the driver."""

    def __init__(self, actor, plans: dict[str, Plan], resources: str, log_path: Path, on_line: Callable[[str], None]):
        self.actor, self.plans, self.resources = actor, plans, resources
        self.reason: str | None = None
        self.node: str | None = None  # the Ray node id, once the actor runs
        self.units = 0  # units it computed (for the per-node count)
        self.code: int | None = None
        self._ended_as: int | None = None  # the exit code to report when we stopped the actor ourselves
        self._seq = 0
        self._sent_plans: set[str] = set()
        self._created = time.monotonic()
        stream = actor.serve.options(num_returns="streaming", _generator_backpressure_num_objects=IN_FLIGHT).remote()
        self.pump = LinePump(self._lines(stream), log_path, on_line, self)

    def send(self, message: events.Message) -> None:
        if isinstance(message, events.Stop) and self.node is None:  # never placed: it has nothing to finish
            self._end(0)
            return
        plan = None
        if isinstance(message, events.Assign) and message.run_dir not in self._sent_plans:
            plan = self.plans[message.run_dir]
            self._sent_plans.add(message.run_dir)
        self.actor.send.remote(self._seq, message, plan)  # a dead actor's call fails quietly: poll() reports it
        self._seq += 1

    def poll(self) -> int | None:
        if self.pump.thread.is_alive() and self.node is None and time.monotonic() - self._created > START_TIMEOUT_S:
            self.reason = f"Ray found no node with {self.resources} free for {START_TIMEOUT_S:.0f} s"
            self._end(START_FAILED)
        if self.pump.thread.is_alive():
            return None
        return self.code

    def stop(self) -> None:
        self.halt()
        self.pump.join(STOP_GRACE_S)

    def halt(self) -> None:
        """Kill the actor without waiting (stopping many at once then costs one wait, not one each)."""
        if self.pump.thread.is_alive() and self._ended_as is None:
            self._ended_as = ACTOR_DIED
            _kill(self.actor)

    def _end(self, code: int) -> None:
        """Kill the actor and report `code` for it (its stream then ends with an error that is no news)."""
        self._ended_as = code
        _kill(self.actor)
        self.pump.join(STOP_GRACE_S)

    def _lines(self, stream) -> Iterator[str]:
        """The worker's lines, in order; pieces are stored on the way. The exit code is set when the stream ends."""
        ray = _ray()
        try:
            for ref in stream:
                yield from self._take(ray.get(ref))
            self.code = 0 if self.code is None else self.code
        except ray.exceptions.RayTaskError as err:  # serve() itself raised: a bug (the worker's errors are items)
            self.code = EXIT_BUG
            yield ERROR_PREFIX + f"this is a bug in vda: the Ray actor failed ({one_line(err)[:300]})"
        except ray.exceptions.RayError as err:  # the actor died, its node was lost, or a piece went with the node
            self.code = ACTOR_DIED if self._ended_as is None else self._ended_as
            if self._ended_as is None:
                yield ERROR_PREFIX + self._death(err)
        except (VdaError, OSError) as err:  # the driver could not store a piece (a full disk): as a worker's store
            self.code = err.exit_code if isinstance(err, VdaError) else EXIT_ERROR
            yield ERROR_PREFIX + f"cannot store a piece on the driver: {one_line(err)}"
        except Exception as err:  # noqa: BLE001 - a bug on the driver's side: this worker ends, the run says why
            self.code = EXIT_BUG
            log.error("bug in the Ray driver's reader: %s", err, exc_info=err)
            yield ERROR_PREFIX + f"this is a bug in vda: the driver's reader failed ({type(err).__name__}: {err})"
        finally:
            _kill(self.actor)  # a finished worker, like an exited process, holds nothing
            if self.code is None:  # whatever ended the stream, the queue must see this worker as gone
                self.code = EXIT_BUG

    def _take(self, item: tuple) -> Iterator[str]:
        from vda.pipeline.worker import write_piece

        kind = item[0]
        if kind == "piece":
            _, path, array, piece, seconds = item
            write_piece(Path(path), array, piece, seconds)
        elif kind == "start":
            _, self.node, ip, pid = item
            yield f"started on Ray node {self.node} ({ip}), pid {pid}, holding {self.resources}"
        elif kind == "exit":
            _, self.code, line = item
            if line:
                yield line
        else:
            line = item[1]
            message = events.decode(line) if line.startswith(events.PREFIX) else None
            if isinstance(message, events.Done) and message.computed:
                self.units += 1
            yield line

    def _death(self, err: BaseException) -> str:
        """Why the actor is gone, in one line: its node was lost, or it died."""
        try:
            nodes = {n["NodeID"]: n for n in _ray().nodes()}
        except Exception:  # noqa: BLE001 - the cluster itself is unreachable: say what is known
            nodes = {}
        node = nodes.get(self.node or "", {})
        where = f"node {short(self.node)} ({node.get('NodeManagerAddress', '?')})"
        if self.node and not node.get("Alive", False):
            return f"Ray {where} was lost; its units go to the other nodes"
        if isinstance(err, _ray().exceptions.ActorUnavailableError):  # before Ray has decided whether the node is gone
            return f"its Ray actor on {where} cannot be reached (its node lost?); its units go to the other devices"
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        return f"its Ray actor on {where} died ({type(err).__name__}: {first}); its units go to the other devices"


_remote_actor = None


def _actor_class():
    """DeviceActor as a Ray actor class, made once per process (Ray exports a class each time it wraps one)."""
    global _remote_actor
    if _remote_actor is None:
        _remote_actor = _ray().remote(DeviceActor)
    return _remote_actor


def _kill(actor) -> None:
    ray = _ray()
    try:
        ray.kill(actor, no_restart=True)
    except (ray.exceptions.RayError, ValueError):  # already gone
        pass


class RayBackend(Backend):
    """Workers as Ray actors on the nodes of a cluster; the driver (this process) keeps RUN_DIR and runs the merge."""

    name = "ray"
    gpu_pool = "the Ray cluster"
    all_gpus_by_default = True  # every GPU of the cluster, wherever it is
    plans_first = True  # open() checks every input on every node, from its plan

    def __init__(self, devices: list[str], options, image: str | None = None, address: str | None = None):
        super().__init__(devices, options, image, address)
        self.plans: dict[str, Plan] = {}  # every video's, loaded in open (hence plans_first)
        self.handles: list[RayHandle] = []
        self.weights: tuple[str, list] | None = None  # (sha256, [ObjectRef]): in a list, so actors fetch it lazily
        self._closed = False

    @staticmethod
    def visible_gpus(address: str | None = None) -> int:
        """The GPUs of the whole cluster (ray.cluster_resources): --gpus N takes N of them, on whichever nodes."""
        connect(address)
        return int(_ray().cluster_resources().get("GPU", 0))

    def open(self, root: RunDir, videos: list[VideoRun]) -> None:
        """Connect, check that the cluster can hold the devices and that every node that may run a worker reads
        every input, then ship the weights: all before any work, so that a run that cannot work says so at once."""
        super().open(root, videos)
        connect(self.address)
        self.plans = {str(v.run.path): Plan.load(v.run.path) for v in videos}
        nodes = self._worker_nodes()
        self._check_room(nodes)
        check_inputs(nodes, list(self.plans.values()))
        self.weights = self._ship_weights()

    def resources(self, device: str) -> tuple[float, float]:
        """(CPUs, GPUs) the actor of `device` holds. Devices that name the same GPU hold an even share each
        (cuda:0,cuda:0: half a GPU each; Ray picks which GPU, on which node); a CPU worker computes on its CPUs
        (VDA_THREADS, default 1), a GPU worker decodes and stores with one."""
        cpus = self.options.threads or config.current().threads or 1
        gpus = 1 / self.devices.count(device) if device.startswith("cuda") else 0.0
        return float(cpus if device == "cpu" else 1), gpus

    def _worker_nodes(self) -> list[dict]:
        kinds = {"GPU" if d.startswith("cuda") else "CPU" for d in self.devices}
        nodes = [n for n in _ray().nodes() if n["Alive"] and any(n["Resources"].get(k, 0) > 0 for k in kinds)]
        if not nodes:
            raise BackendError(f"no node of the Ray cluster offers {' or '.join(sorted(kinds))}; add such nodes")
        return nodes

    def _check_room(self, nodes: list[dict]) -> None:
        """The devices fit in the cluster's resources at once, and each actor fits on one node (else some actors
        would wait for ever)."""
        have = _ray().cluster_resources()
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

    def _ship_weights(self) -> tuple[str, list]:
        """Put the run's checkpoint in the object store, once; nodes fetch it from there (see _cached_weights)."""
        from vda.model.registry import find, local_file, resolve

        s = next(iter(self.plans.values())).settings
        if self.options.checkpoint:
            path = Path(self.options.checkpoint)
        else:
            path = local_file(find(s.encoder, s.metric)) or resolve(s.encoder, s.metric, download=False)
        return s.checkpoint_sha256, [_ray().put(np.memmap(path, dtype=np.uint8, mode="r"))]

    def worker_path(self, path: Path) -> str:
        return str(path)

    def start_worker(self, slot: int, device: str, log_path: Path, on_line: Callable[[str], None]) -> RayHandle:
        cpus, gpus = self.resources(device)
        held = f"{cpus:g} CPU" + (f", {gpus:g} GPU" if gpus else "")
        options: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus, "max_concurrency": 4, "max_restarts": 0}
        faults = config.current().faults.env()  # fault rehearsal reaches the actors as it reaches local workers
        if faults:
            options["runtime_env"] = {"env_vars": faults}
        threads = int(cpus) if device == "cpu" else (self.options.threads or 1)
        o = self.options
        actor = (
            _actor_class()
            .options(**options)
            .remote(inner_device(device), slot, threads, o.micro_batch, o.compile, self.weights)
        )
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as log:
            log.write(f"$ ray actor holding {held}  # slot {slot} on {device}\n")
        handle = RayHandle(actor, self.plans, held, log_path, on_line)
        self.handles.append(handle)
        return handle

    def merge(self, request: MergeRequest) -> None:
        """On the driver, where RUN_DIR is: as the local backend merges."""
        from vda.orchestrator.backends.local import LocalBackend

        LocalBackend.merge(self, request)

    def units_per_node(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for handle in self.handles:
            if handle.node:
                counts[handle.node] += handle.units
        return dict(counts)

    def close(self) -> None:
        """Stop every actor of the run, say how many units each node computed, and leave the cluster."""
        if self._closed:
            return
        self._closed = True
        for handle in self.handles:  # kill them all first: each stop() then only waits for its stream to end
            handle.halt()
        for handle in self.handles:
            handle.stop()
        counts = self.units_per_node()
        if any(counts.values()):
            text = ", ".join(f"{short(node)} {n}" for node, n in sorted(counts.items(), key=lambda kv: -kv[1]))
            print(f"vda: ray: units per node: {text}", file=sys.stderr, flush=True)
        self.weights = None
        global _started_here
        if _started_here and _ray().is_initialized():
            _ray().shutdown()
            _started_here = False


def check_inputs(nodes: list[dict], plans: list[Plan]) -> None:
    """Run a tiny task on every node in `nodes` that tries each input as planned; refuse in one line on the first
    node that cannot use one (missing there, unreadable, or another file at that path)."""
    ray = _ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(unusable_inputs)
    pending = {}
    for node in nodes:
        strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        pending[task.options(scheduling_strategy=strategy).remote(plans)] = node
    ready, late = ray.wait(list(pending), num_returns=len(pending), timeout=CHECK_TIMEOUT_S)
    for ref in [*ready, *late]:
        node = pending[ref]
        where = f"Ray node {short(node['NodeID'])} ({node['NodeManagerAddress']})"
        if ref in late:
            raise BackendError(f"{where} did not check the inputs within {CHECK_TIMEOUT_S:.0f} s; is it overloaded?")
        try:
            problems = ray.get(ref)
        except ray.exceptions.RayError as err:
            raise BackendError(
                f"{where} could not run the input check ({type(err).__name__}); install the same vda there"
            ) from None
        if problems:
            path, why = problems[0]
            raise BackendError(
                f"{where} cannot read input {path} ({why}); every node must see the inputs at the same path "
                "(a shared mount, or a copy there): fix that node, or remove it from the cluster"
            )


def unusable_inputs(plans: list[Plan]) -> list[tuple[str, str]]:
    """On one node: (path, why) for each input it cannot use as planned (the worker verifies the same, per video)."""
    from vda.io.video import head_hash

    bad = []
    for plan in plans:
        path = Path(plan.input.path)
        try:
            if not path.exists():
                bad.append((str(path), "not found there"))
            elif path.is_file() and path.stat().st_size != plan.input.size_bytes:
                bad.append((str(path), "another file there: its size differs"))
            elif head_hash(path) != plan.input.head_sha256:
                bad.append((str(path), "another file there: its content differs"))
        except OSError as err:
            bad.append((str(path), err.strerror or type(err).__name__))
    return bad


def _cached_weights(sha: str, refs: list) -> tuple[Path, bool]:
    """The run's checkpoint on this node, and whether it was fetched now: from the object store into a node-local
    cache, once per node. The cache is per user (a shared node's other users own theirs), and a cached file whose
    hash is not the run's (damaged, cut short) is fetched again."""
    from vda.pipeline.worker import file_sha256

    path = Path(tempfile.gettempdir()) / f"{CACHE_DIR}-{os.getuid()}" / f"{sha}.pth"
    if path.is_file() and file_sha256(path) == sha:
        return path, False
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, memoryview(_ray().get(refs[0])))
    return path, True


class _Lines(io.TextIOBase):
    """sys.stdout inside an actor: each line the worker prints (vda.pipeline.worker.say) goes to the driver's log."""

    def __init__(self, outbox: queue.Queue):
        self.outbox, self.partial, self.lock = outbox, "", threading.Lock()

    def write(self, text: str) -> int:
        with self.lock:
            *lines, self.partial = (self.partial + text).split("\n")
            for line in lines:
                self.outbox.put(("line", line))
        return len(text)


class DeviceActor:
    """One device's worker inside a Ray actor (wrapped by ray.remote in RayBackend.start_worker). Its methods run in
    the actor's process, on whichever node Ray placed it; see the module docstring."""

    def __init__(
        self, device: str, slot: int, threads: int, micro_batch: int | None, compile: bool, weights: tuple[str, list]
    ):
        self.device, self.slot, self.threads = device, slot, threads
        self.micro_batch, self.compile, self.weights = micro_batch, compile, weights
        self.inbox: queue.Queue[str] = queue.Queue()
        self.outbox: queue.Queue = queue.Queue(maxsize=IN_FLIGHT)  # a full one holds the worker's store thread
        self.plans: dict[str, Plan] = {}
        self._early: dict[int, events.Message] = {}
        self._next = 0
        self._lock = threading.Lock()

    def send(self, seq: int, message: events.Message, plan: Plan | None) -> None:
        """A message from the driver. Calls to a threaded actor may run out of order, so they are put back in order
        (`seq`) before the worker reads them; a video's plan comes with its first unit."""
        with self._lock:
            if plan is not None:
                self.plans[message.run_dir] = plan
            self._early[seq] = message
            while self._next in self._early:
                self.inbox.put(events.encode(self._early.pop(self._next)))
                self._next += 1

    def serve(self) -> Iterator[tuple]:
        """Everything the worker says, in order: ("start", node, ip, pid), then ("line", text) for its messages and
        log lines, ("piece", path, array, index, seconds) for each piece, and ("exit", code, error line) last."""
        ray = _ray()
        yield ("start", ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address(), os.getpid())
        threading.Thread(target=self._work, name="vda-actor", daemon=True).start()
        while (item := self.outbox.get()) is not None:
            yield item

    def _work(self) -> None:
        import torch

        from vda.pipeline.worker import DeviceWorker

        sys.stdout = _Lines(self.outbox)
        code, line = 0, ""
        try:
            torch.set_num_threads(self.threads)
            checkpoint, fetched = _cached_weights(*self.weights)
            how = "fetched from the object store into this node's cache" if fetched else "in this node's cache"
            print(f"checkpoint {checkpoint} ({how})")
            worker = DeviceWorker(
                self.device,
                lambda message: self.outbox.put(("line", events.encode(message))),
                checkpoint=str(checkpoint),
                micro_batch=self.micro_batch,
                compile=self.compile,
                slot=self.slot,
                store_piece=lambda path, array, piece, seconds: self.outbox.put(
                    ("piece", str(path), array, piece, seconds)
                ),
                load_plan=self.plans.__getitem__,
                unfinished=lambda run, plan, unit: plan.pieces(unit),  # never this node's copy of a run folder
            )
            worker.serve(iter(self.inbox.get, None))
        except VdaError as err:
            code, line = err.exit_code, ERROR_PREFIX + one_line(err)
        except Exception as err:  # noqa: BLE001 - a bug: reported as a local worker reports one, traceback in its log
            for text in traceback.format_exc().splitlines():
                self.outbox.put(("line", text))
            code, line = EXIT_BUG, ERROR_PREFIX + f"this is a bug in vda ({type(err).__name__}: {one_line(err)})"
        self.outbox.put(("exit", code, line))
        self.outbox.put(None)
