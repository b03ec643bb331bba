"""What each node can do, checked before any work: read every input, and share the run and output folders.

One tiny task per node that may host a worker (`check_nodes`):
- it tries each input as planned; the first node that cannot use one is refused in one line, naming the node and
  the path (the inputs are decoded where the actors run, so every node must see them at the same path);
- it looks for the token the driver has just written into the run folder (and the output folder), and answers with a
  file beside it. A folder is shared with a node when the node read the driver's token and the driver reads the
  node's answer: both see the same files at the same path, and both can write there.

A node that shares the run folder stores its actors' pieces there itself; one that does not sends them to the driver
through the object store. A node that shares both folders can run merges (`Roles`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from vda.core.plan import Plan
from vda.errors import BackendError
from vda.orchestrator.backends.ray.cluster import ray_module, short

CHECK_TIMEOUT_S = 120.0  # how long each node gets to answer the check
PROBE_PREFIX = ".vda-shared-"  # the token files, removed once every node has answered


@dataclass(frozen=True)
class Probe:
    """A token the driver wrote into a folder, for the nodes to find; each answers beside it."""

    folder: str
    token: str

    @property
    def path(self) -> Path:
        return Path(self.folder) / f"{PROBE_PREFIX}{self.token}"

    def answer(self, node: str) -> Path:
        return self.path.with_name(f"{self.path.name}.{node}")


@dataclass(frozen=True)
class Roles:
    """Which worker nodes store their own pieces, and which may run merges (they see the outputs too)."""

    store: frozenset[str]  # node ids whose actors write their pieces into the run folder
    merge: tuple[str, ...]  # node ids that share the run folder and the output folder
    through_driver: tuple[str, ...]  # worker nodes that cannot see the run folder: their pieces cross to the driver

    def line(self, run: Path, out: Path | None) -> str:
        """Who does what, in one line."""
        names = lambda nodes: ", ".join(short(n) for n in sorted(nodes))  # noqa: E731
        parts = []
        if self.store:
            parts.append(f"node(s) {names(self.store)} store their own pieces in {run}")
        if self.through_driver:
            parts.append(f"node(s) {names(self.through_driver)} cannot see it there and send theirs to the driver")
        if self.merge:
            parts.append(f"merges run on node(s) {names(self.merge)}")
        elif out is None:
            parts.append("merges run on the driver (no output folder was named to check)")
        else:
            parts.append(f"merges run on the driver (no node shares {run} and {out} with it)")
        return "vda: ray: " + "; ".join(parts)


def roles(shared: dict[str, set[str]], run: Path, out: Path | None) -> Roles:
    """`shared`: per worker node id, the folders it shares with the driver (check_nodes)."""
    store = frozenset(n for n, folders in shared.items() if str(run) in folders)
    merge = tuple(sorted(n for n in store if out is not None and str(out) in shared[n]))
    return Roles(store, merge, tuple(sorted(set(shared) - store)))


def check_nodes(nodes: list[dict], plans: list[Plan], folders: list[Path]) -> dict[str, set[str]]:
    """Run the check on every node in `nodes` (see the module docstring); per node id, the folders it shares."""
    probes = [p for p in (Probe(str(folder), secrets.token_hex(16)) for folder in folders) if _leave(p)]
    try:
        answers = _ask_every_node(nodes, plans, probes)
        return {
            node: {p.folder for p in probes if p.folder in said and _reads(p.answer(node), p.token)}
            for node, said in answers.items()
        }
    finally:
        for probe in probes:
            for path in Path(probe.folder).glob(f"{probe.path.name}*"):
                path.unlink(missing_ok=True)


def _leave(probe: Probe) -> bool:
    """Write the driver's token; a folder the driver cannot write to is shared with no node (it merges there)."""
    try:
        probe.path.parent.mkdir(parents=True, exist_ok=True)
        probe.path.write_text(probe.token)
        return True
    except OSError:
        return False


def _reads(path: Path, token: str) -> bool:
    try:
        return path.read_text() == token
    except OSError:
        return False


def _ask_every_node(nodes: list[dict], plans: list[Plan], probes: list[Probe]) -> dict[str, list[str]]:
    """Per node id, the probed folders it says it shares; raises in one line on a node that cannot use an input."""
    ray = ray_module()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(node_report)
    pending = {}
    for node in nodes:
        strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        pending[task.options(scheduling_strategy=strategy).remote(plans, probes)] = node
    ready, late = ray.wait(list(pending), num_returns=len(pending), timeout=CHECK_TIMEOUT_S)
    answers = {}
    for ref in [*ready, *late]:
        node = pending[ref]
        where = f"Ray node {short(node['NodeID'])} ({node['NodeManagerAddress']})"
        if ref in late:
            raise BackendError(f"{where} did not check the inputs within {CHECK_TIMEOUT_S:.0f} s; is it overloaded?")
        try:
            problems, answers[node["NodeID"]] = ray.get(ref)
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
    return answers


def node_report(plans: list[Plan], probes: list[Probe]) -> tuple[list[tuple[str, str]], list[str]]:
    """On one node: the inputs it cannot use, and the probed folders where it found the driver's token (and left its
    answer beside it)."""
    node = ray_module().get_runtime_context().get_node_id()
    return unusable_inputs(plans), [p.folder for p in probes if _answer(p, node)]


def _answer(probe: Probe, node: str) -> bool:
    try:
        if not probe.path.is_file() or probe.path.read_text() != probe.token:
            return False
        probe.answer(node).write_text(probe.token)
        return True
    except OSError:  # not there, not readable, not writable: not shared
        return False


def unusable_inputs(plans: list[Plan]) -> list[tuple[str, str]]:
    """On one node: (path, why) for each input it cannot use as planned (the worker verifies the same, per video)."""
    from vda.io.probe import NOT_FOUND, identity_mismatch

    bad = []
    for plan in plans:
        path = Path(plan.input.path)
        try:
            why = identity_mismatch(path, plan.input)
        except OSError as err:
            why = err.strerror or type(err).__name__
        if why:
            bad.append((str(path), "not found there" if why == NOT_FOUND else f"another file there: {why}"))
    return bad
