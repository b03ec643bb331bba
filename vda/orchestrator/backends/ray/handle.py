"""RayHandle: a worker actor as the queue sees a worker (WorkerHandle).

Messages go in by actor calls; the actor's items come out of its stream, which a LinePump reads as it reads a local
worker's stdout. Where pieces cross to the driver, the reader is two stages with a small queue between them: one
thread fetches items from the object store while another stores the pieces before them (vda.device.worker's
`write_piece`), so an actor is no longer held to one thread's fetch plus store per window.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from vda import events
from vda.core.plan import Plan
from vda.errors import EXIT_BUG, EXIT_ERROR, VdaError, one_line
from vda.orchestrator.backends.base import ERROR_PREFIX, START_FAILED, LinePump
from vda.orchestrator.backends.ray.actor import IN_FLIGHT
from vda.orchestrator.backends.ray.cluster import DRIVER, kill, ray_module, short

ACTOR_DIED = 137  # the exit code of a worker whose actor died or whose node was lost (as if killed)
START_TIMEOUT_S = 600.0  # an actor that Ray cannot place for this long (no such resource free) retires its device
STOP_GRACE_S = 10.0
# Items fetched and not yet stored: fetching and storing a window overlap (bench/bench_ray.py measures both), and a
# few items between them absorb a slow store without holding more than a few windows (about 30 MB each at 1080p,
# fp16) in the driver's memory.
STORE_AHEAD = 4
_END = object()
log = logging.getLogger(__name__)


class RayHandle:
    """A worker actor behind the WorkerHandle contract (see the module docstring)."""

    def __init__(self, actor, plans: dict[str, Plan], resources: str, log_path: Path, on_line: Callable[[str], None]):
        self.actor, self.plans, self.resources = actor, plans, resources
        self.reason: str | None = None
        self.node: str | None = None  # the Ray node id, once the actor runs
        self.stored_by: str | None = None  # who stores its pieces: its node id, or DRIVER
        self.units = 0  # units it computed (for the per-node count)
        self.received = {"pieces": 0, "messages": 0}  # bytes the driver got from its stream, of each kind
        self.code: int | None = None
        self._ended_as: int | None = None  # the exit code to report when we stopped the actor ourselves
        self._seq = 0
        self._sent_plans: set[str] = set()
        self._created = time.monotonic()
        self._stopping = threading.Event()
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
            kill(self.actor)

    def _end(self, code: int) -> None:
        """Kill the actor and report `code` for it (its stream then ends with an error that is no news)."""
        self._ended_as = code
        kill(self.actor)
        self.pump.join(STOP_GRACE_S)

    def _fetch(self, stream, items: queue.Queue) -> None:
        """Stage one: the stream's items, in order, fetched from the object store; then _END, or the error that
        ended the stream."""
        ray = ray_module()
        try:
            for ref in stream:
                self._put(items, ray.get(ref))
            self._put(items, _END)
        except BaseException as err:  # noqa: BLE001 - handed to stage two, which says what it means
            self._put(items, err)

    def _put(self, items: queue.Queue, item) -> None:
        """Put unless stage two has stopped reading (then this thread ends at its next item)."""
        while not self._stopping.is_set():
            try:
                items.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _lines(self, stream) -> Iterator[str]:
        """Stage two: the worker's lines, in order; pieces are stored on the way. The exit code is set when the
        stream ends."""
        ray = ray_module()
        items: queue.Queue = queue.Queue(maxsize=STORE_AHEAD)
        threading.Thread(target=self._fetch, args=(stream, items), name="vda-ray-fetch", daemon=True).start()
        try:
            while (item := items.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield from self._take(item)
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
            self._stopping.set()
            kill(self.actor)  # a finished worker, like an exited process, holds nothing
            if self.code is None:  # whatever ended the stream, the queue must see this worker as gone
                self.code = EXIT_BUG

    def _take(self, item: tuple) -> Iterator[str]:
        from vda.io.pieces import write_piece

        kind = item[0]
        if kind == "piece":
            _, path, array, piece, seconds, rows = item  # rows: each row's [min, max], taken on the device
            self.received["pieces"] += array.nbytes
            write_piece(Path(path), array, piece, seconds, rows)
        elif kind == "start":
            _, self.node, ip, pid, here = item
            self.stored_by = self.node if here else DRIVER
            where = "this node stores its pieces" if here else "its pieces go to the driver"
            yield f"started on Ray node {self.node} ({ip}), pid {pid}, holding {self.resources}; {where}"
        elif kind == "exit":
            _, self.code, line = item
            if line:
                yield line
        else:
            line = item[1]
            self.received["messages"] += len(line.encode())
            message = events.decode(line) if line.startswith(events.PREFIX) else None
            if isinstance(message, events.Done) and message.computed:
                self.units += 1
            yield line

    def _death(self, err: BaseException) -> str:
        """Why the actor is gone, in one line: its node was lost, or it died."""
        try:
            nodes = {n["NodeID"]: n for n in ray_module().nodes()}
        except Exception:  # noqa: BLE001 - the cluster itself is unreachable: say what is known
            nodes = {}
        node = nodes.get(self.node or "", {})
        where = f"node {short(self.node)} ({node.get('NodeManagerAddress', '?')})"
        if self.node and not node.get("Alive", False):
            return f"Ray {where} was lost; its units go to the other nodes"
        if isinstance(err, ray_module().exceptions.ActorUnavailableError):  # before Ray knows whether the node is gone
            return f"its Ray actor on {where} cannot be reached (its node lost?); its units go to the other devices"
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        return f"its Ray actor on {where} died ({type(err).__name__}: {first}); its units go to the other devices"
