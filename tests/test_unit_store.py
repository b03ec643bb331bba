"""The worker's background store: order, bounded memory, and errors surfacing in the caller."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from conftest import synthetic_frames, write_video

from vda import events
from vda.device.runtime import PRECISIONS
from vda.device.transfer import piece_to_host
from vda.device.worker import DeviceWorker, _store
from vda.errors import StorageError
from vda.io.pieces import UnitStore
from vda.io.rundir import RunDir
from vda.orchestrator.planning import create_plan


def test_jobs_run_in_submission_order_off_the_calling_thread():
    seen, caller = [], threading.get_ident()
    with UnitStore() as store:
        for i in range(20):
            store.submit(lambda i=i: seen.append((i, threading.get_ident())))
    assert [i for i, _ in seen] == list(range(20))
    assert all(t != caller for _, t in seen)


def test_at_most_depth_jobs_wait():
    gate, started = threading.Event(), threading.Event()
    store = UnitStore(depth=2)
    store.submit(lambda: (started.set(), gate.wait()))  # occupies the thread
    started.wait()
    store.submit(lambda: None)
    store.submit(lambda: None)  # the queue is now full
    blocked = threading.Thread(target=store.submit, args=(lambda: None,))
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive()  # a third waiting job blocks the producer: memory stays bounded
    gate.set()
    blocked.join(5)
    assert not blocked.is_alive()
    store.__exit__(None, None, None)


def test_an_error_reraises_at_the_next_submit_and_later_jobs_are_skipped():
    ran = []

    def fail():
        raise OSError(28, "disk full while writing x; free space and run the same command again to resume")

    with pytest.raises(OSError, match="disk full"):
        with UnitStore() as store:
            store.submit(fail)
            for i in range(50):
                store.submit(lambda i=i: ran.append(i))
    assert ran == []  # once a piece failed, nothing later is written: no later piece, and no unit reported done


def test_an_error_in_the_last_job_reraises_at_exit():
    with pytest.raises(ValueError, match="late"):
        with UnitStore() as store:
            store.submit(lambda: (_ for _ in ()).throw(ValueError("late")))


def test_submitted_work_is_flushed_when_the_caller_fails():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with UnitStore() as store:
            store.submit(lambda: done.append(1))
            raise KeyboardInterrupt
    assert done == [1]


@pytest.mark.parametrize(("precision", "dtype"), [("fp32", np.float32), ("bf16", np.float32), ("fp16", np.float16)])
def test_stored_dtype_keeps_every_value_of_its_precision(tmp_path, precision, dtype):
    depth = torch.tensor([[0.5, 70000.0], [1e-3, 3.0]]).to(PRECISIONS[precision]).float()
    _, host, event = piece_to_host(depth, precision)  # on CPU: no copy in flight, so no event
    assert event is None
    _store(tmp_path / "u.npy", host, event, 0.0, 0)
    stored = np.load(tmp_path / "u.npy")
    assert stored.dtype == dtype
    if precision != "fp16":  # fp16 cannot hold 70000; a fp16 model never produces it
        assert np.array_equal(stored, depth.numpy())


def test_a_unit_whose_piece_cannot_be_stored_is_never_reported_done(tmp_path, checkpoint):
    """A real worker, a unit of two windows, and the second window's file name taken by a folder: the first window
    is stored, the error ends the worker (the host hands the unit to another), and no Done claims the unit."""
    src = write_video(tmp_path / "v.mp4", synthetic_frames(40, 32, 24))
    run = RunDir(tmp_path / "run")
    plan, _ = create_plan(src, run.path, checkpoint=str(checkpoint), input_size=28, unit_size=2)
    assert plan.pieces(plan.units[0]) == [0, 1]
    run.piece("window", 1).mkdir(parents=True)
    seen = []
    worker = DeviceWorker("cpu", seen.append, checkpoint=str(checkpoint))
    assign = events.Assign("v", str(run.path), str(src), 0)
    with pytest.raises(StorageError, match=r"\(Is a directory\); choose a folder you can write to"):
        worker.serve([events.encode(assign), events.encode(events.Stop())])
    assert not [m for m in seen if isinstance(m, (events.Done, events.Failed))]
    assert run.is_stored("window", 0) and not run.is_stored("window", 1)
    assert run.unfinished_units(plan) == [plan.units[0]]  # the whole unit is computed again by its next worker
