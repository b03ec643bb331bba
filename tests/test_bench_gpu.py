"""bench/bench_gpu.py runs on CPU at a tiny size, so the GPU benchmark stays runnable (no GPU here to run it on)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
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


def _bench_gpu(monkeypatch):
    """bench_gpu imported from bench/, with model building stubbed: these tests are about the table's loop."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import bench_gpu

    monkeypatch.setattr(bench_gpu, "synthetic_state", lambda enc: {})
    monkeypatch.setattr(bench_gpu, "load_model", lambda state, encoder, device: object())
    return bench_gpu


def test_a_row_out_of_gpu_memory_reads_oom_and_the_table_goes_on(monkeypatch):
    bench_gpu = _bench_gpu(monkeypatch)
    freed = []

    def measure(model, device, enc, prec, frames, size, modes, repeats):
        if (enc, prec) == ("vitl", "fp32"):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return [enc, prec] + ["1.0"] * 8

    monkeypatch.setattr(bench_gpu, "measure_row", measure)
    monkeypatch.setattr(bench_gpu, "free", lambda device: freed.append(device))
    device = torch.device("cpu")
    seen = []
    encoders, precisions, modes = ["vitl", "vits"], ["fp32", "fp16"], ["window", "stream"]
    rows = bench_gpu.table_rows(device, encoders, precisions, modes, [], 518, 1, on_row=seen.append)
    assert [r[:2] for r in rows] == [["vitl", "fp32"], ["vitl", "fp16"], ["vits", "fp32"], ["vits", "fp16"]]
    assert rows[0] == ["vitl", "fp32", "OOM", "OOM", "67.0 ms, 26.7 GB"] + ["OOM"] * 5
    assert all(c == "1.0" for r in rows[1:] for c in r[2:]) and seen == rows
    assert len(freed) >= 1 + 2  # after the OOM row, and after each encoder


def test_other_failures_propagate_unless_collected(monkeypatch):
    bench_gpu = _bench_gpu(monkeypatch)

    def measure(model, device, enc, prec, frames, size, modes, repeats):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device")

    monkeypatch.setattr(bench_gpu, "measure_row", measure)
    args = (torch.device("cpu"), ["vits"], ["fp16", "bf16"], ["window"], [], 518, 1)
    with pytest.raises(RuntimeError, match="no kernel image"):
        bench_gpu.table_rows(*args)
    errors: list[str] = []
    rows = bench_gpu.table_rows(*args, errors=errors)
    assert [r[2] for r in rows] == ["error", "error"] and len(errors) == 2 and errors[0].startswith("vits fp16: ")
