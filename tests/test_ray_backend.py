"""The Ray backend (issues 15 and 23) on a real multi-node Ray cluster on this machine.

One `ray.cluster_utils.Cluster` for the module: a head node that runs no worker (0 CPUs: the drivers attach to it, so
it must never be removed) and two worker nodes of two CPUs each (an actor's and a merge's), every node with its own
raylet and a small object store, all bound to 127.0.0.1. Each run is a real `vda depth --backend ray --ray-address ...`
subprocess (the driver), with CPU actors placed by Ray, one per node. Every node shares this machine's disk, so the
run and output folders are shared unless hidden: a node that must not see some folders is a node whose worker
processes start in their own mount namespace with a tmpfs over each (or, without the privilege for that, with the
folders hidden from Python's os.stat).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    ROOT,
    TOL,
    one_thread_env,
    process_alive,
    read_output,
    rel_err,
    run_vda,
    single_pass,
    synthetic_frames,
    wait_for,
    write_video,
)

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # read as Ray is imported: every node and driver on 127.0.0.1
ray = pytest.importorskip("ray")  # the `vda[ray]` extra, which `make setup` installs
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = pytest.mark.slow
SIZE = "126"  # network input: small, the cluster is what is tested
MB = 1 << 20
# Node deaths are noticed within seconds (Ray's defaults take about 30 s), yet not so fast that a busy 2-core
# machine makes a live node look dead.
FAST_DEATH = {"health_check_period_ms": 1000, "health_check_timeout_ms": 2000, "health_check_failure_threshold": 4}
# The worker entry point of a node that must not see some folders (HIDDEN): see the module docstring.
BLIND_WORKER = """
import ctypes, os, runpy, sys
HIDDEN, WORKER = {hidden!r}, {worker!r}
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS, MS_REC, MS_PRIVATE = 0x00020000, 0x4000, 0x40000
hidden = (
    libc.unshare(CLONE_NEWNS) == 0
    and libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) == 0
    and all(libc.mount(b"tmpfs", h.encode(), b"tmpfs", 0, None) == 0 for h in HIDDEN)
)
if not hidden:
    real_stat = os.stat
    def stat(path, *args, **kwargs):
        if isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(tuple(HIDDEN)):
            raise FileNotFoundError(2, "No such file or directory", os.fspath(path))
        return real_stat(path, *args, **kwargs)
    os.stat = stat
sys.argv[0] = WORKER
runpy.run_path(WORKER, run_name="__main__")
"""


def add_worker_node(cluster, **kwargs):
    """A worker node: a CPU for an actor and one for a merge beside it."""
    return cluster.add_node(num_cpus=2, object_store_memory=200 * MB, **kwargs)


@pytest.fixture(scope="module")
def cluster():
    """Head (no CPU) + two worker nodes of two CPUs; the worker processes import vda from this checkout."""
    saved = {"PYTHONPATH": os.environ.get("PYTHONPATH")}
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), saved["PYTHONPATH"]) if p)
    head = {"num_cpus": 0, "object_store_memory": 300 * MB, "_system_config": FAST_DEATH}
    c = Cluster(initialize_head=True, head_node_args=head)
    try:
        for _ in range(2):
            add_worker_node(c)
        c.wait_for_nodes()
        yield c
    finally:
        c.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module", autouse=True)
def node_cache(checkpoint):
    """The nodes' weights cache of the test checkpoint (all nodes here share one /tmp): empty at the start, so that
    the first run fetches the weights from the object store, and removed at the end."""
    from vda.files import file_sha256

    cached = Path(tempfile.gettempdir()) / f"vda-ray-{os.getuid()}" / f"{file_sha256(checkpoint)}.pth"
    cached.unlink(missing_ok=True)
    yield cached
    cached.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clips")
    return [
        write_video(tmp / "a.mp4", synthetic_frames(70, 64, 48, seed=1)),
        write_video(tmp / "b.mp4", synthetic_frames(50, 48, 64, seed=2)),
    ]


def depth_args(inputs, out, checkpoint, cluster, *flags) -> list[str]:
    """`vda depth` on the test cluster's CPU nodes, a unit per window."""
    args = ["depth", *map(str, inputs), "-o", str(out), "--backend", "ray", "--ray-address", cluster.address]
    args += ["--checkpoint", str(checkpoint), "--input-size", SIZE, "--format", "npy", "--devices", "cpu,cpu"]
    return [*args, "--unit-size", "1", *flags]


