"""The connection to the Ray cluster, and the small helpers every part of the Ray backend uses."""

from __future__ import annotations

import logging
import socket

from vda.errors import BackendError, one_line
from vda.orchestrator.progress import NODE_ID_CHARS

DRIVER = "driver"  # who stored a piece or ran a merge when no node did (processing_results.json)
_started_here = False  # whether this process called ray.init (and so ends the connection at close)


def ray_module():
    """The ray module, or one line saying how to install it (Ray is an extra: imported only when used)."""
    try:
        import ray
    except ImportError:
        raise BackendError("--backend ray needs Ray: pip install 'vda[ray]', or use --backend local") from None
    return ray


def connect(address: str | None) -> None:
    """Connect this process to the Ray cluster at `address` (auto, HOST:PORT; None starts a private single-node Ray
    here), once. Worker output stays in the worker logs (RUN_DIR/logs), not on the driver's terminal."""
    global _started_here
    ray = ray_module()
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


def disconnect() -> None:
    """Leave the cluster, if this process joined it (a caller that connected itself stays connected)."""
    global _started_here
    if _started_here and ray_module().is_initialized():
        ray_module().shutdown()
        _started_here = False


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


def alive_nodes() -> dict[str, dict]:
    """The cluster's live nodes, by node id (as ray.nodes() describes them)."""
    return {n["NodeID"]: n for n in ray_module().nodes() if n["Alive"]}


def kill(actor) -> None:
    ray = ray_module()
    try:
        ray.kill(actor, no_restart=True)
    except (ray.exceptions.RayError, ValueError):  # already gone
        pass
