"""bench/gpu_check.py (`make gpu-check`) runs every section's code on CPU, so a GPU host's first run is not its first.

No GPU is available where these tests run: `--device cpu --quick` compares cpu with cpu, which is trivially equal,
but the video, the models, `vda depth` with two worker processes, the injected fault and its fp32 recompute, the
timings, the summary table and the JSON all run for real, and what is asserted is read from the script's own output.
The offline route (Makefile) is checked by make's dry run: no torch is ever installed, only what the check needs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402  (bench/ is a folder of scripts, not a package)
import gpu_sections  # noqa: E402

# What a GPU host may lack: the check's paths must not import them (PyAV is checked separately: video needs it).
ABSENT = ("isal", "docker", "huggingface_hub", "ray")


def run_check(tmp_path, *args: str, absent: tuple[str, ...] = ()) -> tuple[subprocess.CompletedProcess, dict]:
    """The script as `make gpu-check` runs it (from bench/), quick on CPU, with `absent` modules made unimportable
    in it and in every process it starts (a sitecustomize on PYTHONPATH); (the run, its JSON)."""
    block = tmp_path / "block"
    block.mkdir(exist_ok=True)
    (block / "sitecustomize.py").write_text(
        textwrap.dedent(f"""
        import sys
        for name in {absent!r}:
            sys.modules[name] = None  # import raises ImportError, as where the package is not installed
        """)
    )
    path = os.pathsep.join([str(block), str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": path}
    out = tmp_path / "out"
    cmd = [sys.executable, "gpu_check.py", "--device", "cpu", "--quick", "--out", str(out), *args]
    done = subprocess.run(cmd, cwd=ROOT / "bench", capture_output=True, text=True, timeout=900, env=env)
    doc = json.loads((out / "gpu-check.json").read_text()) if (out / "gpu-check.json").exists() else {}
    return done, doc


def table(stdout: str) -> list[list[str]]:
    """The summary table's rows (section, check, status, result): the lines after `gpu-check: summary`."""
    lines = stdout.split("gpu-check: summary\n", 1)[1].splitlines()
    assert lines[:2] == ["| section | check | status | result |", "|---|---|---|---|"]
    return [[c.strip() for c in line.strip("|").split("|", 3)] for line in lines[2:] if line.startswith("| ")]


def leftovers(folder) -> list:
    """The script's work folders left in the temporary folder (other programs may keep files of their own there)."""
    return [p.name for p in folder.iterdir() if p.name.startswith("vda-gpu-check-")]