def depth_cmd(inputs, out, checkpoint, cluster, *flags) -> list[str]:
    return [sys.executable, "-m", "vda", *depth_args(inputs, out, checkpoint, cluster, *flags)]


def depth(inputs, out, checkpoint, cluster, *flags, check=True, **extra) -> subprocess.CompletedProcess:
    return run_vda(*depth_args(inputs, out, checkpoint, cluster, *flags), env=extra, timeout=300, check=check)


def results(run: Path) -> dict:
    return json.loads((run / "processing_results.json").read_text())


def worker_nodes(cluster) -> dict[str, object]:
    return {node.node_id: node for node in cluster.worker_nodes}


def actor_pids(run: Path) -> set[int]:
    """The actors' process ids, from the line each worker log starts with."""
    pids = set()
    for log in (run / "logs").glob("worker_*.log"):
        pids.update(int(p) for p in re.findall(r"started on Ray node \w+ \([^)]*\), pid (\d+)", log.read_text()))
    return pids


def stored(run: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in run.glob("**/windows/*.npy") if p.with_suffix(".done").is_file()}


@pytest.fixture(scope="module")
def reference(clips, model) -> dict[str, np.ndarray]:
    """Each clip's single pass, the result every split must equal (one torch thread: two fight over 2 cores)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {src.stem: single_pass(model, src, int(SIZE)) for src in clips}
    finally:
        torch.set_num_threads(threads)


def same_as_single_pass(out: Path, reference: dict[str, np.ndarray]) -> None:
    for name, ref in reference.items():
        assert rel_err(read_output(out / name), ref) <= TOL


def driver_received(said: str) -> tuple[int, int]:
    """(bytes of pieces, bytes of messages) the driver says it fetched from the actors' streams."""
    found = re.search(r"the driver received (\d+) bytes of pieces and (\d+) bytes of messages", said)
    assert found, said
    return int(found.group(1)), int(found.group(2))


def per_node_line(said: str) -> dict[str, tuple[int, int]]:
    """The final `vda: ray: per node:` line, as {short node id or "driver": (units, merges)}."""
    line = re.search(r"vda: ray: per node: (.*)", said).group(1)
    return {k: (int(u), int(m)) for k, u, m in re.findall(r"(\w{6,8}) (\d+) units?, (\d+) merges?", line)}


def recorded_per_node(record: dict) -> dict[str, tuple[int, int]]:
    """What processing_results.json says each node did, counted as the per-node line counts it."""
    units = Counter(u["nodes"][-1][:8] for u in record["units"] if u["status"] == "done")
    merges = Counter(v["merge_node"][:8] for v in record["videos"])
    return {n: (units[n], merges[n]) for n in {*units, *merges}}


