"""The merge's first pass run ahead while workers compute, and resumed from its cache: same bits as in one go."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from conftest import synthetic_frames, write_video

from orchestrator.planning import create_plan
from vda.merge import FIRST_PASS_NAME, FirstPass, _job, follow, merge
from vda.plan import Plan
from vda.worker import run_chunk, units_of


def _cached_units(run_dir) -> list:
    try:
        return json.loads((run_dir / FIRST_PASS_NAME).read_text())["units"]
    except (OSError, ValueError):
        return []


def outputs(out_dir, n):
    return np.stack([np.load(out_dir / f"depth_{i:06d}.npy") for i in range(n)])


@pytest.fixture(scope="module", params=["window", "stream"])
def runs(request, tmp_path_factory, checkpoint):
    """The same 3-chunk run twice: `a` merged in one go, `b` merged after `follow` saw only chunk 0."""
    tmp = tmp_path_factory.mktemp(f"first_pass_{request.param}")
    src = write_video(tmp / "v.mp4", synthetic_frames(100, 64, 48))
    done = {}
    for name in ("a", "b"):
        plan, _ = create_plan(
            src, tmp / name, ["cpu"] * 3, checkpoint=str(checkpoint), input_size=56, mode=request.param
        )
        run_chunk(tmp / name, 0, checkpoint=str(checkpoint))
        done[name] = plan
    stop = threading.Event()
    follower = threading.Thread(target=follow, args=(tmp / "b", stop, 0.01))
    follower.start()
    chunk0 = len(units_of(done["b"], 0))
    deadline = time.time() + 120
    while time.time() < deadline and len(_cached_units(tmp / "b")) < chunk0:
        time.sleep(0.05)
    time.sleep(0.5)  # had it gone past chunk 0, it would do so now
    assert follower.is_alive()  # waiting for chunk 1's first unit, not finished
    stop.set()
    follower.join()
    cached = json.loads((tmp / "b" / FIRST_PASS_NAME).read_text())
    for name in ("a", "b"):
        for k in (1, 2):
            run_chunk(tmp / name, k, checkpoint=str(checkpoint))
    logs = {}
    for name in ("a", "b"):
        lines = []
        merge(tmp / name, tmp / f"out_{name}", "npy", workers=1, log=lines.append)
        logs[name] = lines[-1]
    return tmp, done, cached, logs


def test_follow_stops_at_the_first_unit_not_yet_stored(runs):
    tmp, plans, cached, _ = runs
    plan = plans["b"]
    chunk0 = plan.chunks[0].units
    units = sorted(u for u in FirstPass(_job(plan, tmp / "b", tmp, "npy", False), plan).units if u < chunk0[1])
    assert [e["unit"] for e in cached["units"]] == units  # all of chunk 0, nothing beyond
    assert cached["run_id"] == plan.run_id and cached["mode"] == plan.settings.mode


def test_merge_uses_what_follow_did_and_gives_the_same_bits(runs):
    tmp, plans, cached, logs = runs
    n = plans["a"].frame_count
    assert f"pass 1 had {len(cached['units'])}/" in logs["b"] and "pass 1 had 0/" in logs["a"]
    assert np.array_equal(outputs(tmp / "out_a", n), outputs(tmp / "out_b", n))
    a = json.loads((tmp / "a" / FIRST_PASS_NAME).read_text())["units"]
    b = json.loads((tmp / "b" / FIRST_PASS_NAME).read_text())["units"]
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
    tmp, plans, _, _ = runs
    plan = Plan.load(tmp / "a")
    path = tmp / "a" / FIRST_PASS_NAME
    good = json.loads(path.read_text())
    try:
        path.write_text(corrupt(good))
        assert FirstPass(_job(plan, tmp / "a", tmp, "npy", False), plan).entries == []
    finally:
        path.write_text(json.dumps(good))
