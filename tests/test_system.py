"""Pools are sized by the CPUs a process may use, not by the CPUs the machine has."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT

from vda.system import host_threads, loaded_openblas, usable_cpus


@pytest.mark.skipif(not shutil.which("taskset"), reason="needs taskset (util-linux)")
def test_a_cpuset_of_one_cpu_counts_one():
    code = "from vda.system import usable_cpus; print(usable_cpus())"
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


def test_unrestricted_it_is_at_least_one():
    assert usable_cpus() >= 1


def test_host_threads_bound_torch_and_numpys_openblas_and_put_them_back():
    """Pass 1's threads (issue 22): both libraries at one thread inside, their counts as before after."""
    blas = loaded_openblas()
    if "openblas" in np.__config__.CONFIG["Build Dependencies"]["blas"]["name"]:
        assert blas, "numpy is built on OpenBLAS but loaded_openblas found none of its thread calls"
    torch.set_num_threads(2)
    for _, put in blas:
        put(2)
    with host_threads():
        assert torch.get_num_threads() == 1 and all(get() == 1 for get, _ in blas)
    assert torch.get_num_threads() == 2 and all(get() == 2 for get, _ in blas)