# -- the tests --------------------------------------------------------------------------------------------------------
def test_with_a_shared_folder_nodes_store_their_pieces_and_merge(
    tmp_path, clips, checkpoint, cluster, reference, node_cache
):
    """Every node shares the run and output folders (one disk): the actors store their own pieces, the driver gets
    only messages, and each video's merge runs on a worker node, one on each."""
    out = tmp_path / "out"
    done = depth(clips, out, checkpoint, cluster)
    same_as_single_pass(out, reference)
    record = results(out / "_run")
    units, nodes = record["units"], set(worker_nodes(cluster))
    assert all(u["status"] == "done" and len(u["nodes"]) == u["attempts"] == 1 for u in units)
    assert {u["nodes"][0] for u in units} == nodes  # both nodes computed units, each recorded by its Ray node id
    assert all(u["stored_by"] == u["nodes"][0] for u in units)  # each by the node that computed it
    pieces, messages = driver_received(done.stderr)
    assert pieces == 0 and 0 < messages < 1024 * len(units), done.stderr  # a unit is one window here
    assert {v["merge_node"] for v in record["videos"]} == nodes  # one merge on each node
    for video in record["videos"]:
        log = Path(video["run_dir"], "logs", "merge.log").read_text()
        assert log.count("merge started on Ray node") == 1 and f"finished on Ray node {video['merge_node']}" in log
    assert per_node_line(done.stderr) == recorded_per_node(record)
    who = [line for line in done.stderr.splitlines() if line.startswith("vda: ray: node(s) ")]
    assert len(who) == 1 and "cannot see" not in who[0] and "merges run on node(s)" in who[0], done.stderr
    assert all(n[:8] in who[0] for n in nodes)
    bar = [line for line in done.stderr.splitlines() if " | per node: " in line][-1]  # the live bar, at its end
    counts = {n[:8]: sum(u["nodes"][0] == n for u in units) for n in nodes}
    assert dict((k, int(n)) for k, n in re.findall(r"(\w{8}) (\d+)", bar.split(" | per node: ")[1])) == counts
    for video in record["videos"]:  # array and marker, as a worker stores them
        windows = sorted(Path(video["run_dir"], "windows").glob("win_*.npy"))
        assert windows and all(w.with_suffix(".done").is_file() for w in windows)
    # The actors loaded the weights from the node-local cache, which the object store filled (not the driver's file).
    logs = [log.read_text() for log in (out / "_run" / "logs").glob("worker_*.log")]
    assert len(logs) == 2 and all(f"checkpoint {node_cache} (" in log for log in logs)
    assert any("fetched from the object store" in log for log in logs)
    assert actors_gone(out / "_run", 15)


@pytest.fixture(scope="class")
def blind(tmp_path_factory, cluster):
    """A third worker node (one CPU) that sees neither folder `inputs` nor folder `outputs`; removed after the class."""
    tmp = tmp_path_factory.mktemp("blind")
    folders = {"inputs": tmp / "inputs", "outputs": tmp / "outputs"}
    for folder in folders.values():
        folder.mkdir()
    wrapper = tmp / "blind_worker.py"
    default = Path(ray.__file__).parent / "_private" / "workers" / "default_worker.py"
    wrapper.write_text(BLIND_WORKER.format(hidden=[str(f) for f in folders.values()], worker=str(default)))
    node = cluster.add_node(num_cpus=1, object_store_memory=100 * MB, worker_path=str(wrapper))
    try:
        cluster.wait_for_nodes()
        yield node, folders
    finally:
        cluster.remove_node(node)


class TestANodeThatCannotSeeAFolder:
    def test_an_input_it_cannot_read_is_refused_before_any_work(self, tmp_path, clips, checkpoint, cluster, blind):
        node, folders = blind
        clip = folders["inputs"] / "c.mp4"
        clip.write_bytes(clips[1].read_bytes())
        out = tmp_path / "out"
        done = depth([clips[0], clip], out, checkpoint, cluster, check=False)
        assert done.returncode == 2, done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("vda: error:")]
        assert len(errors) == 1, done.stderr
        assert errors[0].startswith(f"vda: error: Ray node {node.node_id[:8]} (127.0.0.1) cannot read input {clip} ")
        assert "(not found there)" in errors[0]
        assert not list((out / "_run").glob("**/windows/*")) and not actor_pids(out / "_run")  # no work, no actor

    def test_without_the_run_folder_its_pieces_go_through_the_driver(
        self, clips, checkpoint, cluster, blind, reference
    ):
        """Its actor sends its pieces to the driver, which stores them; the other nodes store theirs and merge."""
        node, folders = blind
        out = folders["outputs"] / "out"
        done = depth(clips, out, checkpoint, cluster, "--devices", "cpu,cpu,cpu")
        same_as_single_pass(out, reference)
        record = results(out / "_run")
        units = record["units"]
        assert node.node_id in {u["nodes"][0] for u in units}, "the blind node ran no actor"
        for u in units:
            assert u["stored_by"] == ("driver" if u["nodes"][0] == node.node_id else u["nodes"][0])
        pieces, _ = driver_received(done.stderr)
        assert pieces > 0
        merged = {v["merge_node"] for v in record["videos"]}
        assert merged <= set(worker_nodes(cluster)) - {node.node_id} and len(merged) == 2
        who = [line for line in done.stderr.splitlines() if line.startswith("vda: ray: node(s) ")]
        assert (
            len(who) == 1 and f"node(s) {node.node_id[:8]} cannot see it there and send theirs to the driver" in who[0]
        )
        assert per_node_line(done.stderr) == recorded_per_node(record)


