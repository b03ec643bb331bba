"""The run report (issue 32): OUT/report.html after every `vda depth`, and `vda report OUT` on any run.

One real two-video run on two CPU workers, one video failing by fault injection (VDA_FAIL_AT_UNIT), gives the report
that a real headless Chromium opens: its DOM after load and its screenshot are checked. The same run is then resumed
through `vda.run`. A simulated-device run is reported while it goes; 200 videos are reported from records written at
the record level (bench/bench_report.py), through the real path, within the time the issue sets.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time

import cv2
import pytest
from conftest import ROOT, one_thread_env, run_vda, synthetic_frames, wait_for, write_video

import vda
from vda.cli.main import main
from vda.io.rundir import RESULTS_NAME

sys.path.insert(0, str(ROOT / "bench"))
from bench_report import synthetic_batch  # noqa: E402

SMALL = ["--input-size", "56", "--unit-size", "1"]  # 40 frames: 2 units of one window each


@pytest.fixture(scope="session")
def chromium() -> str:
    """A headless Chromium: Debian's, installed here where it is missing; skipped only where that fails."""
    found = shutil.which("chromium")
    if found is None:
        try:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=300, check=True)
            subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], capture_output=True, timeout=600, check=True)
        except (OSError, subprocess.SubprocessError) as err:
            pytest.skip(f"no chromium, and `apt-get install -y chromium` failed here ({err})")
        found = shutil.which("chromium")
    if found is None:
        pytest.skip("`apt-get install -y chromium` ran but left no chromium on the PATH")
    return found


def browse(chromium: str, page, *flags: str) -> subprocess.CompletedProcess:
    """Chromium headless on a file (no sandbox: tests may run as root), with the page's script run."""
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *flags, page]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory, checkpoint):
    """Two videos on two CPU workers, b's first unit failing on every attempt: (OUT, the inputs, its report, kept
    apart from the resume's)."""
    folder = tmp_path_factory.mktemp("report_run")
    a = write_video(folder / "a.mp4", synthetic_frames(40, 64, 48, seed=1))
    b = write_video(folder / "b.mp4", synthetic_frames(40, 64, 48, seed=2))
    out = folder / "out"
    args = ["depth", a, b, "-o", out, "--devices", "cpu,cpu", "--checkpoint", checkpoint, "--retries", "1", *SMALL]
    done = run_vda(*args, env={"VDA_FAIL_AT_UNIT": "b:0"}, check=False)
    assert done.returncode == 2, done.stderr
    first = folder / "first_report.html"
    shutil.copy(out / "report.html", first)
    return out, (a, b), first


@pytest.mark.slow
def test_the_report_of_a_run_with_a_failed_input_renders_in_chromium(failed_run, chromium, tmp_path):
    out, _, report = failed_run
    dom = browse(chromium, f"file://{report}#sort=status", "--dump-dom").stdout
    assert dom.count('<tr class="video"') == 2
    figures = dict(re.findall(r'<th>([^<]+)</th><td data-key="[^"]+">([^<]*)</td>', dom))
    assert figures["inputs"] == "2" and figures["videos done"] == "1" and figures["videos failed"] == "1"
    assert figures["frames"] == "40 of 80" and figures["backend"] == "local" and figures["devices"] == "cpu, cpu"
    assert float(figures["frames per second"]) > 0 and figures["host CPU per frame"].endswith(" ms")
    rows = re.findall(r'<tr class="video" data-status="\d" data-name="(\w+)"', dom)
    assert rows == ["b", "a"]  # sorted by the page's own script, from its address: the failed one first
    failed = dom[dom.index('data-name="b"') : dom.index('data-name="a"')]
    assert "unit 0 failed 2 time(s), last on cpu: injected fault" in failed
    assert f"log: {out / '_run' / 'logs'}/worker_" in failed
    assert '<figure class="timeline" data-lanes="2"' in dom
    assert 'id="lane-0"' in dom and 'id="lane-1"' in dom and 'id="lane-2"' not in dom
    assert not re.search(r'(src|href)="(https?:|//)|<script src|<link', dom)  # nothing fetched
    shot = tmp_path / "report.png"
    browse(chromium, f"file://{report}", f"--screenshot={shot}", "--window-size=1200,1400")
    pixels = cv2.imread(str(shot))
    assert pixels.shape[:2] == (1400, 1200) and pixels.std() > 20  # rendered: text, chart and thumbnails, not blank


@pytest.mark.slow
def test_a_resumed_run_returns_and_reports_every_video(failed_run, checkpoint, capsys):
    out, inputs, _ = failed_run
    result = vda.run(list(inputs), out, devices="cpu,cpu", checkpoint=checkpoint, input_size=56, unit_size=1)
    assert result.ok and result.report == out / "report.html"
    page = result.report.read_text()
    assert page.count('<tr class="video"') == 2 and page.count('<td class="merged">merged</td>') == 2
    assert main(["report", str(out)]) == 0
    assert f"wrote {out / 'report.html'}: 2 videos (0 failed), run finished" in capsys.readouterr().out


@pytest.mark.slow
def test_vda_report_on_a_run_in_progress(tmp_path, checkpoint, capsys):
    src = write_video(tmp_path / "slow.mp4", synthetic_frames(40, 64, 48))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "vda", "depth", src, "-o", out, "--devices", "cpu", "--checkpoint", checkpoint]
    env = one_thread_env(VDA_SIMULATE_MS_PER_FRAME="400")  # 16 s of simulated device: the run is still going
    run = subprocess.Popen([*map(str, cmd), *SMALL], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: (out / "_run" / RESULTS_NAME).is_file(), timeout=60)
        assert main(["report", str(out)]) == 0
        assert capsys.readouterr().out.startswith(f"wrote {out / 'report.html'}: 1 videos (0 failed), run in progress")
        page = (out / "report.html").read_text()
        assert '<span class="state" id="state">in progress</span>' in page and "<td>pending</td>" not in page
    finally:
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=60)


def test_a_folder_that_is_not_a_run_gets_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        f"vda: error: {tmp_path} is not the output of a `vda depth` run (no _run/{RESULTS_NAME} in it); give the -o "
        "folder of `vda depth`"
    )


@pytest.mark.slow
def test_two_hundred_videos_are_reported_within_ten_seconds(failed_run, tmp_path):
    out, (a, _), _ = failed_run
    batch = synthetic_batch(tmp_path / "batch", 200, a, out / "_run" / "a", out / "a")
    from vda.report import write_report

    began = time.perf_counter()
    path = write_report(batch)
    took = time.perf_counter() - began
    page = path.read_text()
    assert took < 10, f"{took:.1f} s"
    assert page.count('<tr class="video"') == 200 and page.count('src="data:image/jpeg;base64,') == 200
    assert page.count('<td class="failed">failed</td>') == 10 and '<figure class="timeline" data-lanes="4"' in page
    assert len(page) < 3e6, f"{len(page) / 1e6:.1f} MB"  # the note: under a few MB per 100 videos (0.8 measured)


def test_the_report_reads_files_only():
    """vda.report imports core, io, errors, config and files, and third-party libraries, never the orchestrator,
    the devices or the front ends: the batch calls it, not the other way round."""
    import ast

    allowed = ("vda.core", "vda.io", "vda.errors", "vda.config", "vda.files", "vda.report")
    for path in (ROOT / "vda" / "report").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad = [n for n in names if n.startswith("vda") and not n.startswith(allowed)]
            assert bad == [], f"{path.name} imports {bad}"
