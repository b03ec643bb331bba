"""Merges as Ray tasks: each video's merge (pass 1, render, write) runs on a node that shares the run folder and the
output folder with the driver, so the driver's cores and link carry no depth.

A merge task asks for its own CPUs (MERGE_CPUS, or --merge-workers), which Ray grants only where they are free: it
runs beside the workers on CPUs they do not hold, and waits rather than take theirs. Each merge goes to the merge node
with the fewest merges running, then the fewest done, so merges spread over the nodes. A merge whose task fails, or
whose node is lost, runs again on another node: the merge is idempotent (it rewrites every frame under its final name
and writes its marker last), so a retry gives the same output, and costs that merge alone. An error that names what to
fix (a VdaError, such as an output folder holding another run) would be the same anywhere, and is not retried. Once
MERGE_ATTEMPTS nodes have failed, the driver merges, as it does when no node shares the folders.

Every attempt says where it ran in the video's RUN_DIR/logs/merge.log.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections import Counter
from pathlib import Path

from vda import config
from vda.errors import BackendError, VdaError, one_line
from vda.io.rundir import RunDir
from vda.orchestrator.backends.base import MergeRequest, merge_in_process
from vda.orchestrator.backends.ray.cluster import DRIVER, alive_nodes, ray_module, short

MERGE_CPUS = 1  # a merge's CPU request, unless --merge-workers sets it: many merges run at once, one per node or more
MERGE_ATTEMPTS = 3  # nodes a merge is tried on before the driver merges it


class _Retry(Exception):
    """A merge attempt that failed for a reason another node may not have (its node was lost, a crash)."""


def note(request: MergeRequest, line: str) -> None:
    """One line in the video's merge log (RUN_DIR/logs/merge.log), from the driver or from a node."""
    path = request.run.logs / "merge.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")


def merge_on_node(request: MergeRequest, cpus: int, delay: float = 0.0) -> str:
    """The Ray task: merge one video on this node with `cpus` render processes; returns this node's id. `delay`:
    the fault rehearsal VDA_MERGE_DELAY, read on the driver and given as an argument, so that the task needs no
    runtime environment of its own and reuses a node's idle worker process (a new one costs seconds to start)."""
    import torch

    node = ray_module().get_runtime_context().get_node_id()
    note(request, f"merge started on Ray node {node}, pid {os.getpid()}, holding {cpus} CPU(s)")
    time.sleep(delay)
    from vda.merge.render import POOL

    torch.set_num_threads(cpus)
    try:
        merge_in_process(dataclasses.replace(request, workers=cpus))
    finally:  # the render processes are this task's CPUs: none outlives it in the node's reused worker process
        POOL.close()
    note(request, f"merge finished on Ray node {node}")
    return node


class MergeTasks:
    """The merges of a run, on `nodes` (node ids that share the run and output folders); see the module docstring."""

    def __init__(self, nodes: tuple[str, ...]):
        self.nodes = nodes
        self.running: Counter[str] = Counter()
        self.merged: Counter[str] = Counter()  # merges finished, per node id (DRIVER included)
        self._lock = threading.Lock()
        self._refs: set = set()
        self._closed = False
        self._task = ray_module().remote(merge_on_node) if nodes else None

    def run(self, request: MergeRequest) -> str:
        """Merge one video; where it ran: a node id, or DRIVER."""
        tried: list[str] = []
        while len(tried) < MERGE_ATTEMPTS and (node := self._choose(tried)) is not None:
            tried.append(node)
            try:
                self._attempt(node, request)
                return node
            except _Retry as err:
                if self._closed:
                    raise BackendError("the run was stopped during this merge") from None
                note(request, f"merge on Ray node {node} failed ({err}); trying elsewhere")
        if tried:
            note(request, f"merge failed on {len(tried)} node(s); merging on the driver")
        merge_in_process(request)
        with self._lock:
            self.merged[DRIVER] += 1
        return DRIVER

    def _choose(self, tried: list[str]) -> str | None:
        """The live merge node not tried yet with the fewest merges running, then the fewest done."""
        live = alive_nodes() if self.nodes else {}
        with self._lock:
            free = [n for n in self.nodes if n in live and n not in tried]
            return min(free, key=lambda n: (self.running[n], self.merged[n]), default=None)

    def _attempt(self, node: str, request: MergeRequest) -> None:
        ray = ray_module()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        have = int(alive_nodes().get(node, {}).get("Resources", {}).get("CPU", 1))
        cpus = max(1, min(request.workers or MERGE_CPUS, have))  # never more than the node has: it would never run
        options = {
            "num_cpus": cpus,
            "max_retries": 0,
            "scheduling_strategy": NodeAffinitySchedulingStrategy(node, False),
        }
        delay = float(config.current().faults.merge_delay or 0)
        with self._lock:
            if self._closed:
                raise _Retry("the run was stopped")
            ref = self._task.options(**options).remote(_absolute(request), cpus, delay)
            self.running[node] += 1
            self._refs.add(ref)
        try:
            ray.get(ref)
        except ray.exceptions.RayTaskError as err:
            if isinstance(err.cause, VdaError):
                raise err.cause from None
            raise _Retry(one_line(err)[:300]) from None
        except ray.exceptions.RayError as err:  # the node was lost, its worker died, or the task was cancelled
            raise _Retry(f"{type(err).__name__}; node {short(node)} lost?") from None
        finally:
            with self._lock:
                self.running[node] -= 1
                self._refs.discard(ref)
        with self._lock:
            self.merged[node] += 1

    def cancel(self) -> None:
        """Stop every merge in flight (Ctrl-C); their merges raise."""
        ray = ray_module()
        with self._lock:
            self._closed = True
            refs = list(self._refs)
        for ref in refs:
            try:
                ray.cancel(ref, force=True)
            except (ray.exceptions.RayError, ValueError, TypeError):  # already done
                pass


def _absolute(request: MergeRequest) -> MergeRequest:
    """The request with absolute paths: a task's working folder is not the driver's."""
    return dataclasses.replace(request, run=RunDir(request.run.path.resolve()), out=Path(request.out).resolve())