def interrupt(cmd: list[str], run: Path, sig: int, log: Path) -> tuple[int, str]:
    """Start a driver, send it `sig` once it has stored one more piece, and return its exit code and output."""
    before = len(stored(run))
    with open(log, "w+") as err:
        driver = subprocess.Popen(cmd, cwd=ROOT, env=one_thread_env(VDA_WORKER_DELAY="0:1"), stdout=err, stderr=err)
        assert wait_for(lambda: len(stored(run)) > before, 120)
        driver.send_signal(sig)
        code = driver.wait(60)
        err.seek(0)
        return code, err.read()


def actors_gone(run: Path, timeout: float) -> bool:
    """Whether every actor a run's logs name has ended (within `timeout`)."""
    pids = actor_pids(run)
    return bool(pids) and wait_for(lambda: not any(process_alive(p) for p in pids), timeout)


def test_a_stopped_driver_leaves_no_actor_and_the_same_command_resumes(tmp_path, clips, checkpoint, cluster, reference):
    out = tmp_path / "out"
    run = out / "_run"
    cmd = depth_cmd(clips, out, checkpoint, cluster)
    code, said = interrupt(cmd, run, signal.SIGINT, tmp_path / "ctrl_c.log")  # Ctrl-C
    assert code == 130 and "interrupted; every worker was stopped" in said, said
    assert actors_gone(run, 30), said
    code, said = interrupt(cmd, run, signal.SIGKILL, tmp_path / "kill.log")  # kill -9: no cleanup of any kind
    assert actors_gone(run, 30), said  # Ray ends the actors of a driver that is gone
    kept = stored(run)
    assert kept
    depth(clips, out, checkpoint, cluster)
    assert {p: m for p, m in stored(run).items() if p in kept} == kept  # reused, not recomputed
    same_as_single_pass(out, reference)


def lose_a_node(tmp_path, cluster, cmd, env: dict, ready, log: Path, said: str) -> tuple[str, int, str]:
    """Start a driver; once `ready()`, remove (kill) the node whose id follows `said` in `log`. Returns that node's
    id, the driver's exit code and its output; the cluster has two worker nodes again afterwards."""
    try:
        with open(tmp_path / "driver.err", "w+") as err:
            driver = subprocess.Popen(cmd, cwd=ROOT, env=one_thread_env(**env), stderr=err)
            assert wait_for(ready, 180)
            victim = re.search(rf"{said} Ray node (\w+)", log.read_text()).group(1)
            cluster.remove_node(worker_nodes(cluster)[victim], allow_graceful=False)
            code = driver.wait(180)
            err.seek(0)
            return victim, code, err.read()
    finally:  # for whatever runs next
        if len(cluster.worker_nodes) < 2:
            add_worker_node(cluster)


