"""Pools are sized by the CPUs a process may use, not by the CPUs the machine has."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from conftest import ROOT

from vda.system import host_threads, loaded_openblas, one_blas_thread, usable_cpus


@pytest.mark.skipif(not shutil.which("taskset"), reason="needs taskset (util-linux)")
def test_a_cpuset_of_one_cpu_counts_one():
    code = "from vda.system import usable_cpus; print(usable_cpus())"
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


def test_unrestricted_it_is_at_least_one():
    assert usable_cpus() >= 1


def _counts() -> tuple[int, list[int]]:
    return torch.get_num_threads(), [get() for get, _ in loaded_openblas()]


def _set_counts(torch_threads: int, blas: list[int]) -> None:
    torch.set_num_threads(torch_threads)
    for (_, put), count in zip(loaded_openblas(), blas):
        put(count)


@pytest.fixture
def two_threads():
    """Both libraries at 2 threads for the test, and as they were after it."""
    before = _counts()
    _set_counts(2, [2] * len(before[1]))
    yield
    _set_counts(*before)


def test_host_threads_bound_torch_and_numpys_openblas_and_put_them_back(two_threads):
    """Pass 1's threads (issue 22): both libraries at one thread inside, their counts as before after."""
    if "openblas" in np.__config__.CONFIG["Build Dependencies"]["blas"]["name"]:
        assert loaded_openblas(), "numpy is built on OpenBLAS but loaded_openblas found none of its thread calls"
    with host_threads():
        assert _counts() == (1, [1] * len(loaded_openblas()))
        with one_blas_thread():  # nested: the inner exit keeps the outer's bound
            pass
        assert _counts() == (1, [1] * len(loaded_openblas()))
    assert _counts() == (2, [2] * len(loaded_openblas()))


def test_overlapping_holders_in_two_threads_put_the_counts_back_when_the_last_leaves(two_threads):
    """A enters, B enters, A leaves, B leaves: were each to restore what it saw, B would restore A's bound."""
    entered, a_left, b_done = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def b():
        with host_threads():
            entered.set()
            a_left.wait(5)
            seen["b inside after a left"] = _counts()
        b_done.set()

    with host_threads():
        thread = threading.Thread(target=b)
        thread.start()
        assert entered.wait(5)
    a_left.set()
    thread.join(5)
    assert b_done.is_set()
    assert seen["b inside after a left"] == (1, [1] * len(loaded_openblas()))
    assert _counts() == (2, [2] * len(loaded_openblas()))
