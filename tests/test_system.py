"""Pools are sized by the CPUs a process may use, not by the CPUs the machine has."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import ROOT

from vda.system import usable_cpus


@pytest.mark.skipif(not shutil.which("taskset"), reason="needs taskset (util-linux)")
def test_a_cpuset_of_one_cpu_counts_one():
    code = "from vda.system import usable_cpus; print(usable_cpus())"
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


def test_unrestricted_it_is_at_least_one():
    assert usable_cpus() >= 1