def test_a_node_lost_mid_run_costs_only_its_units_in_flight(tmp_path, clips, checkpoint, cluster, reference):
    """Slot 1 sleeps 3 s at the start of each unit (VDA_WORKER_DELAY); its node is removed (raylet and workers
    killed) while it holds a unit it began. That unit is redone on the other node; the output is the same."""
    out = tmp_path / "out"
    run = out / "_run"
    log = run / "logs" / "worker_1.log"

    def begun() -> bool:
        text = log.read_text() if log.exists() else ""
        return "started on Ray node" in text and text.count('"kind": "ready"') >= 2

    cmd = depth_cmd(clips, out, checkpoint, cluster)
    victim, code, said = lose_a_node(tmp_path, cluster, cmd, {"VDA_WORKER_DELAY": "1:3"}, begun, log, "started on")
    assert code == 0, said
    same_as_single_pass(out, reference)
    record = results(run)
    assert all(u["status"] == "done" for u in record["units"])
    redone = [u for u in record["units"] if u["attempts"] == 2]
    assert len(redone) == 1 and redone[0]["nodes"][0] == victim and redone[0]["nodes"][1] != victim, redone
    assert re.search(rf"exit 137: .*node {victim[:8]} \(127\.0\.0\.1\) (was lost|cannot be reached)", said), said
    assert 137 in record["devices"][1]["exit_codes"]


def test_a_node_lost_during_a_merge_costs_only_that_merge(tmp_path, clips, checkpoint, cluster, reference):
    """Each merge waits 4 s on its node (VDA_MERGE_DELAY) before it starts. Once every unit is stored and the last
    video's merge has started, its node is removed: that merge runs again on the other node, and nothing else runs
    twice. Its output is the single pass, and bit for bit what a merge on the driver gives."""
    out = tmp_path / "out"
    run = out / "_run"
    log = run / "b" / "logs" / "merge.log"

    def merging() -> bool:
        try:
            units = results(run)["units"]
        except (OSError, ValueError):
            return False
        return all(u["status"] == "done" for u in units) and log.exists() and "merge started on" in log.read_text()

    cmd = depth_cmd(clips, out, checkpoint, cluster)
    victim, code, said = lose_a_node(tmp_path, cluster, cmd, {"VDA_MERGE_DELAY": "4"}, merging, log, "merge started on")
    assert code == 0, said
    same_as_single_pass(out, reference)
    record = results(run)
    assert all(u["attempts"] == 1 for u in record["units"])  # no unit ran twice
    starts = re.findall(r"merge started on Ray node (\w+)", log.read_text())
    assert len(starts) == 2 and starts[0] == victim and starts[1] != victim, log.read_text()
    videos = {v["name"]: v for v in record["videos"]}
    assert videos["b"]["merge_node"] == starts[1]
    assert (run / "a" / "logs" / "merge.log").read_text().count("merge started") == 1  # the other merge: once
    run_vda("merge", run / "b", "-o", tmp_path / "again", "--format", "npy")
    assert np.array_equal(read_output(out / "b"), read_output(tmp_path / "again"))


def test_roles_and_the_lines_that_say_them():
    """Pure: which nodes store and merge, from the folders each shares, and the lines that say so."""
    from vda.orchestrator.backends.ray.backend import per_node_text
    from vda.orchestrator.backends.ray.nodes import roles

    run, out = Path("/data/out/_run"), Path("/data/out")
    a, b, c = "a" * 56, "b" * 56, "c" * 56
    seen = roles({a: {str(run), str(out)}, b: {str(run)}, c: set()}, run, out)
    assert seen.store == {a, b} and seen.merge == (a,) and seen.through_driver == (c,)
    assert seen.line(run, out) == (
        f"vda: ray: node(s) aaaaaaaa, bbbbbbbb store their own pieces in {run}; node(s) cccccccc cannot see it there "
        "and send theirs to the driver; merges run on node(s) aaaaaaaa"
    )
    assert roles({a: {str(run)}}, run, None).line(run, None).endswith("merges run on the driver (no output folder was "
                                                                     "named to check)")  # fmt: skip
    assert per_node_text({a: (3, 0), "driver": (0, 2), b: (5, 1)}) == (
        "bbbbbbbb 5 units, 1 merge; aaaaaaaa 3 units, 0 merges; driver 0 units, 2 merges"
    )
