"""DeviceActor: one device's worker (vda.device.worker.DeviceWorker) inside a Ray actor, on whichever node Ray
places it.

It loads the model once and computes the units the queue hands it, as a local worker process does. Messages come in
by actor calls (`send`); everything it says goes out, in order, on one streaming call (`serve`). Where its node
shares the run folder with the driver (vda.orchestrator.backends.ray.nodes), it stores its pieces and markers there
itself, with the worker's own `write_piece`, and skips the pieces already stored there (an earlier attempt's); only
its lines cross to the driver. Elsewhere it computes every piece of a unit it is given, and each goes to the driver
through the object store, which stores it (RayHandle).
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import traceback
from collections.abc import Iterator

from vda import events
from vda.core.plan import Plan, Unit
from vda.errors import EXIT_BUG, VdaError, one_line
from vda.io.rundir import RunDir
from vda.orchestrator.backends.base import ERROR_PREFIX
from vda.orchestrator.backends.ray.cluster import ray_module
from vda.orchestrator.backends.ray.stdout import OutboxLines
from vda.orchestrator.backends.ray.weights import Weights, cached_weights

IN_FLIGHT = 16  # items (pieces, lines) an actor may have on their way to the driver before it waits for it

_remote_actor = None


def actor_class():
    """DeviceActor as a Ray actor class, made once per process (Ray exports a class each time it wraps one)."""
    global _remote_actor
    if _remote_actor is None:
        _remote_actor = ray_module().remote(DeviceActor)
    return _remote_actor


class DeviceActor:
    """One device's worker inside a Ray actor (wrapped by ray.remote in `actor_class`); its methods run in the
    actor's process. `store_on`: the node ids whose actors store their own pieces (see the module docstring)."""

    def __init__(
        self,
        device: str,
        slot: int,
        threads: int,
        micro_batch: int | None,
        compile: bool,
        weights: Weights,
        store_on: frozenset[str] = frozenset(),
        runtime: str = "torch",
    ):
        self.device, self.slot, self.threads, self.runtime = device, slot, threads, runtime
        self.micro_batch, self.compile, self.weights, self.store_on = micro_batch, compile, weights, store_on
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
        """Everything the worker says, in order: ("start", node, ip, pid, stores here), then ("line", text) for its
        messages and log lines, ("piece", path, array, index, seconds, rows) for each piece it does not store itself,
        and ("exit", code, error line) last."""
        ray = ray_module()
        node = ray.get_runtime_context().get_node_id()
        here = node in self.store_on
        yield ("start", node, ray.util.get_node_ip_address(), os.getpid(), here)
        threading.Thread(target=self._work, args=(here,), name="vda-actor", daemon=True).start()
        while (item := self.outbox.get()) is not None:
            yield item

    def _work(self, store_here: bool) -> None:
        import torch

        from vda.device.worker import DeviceWorker
        from vda.io.pieces import write_piece
        from vda.system import keep_freed_memory

        sys.stdout = OutboxLines(self.outbox)
        code, line = 0, ""
        try:
            torch.set_num_threads(self.threads)
            keep_freed_memory()  # as `vda work` does: the actor's process is its worker's
            checkpoint, fetched = cached_weights(*self.weights)
            how = "fetched from the object store into this node's cache" if fetched else "in this node's cache"
            print(f"checkpoint {checkpoint} ({how})")
            print("pieces stored by this node" if store_here else "pieces sent to the driver through the object store")
            worker = DeviceWorker(
                self.device,
                lambda message: self.outbox.put(("line", events.encode(message))),
                checkpoint=str(checkpoint),
                micro_batch=self.micro_batch,
                compile=self.compile,
                runtime=self.runtime,
                slot=self.slot,
                store_piece=write_piece if store_here else self._send_piece,
                load_plan=self.plans.__getitem__,
                unfinished=RunDir.unfinished_pieces if store_here else _every_piece,
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

    def _send_piece(self, path, array, piece: int, seconds: float, rows=None) -> None:
        self.outbox.put(("piece", str(path), array, piece, seconds, rows))


def _every_piece(run: RunDir, plan: Plan, unit: Unit) -> list[int]:
    """A unit's pieces to compute, on a node that does not share the run folder: all of them (the driver hands out
    only unfinished units, and this node's copy of the folder, if any, is not the run's)."""
    return plan.pieces(unit)
