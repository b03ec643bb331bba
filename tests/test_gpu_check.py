"""bench/gpu_check.py (`make gpu-check`) runs every step's code on CPU, so a GPU host's first run is not its first run.

No GPU is available where these tests run: the smoke path (`--device cpu`) compares cpu with cpu, which is trivially
equal, but the video, the model, `vda depth` with two worker processes, the comparison, the table and the record all
run for real, and the figures asserted on are parsed from the script's own output.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

import pytest
import torch
from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402  (bench/ is a folder of scripts, not a package)


def smoke(tmp_path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The CPU smoke run as `make gpu-check` runs the script (from bench/), with its temporary folder in tmp_path."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    cmd = [sys.executable, "gpu_check.py", "--device", "cpu", *args]
    return subprocess.run(cmd, cwd=ROOT / "bench", capture_output=True, text=True, timeout=timeout, env=env)


def leftovers(folder) -> list:
    """What gpu_check.py left in the temporary folder (torch keeps its own compile cache there: not ours)."""
    return [p.name for p in folder.iterdir() if not p.name.startswith("torchinductor_")]


def figure(out: str, step: str) -> float:
    """The relative max error of a PASS line: `gpu-check: <step>: PASS relative max error 1.2e-07 ...`."""
    found = re.findall(rf"^gpu-check: {step}: PASS relative max error (\S+) ", out, re.M)
    assert len(found) == 1, out
    return float(found[0])


@pytest.mark.slow
def test_cpu_smoke_run_passes_every_step_and_runs_twice(tmp_path):
    results = tmp_path / "RESULTS.md"
    work = tmp_path / "tmp"
    work.mkdir()
    done = smoke(work, "--record", "--results", str(results))
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert figure(out, "parity") <= 1e-4
    assert figure(out, "depth-local") <= 1e-4
    assert "--devices cpu,cpu" in out
    assert len(re.findall(r"^gpu-check: depth-docker: SKIP \S.*$", out, re.M)) == 1
    rows = [line for line in out.splitlines() if line.startswith("| vits | fp32 |")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert len(cells) == 10 and float(cells[2]) > 0 and float(cells[5]) > 0 and float(cells[7]) > 0
    assert not re.search(r"^gpu-check: \S+: FAIL", out, re.M)
    assert out.splitlines()[-1].startswith("gpu-check: PASS")
    assert leftovers(work) == []  # the temporary folder is gone, nothing left behind
    text = results.read_text()
    assert text.count("## gpu_check.py") == 1 and "| parity | PASS |" in text and "| depth-local | PASS |" in text
    assert "| vits | fp32 |" in text

    again = smoke(work, "--steps", "depth-local")  # a second run on the same machine: fresh folders, same result
    assert again.returncode == 0, again.stdout + again.stderr
    assert figure(again.stdout, "depth-local") <= 1e-4
    assert "table" not in again.stdout and leftovers(work) == []


@pytest.mark.slow
def test_a_failed_step_prints_one_line_and_the_others_go_on(tmp_path, monkeypatch, capsys):
    """`vda depth` stopped by --timeout: one FAIL line for that step, the next step still runs, exit code 1."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    code = gpu_check.main(
        ["--device", "cpu", "--steps", "depth-local", "table", "--timeout", "0.5", "--modes", "stream"]
    )
    out = capsys.readouterr().out
    assert code == 1
    step_lines = re.findall(r"^gpu-check: depth-local: .*$", out, re.M)
    assert len(step_lines) == 1 and step_lines[0].startswith("gpu-check: depth-local: FAIL TimeoutError: vda depth")
    assert re.search(r"^gpu-check: table: PASS", out, re.M)
    assert re.search(r"^  depth-local +FAIL ", out, re.M) and out.splitlines()[-1].startswith("gpu-check: FAIL")
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_the_worker_path_is_timed_per_window_as_one_table(tmp_path, monkeypatch, capsys):
    """`vda work` on a tiny x264 file on CPU: the worker's own stage times, read back and printed as one table (GPU
    time reads "-": no CUDA events on a CPU)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert gpu_check.main(["--device", "cpu", "--steps", "worker-path"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    for stage in (*gpu_check.STAGES, "total"):
        ms = float(rows[stage].split("|")[2])
        assert ms >= 0 and (stage not in ("compute", "total") or ms > 0), rows[stage]
    assert rows["gpu"].split("|")[2].strip() == "-"
    (line,) = re.findall(r"^gpu-check: worker-path: PASS .*$", out, re.M)
    assert line.startswith("gpu-check: worker-path: PASS 2 windows of 64x48 x264 timed in `vda work`")
    assert leftovers(tmp_path) == []


def test_without_a_gpu_it_says_so_in_one_line():
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    done = subprocess.run([sys.executable, "gpu_check.py"], cwd=ROOT / "bench", capture_output=True, text=True)
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no CUDA GPU is visible")


class FakeDocker:
    """`docker info` / `docker image inspect` answers, as subprocess.run would give them."""

    def __init__(self, info_rc: int = 0, runtimes: str = '{"runc":{"path":"runc"}}', image_rc: int = 0):
        self.info_rc, self.runtimes, self.image_rc = info_rc, runtimes, image_rc

    def __call__(self, cmd, **kw) -> subprocess.CompletedProcess:
        if cmd[:2] == ["docker", "info"]:
            return subprocess.CompletedProcess(cmd, self.info_rc, self.runtimes, "Cannot connect to the Docker daemon")
        return subprocess.CompletedProcess(cmd, self.image_rc, "", "No such image")


NVIDIA = '{"nvidia":{"path":"nvidia-container-runtime"},"runc":{"path":"runc"}}'


@pytest.mark.parametrize(
    ("which", "docker", "expected"),
    [
        (lambda name: None, FakeDocker(), "no docker command"),
        (lambda name: "/usr/bin/docker", FakeDocker(info_rc=1), "not reachable (Cannot connect to the Docker daemon)"),
        (lambda name: "/usr/bin/docker", FakeDocker(), "no nvidia runtime"),
        (lambda name: "/usr/bin/docker", FakeDocker(runtimes=NVIDIA, image_rc=1), "image vda:latest not found"),
        (lambda name: "/usr/bin/docker", FakeDocker(runtimes=NVIDIA), None),
    ],
)
def test_docker_check_says_why_it_is_skipped(which, docker, expected):
    why = gpu_check.docker_skip_reason("vda:latest", run=docker, which=which)
    assert why is None if expected is None else expected in why


def test_a_raising_step_is_one_fail_line_and_the_run_goes_on(capsys):
    report = gpu_check.Report()

    def broken() -> None:
        raise RuntimeError("no kernel image is available\nfor execution on the device")

    assert report.run("parity", broken) is None
    report.run("table", lambda: report.add("table", "PASS", "1 row(s) measured"))
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "gpu-check: parity: FAIL RuntimeError: no kernel image is available",
        "gpu-check: table: PASS 1 row(s) measured",
    ]
    assert report.failed and report.summary()[-1] == "gpu-check: FAIL (1 check(s) failed)"