@pytest.mark.slow
def test_every_section_runs_on_cpu_and_ends_with_one_table_and_the_json(tmp_path):
    """The whole check, quick on CPU, without isal, docker, huggingface_hub and ray; compile is skipped by the budget
    guard (inductor on a loaded two-core CPU takes minutes), which the table and the JSON record."""
    done, doc = run_check(tmp_path, absent=ABSENT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = table(done.stdout)
    assert [r[0] for r in rows] == sorted((r[0] for r in rows), key=gpu_sections.SECTIONS.index)  # in order
    status = {(r[0], r[1]): r[2] for r in rows}
    for key in [("parity", "fp32"), ("depth", "fp32"), ("depth", "bf16"), ("fault", "bf16")]:
        assert status[key] == "PASS", rows
    assert {r[0] for r in rows if r[2] == "INFO"} >= {"env", "throughput", "stream", "worker-path"}
    assert status[("compile", "compile")] == "SKIP" and status[("onnx", "runtime")] == "SKIP"
    assert "SYNTHETIC vits" in dict(((r[0], r[1]), r[3]) for r in rows)[("env", "weights")]
    assert done.stdout.splitlines()[-1].startswith("gpu-check: PASS")
    assert doc["finished"] and doc["failed"] == 0 and list(doc["sections"]) == list(gpu_sections.SECTIONS)
    assert "budget" in doc["sections"]["compile"]["skipped"]
    figures = {(c["section"], c["check"]): c["figures"] for c in doc["checks"]}
    assert figures[("depth", "fp32")]["rel_err"] <= 1e-4 and figures[("fault", "bf16")]["recomputed"] == [0]
    assert figures[("throughput", "vits fp32 mb4")]["fps"] > 0 and figures[("worker-path", "vits")]["ms"]["compute"]
    log = (tmp_path / "out" / "gpu-check.log").read_text()
    assert "gpu-check: summary" in log and (tmp_path / "out" / "logs" / "depth-fp32.log").exists()
    assert leftovers(tmp_path) == []


def test_without_pyav_the_sections_that_need_no_video_run(tmp_path):
    """vda imports without PyAV (its plan types are pure), so the environment section runs on a host without it."""
    done, doc = run_check(tmp_path, "--sections", "env", absent=("av",))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert list(doc["sections"]) == ["env"] and "PASS" in done.stdout


def test_a_section_past_the_budget_is_skipped_and_recorded(tmp_path, capsys):
    code = gpu_check.main(["--device", "cpu", "--quick", "--out", str(tmp_path), "--budget", "3"])
    out = capsys.readouterr().out
    assert code == 0
    rows = table(out)
    assert ["env", "device", "INFO"] == rows[0][:3]  # env's 2 s fits in 3 s; parity's 8 s does not
    skipped = [r[0] for r in rows if r[2] == "SKIP" and "of the 3 s budget" in r[3]]
    assert skipped == [s for s in gpu_sections.SECTIONS if gpu_sections.EXPECTED[s][1] > 2]
    assert {"parity", "depth", "throughput", "compile"} <= set(skipped) and "onnx" not in skipped  # 1 s fits
    doc = json.loads((tmp_path / "gpu-check.json").read_text())
    assert doc["finished"] and all(doc["sections"][s]["skipped"] for s in skipped)


def test_without_a_gpu_it_says_so_in_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    cmd = [sys.executable, "gpu_check.py", "--out", str(tmp_path)]
    done = subprocess.run(cmd, cwd=ROOT / "bench", capture_output=True, text=True)
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no CUDA GPU is visible")


def make_dry_run(*args: str) -> str:
    done = subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.replace("\\\n", " ")  # a recipe line continued on the next


def test_gpu_check_with_a_given_python_never_installs_torch():
    """PY given: no `make setup` (which installs torch), a --system-site-packages venv from PY, vda with --no-deps."""
    script = make_dry_run("gpu-check", "PY=/opt/cluster/bin/python3")
    assert "torch==" not in script and not re.search(r"pip install[^\n]*torch", script)
    assert "import torch, numpy, cv2" in script  # only the check that PY has them
    assert "/opt/cluster/bin/python3 -m venv --system-site-packages" in script
    assert "--no-deps -e ." in script and "--no-index" not in script


def test_gpu_check_with_wheels_installs_offline_from_them_only():
    script = make_dry_run("gpu-check", "PY=/opt/cluster/bin/python3", "WHEELS=gpu-wheels")
    installs = [line for line in script.splitlines() if " pip install " in line]
    assert len(installs) == 2 and all('--no-index --find-links "gpu-wheels"' in line for line in installs)
    assert not re.search(r"\btorch\b", " ".join(installs))


def test_the_wheel_list_is_what_the_check_needs_and_never_torch():
    script = make_dry_run("gpu-wheels", "PYVER=3.12")
    (download,) = [line for line in script.splitlines() if " pip download " in line]
    assert "--python-version 3.12" in download and "--only-binary=:all:" in download and "--no-deps" in download
    wanted = re.findall(r'"([^"]+)"', download.split(" -d gpu-wheels.tmp ", 1)[1])
    assert [w.split("=")[0].split(">")[0] for w in wanted] == ["av", "setuptools"]
    assert not re.search(r"\b(torch|numpy|opencv|isal|docker|huggingface|ray)\b", download)
