"""bench/bench_gpu.py runs on CPU at a tiny size, so the GPU benchmark stays runnable (no GPU here to run it on)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_gpu_benchmark_runs_on_cpu_and_prints_its_table():
    cmd = [sys.executable, "bench_gpu.py", "--device", "cpu", "--encoders", "vits", "--precisions", "fp32"]
    cmd += ["--input-size", "28", "--frames", "10", "--repeats", "1"]
    done = subprocess.run(cmd, cwd=ROOT / "bench", capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| vits | fp32 |")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert len(cells) == 10 and float(cells[2]) > 0 and float(cells[5]) > 0 and float(cells[7]) > 0
    assert cells[4] == "-"  # published A100 figures are for input size 518 only


def test_without_a_gpu_it_says_so_in_one_line():
    done = subprocess.run([sys.executable, "bench_gpu.py"], cwd=ROOT / "bench", capture_output=True, text=True)
    if "no CUDA GPU here" not in done.stderr:
        pytest.skip("a CUDA GPU is present")
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
