"""The merge's first pass run ahead while workers compute (`EarlyMerge`), and resumed from its cache: same bits as in
one go."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
from conftest import synthetic_frames, write_video

from vda.core.plan import Plan
from vda.device.serve import work_runs
from vda.io.rundir import RunDir
from vda.merge import merge
from vda.merge.early import EarlyMerge
from vda.merge.first_pass import FirstPass
from vda.merge.render import job_for as _job
from vda.orchestrator.planning import create_plan

# 3 units either way: 100 frames in windows 0-1, 2-3, 4; 80 frames in stream frames 0-35 (segments at 0 and 32),
# 36-71 (36, 68) and 72-79 (72)
FRAMES, UNIT_SIZE = {"window": 100, "stream": 80}, {"window": 2, "stream": 36}


def _cached_units(run: RunDir) -> list:
    try:
        return json.loads(run.first_pass.read_text())["units"]
    except (OSError, ValueError):
        return []


def wait_for(condition, seconds=120) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def outputs(out_dir, n):
    return np.stack([np.load(out_dir / f"depth_{i:06d}.npy") for i in range(n)])


@pytest.fixture(scope="module", params=["window", pytest.param("stream", marks=pytest.mark.slow)])
def runs(request, tmp_path_factory, checkpoint):
    """The same 3-unit run twice: `a` merged in one go, `b` merged after a `EarlyMerge` went through the units stored
    while it watched: unit 0 before it started, unit 1 while it ran, unit 2 only after it stopped.

    A real worker computes `a`; `b`'s units arrive as copies of `a`'s stored files (array, then marker, as a worker
    stores them), so the worker runs once: the early only sees what is stored."""
    mode = request.param
    tmp = tmp_path_factory.mktemp(f"first_pass_{mode}")
    src = write_video(tmp / "v.mp4", synthetic_frames(FRAMES[mode], 64, 48))
    plans, runs = {}, {name: RunDir(tmp / name) for name in ("a", "b")}
    common = dict(checkpoint=str(checkpoint), input_size=28, mode=mode, unit_size=UNIT_SIZE[mode], stream_warmup=4)
    for name, run in runs.items():
        plans[name], _ = create_plan(src, run.path, **common)
    a, b, plan = runs["a"], runs["b"], plans["b"]
    assert work_runs([a.path], "cpu", checkpoint=str(checkpoint)) == 3
    pieces = [plan.pieces(u) for u in plan.units]

    def store(unit: int) -> None:
        for p in pieces[unit]:
            target = b.piece(mode, p)
            target.parent.mkdir(exist_ok=True)
            shutil.copyfile(a.piece(mode, p), target)
            shutil.copyfile(a.piece(mode, p).with_suffix(".done"), target.with_suffix(".done"))

    store(0)
    seen = {}
    # A run folder without a plan is skipped: the early goes on with the others.
    with EarlyMerge([tmp / "not_planned", b.path], poll_s=0.01):
        wait_for(lambda: len(_cached_units(b)) == len(pieces[0]))
        time.sleep(0.5)  # had it gone past unit 0, it would do so now
        seen["after unit 0"] = [e["unit"] for e in _cached_units(b)]
        store(1)
        wait_for(lambda: len(_cached_units(b)) == len(pieces[0]) + len(pieces[1]))
        time.sleep(0.5)
        seen["after unit 1"] = [e["unit"] for e in _cached_units(b)]
    cached = json.loads(b.first_pass.read_text())
    store(2)
    logs = {}
    for name, run in runs.items():
        lines = []
        merge(run.path, tmp / f"out_{name}", "npy", workers=1, log=lines.append)
        logs[name] = lines[-1]
    return tmp, plans, cached, seen, logs


def test_the_follower_stops_at_the_first_piece_not_yet_stored(runs):
    tmp, plans, cached, seen, _ = runs
    plan = plans["b"]
    first, second, _ = (plan.pieces(u) for u in plan.units)
    assert seen == {"after unit 0": first, "after unit 1": first + second}  # nothing beyond what was stored
    assert [e["unit"] for e in cached["units"]] == first + second
    assert cached["run_id"] == plan.run_id and cached["mode"] == plan.settings.mode
    assert not (tmp / "not_planned").exists()


def test_merge_uses_what_the_follower_did_and_gives_the_same_bits(runs):
    tmp, plans, cached, _, logs = runs
    n = plans["a"].frame_count
    total = len(plans["a"].all_pieces())
    assert f"pass 1 had {len(cached['units'])}/{total} units" in logs["b"] and f"pass 1 had 0/{total}" in logs["a"]
    assert np.array_equal(outputs(tmp / "out_a", n), outputs(tmp / "out_b", n))
    a = json.loads(RunDir(tmp / "a").first_pass.read_text())["units"]
    b = json.loads(RunDir(tmp / "b").first_pass.read_text())["units"]
    assert a == b  # every window's scale, shift and range, to the last bit


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda d: "not json",
        lambda d: json.dumps({**d, "run_id": "another-run"}),
        lambda d: json.dumps({**d, "units": d["units"][1:]}),
        lambda d: json.dumps({**d, "schema_version": 99}),
        lambda d: json.dumps({**d, "units": [{"unit": 0}]}),
    ],
    ids=["garbage", "other-run", "gap", "schema", "fields"],
)
def test_a_cache_that_does_not_fit_the_run_is_ignored(runs, corrupt):
    tmp, _, _, _, _ = runs
    plan = Plan.load(tmp / "a")
    path = RunDir(tmp / "a").first_pass
    good = json.loads(path.read_text())
    assert len(FirstPass(_job(plan, tmp / "a", tmp, "npy", False), plan).entries) == len(plan.all_pieces())
    try:
        path.write_text(corrupt(good))
        assert FirstPass(_job(plan, tmp / "a", tmp, "npy", False), plan).entries == []
    finally:
        path.write_text(json.dumps(good))


def test_the_range_comes_from_the_markers_exactly_and_only_the_chain_rows_are_read(runs, tmp_path, monkeypatch):
    """Markers record each row's raw [min, max]: pass 1 reads only the 3 rows the chain needs (none in stream mode)
    and gets every entry to the last bit as from the rows themselves, which is what it does with older markers."""
    from vda.core.align import CHAIN_OUTPUTS
    from vda.merge import first_pass

    tmp, _, _, _, _ = runs
    plan = Plan.load(tmp / "a")
    reads = []
    real = first_pass.load_piece
    monkeypatch.setattr(first_pass, "load_piece", lambda job, w, rows=None: reads.append(rows) or real(job, w, rows))

    def entries(name, strip_rows):
        run_dir = tmp_path / name
        shutil.copytree(tmp / "a", run_dir)
        (run_dir / "first_pass.json").unlink()  # the whole pass, from the first window
        for marker in run_dir.glob("*/*.done") if strip_rows else []:
            doc = json.loads(marker.read_text())
            assert len(doc.pop("rows")) == doc["shape"][0]
            marker.write_text(json.dumps(doc))
        reads.clear()
        first = FirstPass(_job(plan, run_dir, tmp, "npy", False), plan)
        while not first.finished:
            first.step()
        return first.entries

    with_rows = entries("new", strip_rows=False)
    window = plan.settings.mode == "window"
    assert reads == ([CHAIN_OUTPUTS] * len(plan.all_pieces()) if window else [])
    assert (
        entries("old", strip_rows=True) == with_rows == json.loads((tmp / "a" / "first_pass.json").read_text())["units"]
    )
    assert any(rows != CHAIN_OUTPUTS for rows in reads)  # the old markers made it read the rows themselves
