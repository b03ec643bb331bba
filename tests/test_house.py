"""The house rules, checked on the code itself (the layering is tests/test_layers.py): one import name,
settings read in one module, one error type with a "this is a bug" line for everything else, and diagnostics logged
to the run folder."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from conftest import write_video
from setuptools import find_namespace_packages

from vda import config, logs
from vda.cli import main as cli
from vda.config import Config, Faults
from vda.errors import EXIT_BUG, EXIT_ERROR, EXIT_OUT_OF_MEMORY, OutOfMemory, UsageError, VdaError
from vda.model.synth import synthetic_scene

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vda"


def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def test_one_installed_import_name():
    """`pip install` puts `vda` in site-packages and nothing else (no generic `models` or `orchestrator`)."""
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    include = setup["packages"]["find"]["include"]
    found = find_namespace_packages(str(ROOT), include=include)
    assert found and {name.split(".")[0] for name in found} == {"vda"}
    assert not (ROOT / "models" / "__init__.py").exists() and not (ROOT / "orchestrator").exists()
    script = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["vda"]
    assert script == "vda.cli.main:main"


def test_vda_variables_are_read_in_config_only():
    """Only vda/config.py reads VDA_* variables; no module writes os.environ but the one cv2 switch in vda/__init__."""
    reads = re.compile(r"environ(\.get)?[\[(]\s*[\"']VDA_|getenv\(\s*[\"']VDA_")
    writes = re.compile(r"os\.environ\[[^\]]+\]\s*=|os\.environ\.(setdefault|update|pop)\(|os\.putenv")
    readers, writers = [], []
    for name, path in modules().items():
        text = path.read_text()
        if name != "vda.config" and reads.search(text):
            readers.append(name)
        if name != "vda" and writes.search(text):
            writers.append(name)
    assert readers == [] and writers == []


def test_config_reads_and_checks_the_variables(tmp_path):
    env = {
        "VDA_THREADS": "3",
        "VDA_MODELS_DIR": f"{tmp_path}/a:{tmp_path}/b",
        "VDA_FAIL_AT_UNIT": "clip:2",
        "VDA_FAIL_TIMES": "1",
        "VDA_FAIL_MODE": "exit",
        "VDA_WORKER_DELAY": "1:0.5",
    }
    settings = Config.from_env(env)
    assert settings.threads == 3 and settings.models_dirs == (tmp_path / "a", tmp_path / "b")
    assert settings.faults == Faults("clip:2", 1, "exit", "1:0.5")
    assert settings.faults.env() == {k: v for k, v in env.items() if k.startswith(("VDA_FAIL", "VDA_WORKER"))}
    assert settings.faults.delay_of(1) == 0.5 and settings.faults.delay_of(0) == 0.0
    assert config.CHECKOUT_MODELS == ROOT / "models"  # a checkout (pyproject.toml beside the package)
    assert Config.from_env({}).models_dirs == (config.CHECKOUT_MODELS,)
    for bad, message in [
        ({"VDA_THREADS": "two"}, "VDA_THREADS='two' is not a whole number of at least 1"),
        ({"VDA_THREADS": "0"}, "VDA_THREADS='0' is not a whole number of at least 1"),
        ({"VDA_FAIL_MODE": "boom"}, "VDA_FAIL_MODE='boom' is not one of raise, exit, kill, oom"),
        ({"VDA_FAIL_AT_UNIT": "clip:x"}, "VDA_FAIL_AT_UNIT='clip:x' is not U or NAME:U, U a unit number"),
        ({"VDA_WORKER_DELAY": "1"}, "VDA_WORKER_DELAY='1' is not SLOT:SECONDS"),
    ]:
        with pytest.raises(UsageError, match=re.escape(message)):
            Config.from_env(bad)


def _cli(monkeypatch, capsys, command, *flags: str, name: str = "doctor") -> tuple[int, str]:
    """Run the real `vda` entry point in this process with `command` standing in for `vda NAME`."""
    monkeypatch.setitem(cli.COMMANDS, name, lambda args: command())
    monkeypatch.setattr(config, "_loaded", None)
    code = cli.main([*flags, name] + (["--device", "cpu"] if name == "work" else []))
    return code, capsys.readouterr().err


def test_an_expected_error_is_one_line(monkeypatch, capsys):
    def fails():
        raise UsageError("--micro-batch must be at least 1, got 0; pass 1 or more")

    code, err = _cli(monkeypatch, capsys, fails)
    assert code == EXIT_ERROR and err == "vda: error: --micro-batch must be at least 1, got 0; pass 1 or more\n"

    def oom():
        raise OutOfMemory("the GPU ran out of memory; lower --micro-batch")

    assert _cli(monkeypatch, capsys, oom)[0] == EXIT_OUT_OF_MEMORY


def test_anything_else_is_a_bug(monkeypatch, capsys):
    """A ValueError from deep inside (a library, or our own mistake) is not dressed up as an expected error."""

    def bug():
        return {}["missing"]

    code, err = _cli(monkeypatch, capsys, bug)
    assert code == EXIT_BUG and len(err.splitlines()) == 1, err
    assert err.startswith("vda: error: this is a bug in vda (KeyError: 'missing'); rerun with --debug")
    assert "Traceback" not in err

    def library_value_error():
        raise ValueError("operands could not be broadcast together with shapes (3,) (4,)")

    code, err = _cli(monkeypatch, capsys, library_value_error)
    assert code == EXIT_BUG and "this is a bug in vda (ValueError: operands" in err

    code, err = _cli(monkeypatch, capsys, bug, "--debug")
    assert code == EXIT_BUG and "Traceback (most recent call last)" in err and "this is a bug in vda" in err
    # a worker's stderr is its log file: there the traceback is written without --debug
    code, err = _cli(monkeypatch, capsys, bug, name="work")
    assert code == EXIT_BUG and "Traceback (most recent call last)" in err and "the traceback is above" in err


def test_a_path_the_os_refuses_is_named(monkeypatch, capsys, tmp_path):
    def unreadable():
        return open(tmp_path / "nope.json")

    code, err = _cli(monkeypatch, capsys, unreadable)
    want = f"vda: error: {tmp_path / 'nope.json'}: No such file or directory; check the path and its permissions\n"
    assert code == EXIT_ERROR and err == want


def test_every_expected_error_kind_is_a_vda_error():
    """The narrow kinds modules define all derive from VdaError, so the CLI's one line covers them."""
    from vda.analysis.camera import IntrinsicsError
    from vda.analysis.detections import TrackError
    from vda.analysis.pointcloud import PointCloudError
    from vda.core.plan import PlanError
    from vda.device.feed import FrameError
    from vda.device.guard import NonFiniteDepth
    from vda.device.rehearsal import InjectedFault
    from vda.device.runtime import UnsupportedDevice
    from vda.device.unit import DeviceOutOfMemory
    from vda.errors import WeightsError
    from vda.events import ProtocolError
    from vda.files import DiskFullError
    from vda.io.probe import VideoError
    from vda.io.writers import DepthFolderError
    from vda.model.network import CheckpointError
    from vda.orchestrator.backends.docker import DockerError
    from vda.orchestrator.queue import RunFailed

    kinds = [IntrinsicsError, TrackError, PointCloudError, PlanError, ProtocolError, VideoError, DepthFolderError]
    kinds += [DiskFullError, CheckpointError, WeightsError, DockerError, RunFailed, UnsupportedDevice, FrameError]
    kinds += [NonFiniteDepth, DeviceOutOfMemory, InjectedFault]
    assert [k.__name__ for k in kinds if not issubclass(k, VdaError)] == []
    assert DeviceOutOfMemory("x").__class__.exit_code == EXIT_OUT_OF_MEMORY


@pytest.fixture
def clip(tmp_path) -> Path:
    return write_video(tmp_path / "clip.mp4", list(synthetic_scene(8, 48, 64)))


def test_verbose_logs_to_stderr_and_every_run_logs_to_its_folder(tmp_path, clip, checkpoint):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "vda", "-v", "plan", str(clip), "-o", str(run), "--devices", "cpu"]
    proc = subprocess.run([*cmd, "--checkpoint", str(checkpoint)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"INFO vda\.orchestrator\.planning: .*planned run \w+: 8 frames", proc.stderr), proc.stderr
    logged = (run / "logs" / "vda.log").read_text()
    assert "planned run" in logged
    quiet = subprocess.run([*cmd[:3], *cmd[4:], "--checkpoint", str(checkpoint)], capture_output=True, text=True)
    assert quiet.returncode == 0 and " INFO " not in quiet.stderr, quiet.stderr
    assert "resumed run" in (run / "logs" / "vda.log").read_text()  # the file logs whatever the flags


def test_a_bug_leaves_its_traceback_in_the_run_log(monkeypatch, capsys, tmp_path):
    path = tmp_path / "logs" / "vda.log"

    def bug():
        with logs.run_log(path):
            logging.getLogger("vda.test").info("working")
            raise ZeroDivisionError("division by zero")

    code, err = _cli(monkeypatch, capsys, bug)
    assert code == EXIT_BUG and f"(also in {path})" in err and "Traceback" not in err
    text = path.read_text()
    assert "INFO vda.test: working" in text and "bug: ZeroDivisionError" in text and "Traceback (most recent" in text
    logging.getLogger("vda.test").info("after the run")
    assert "after the run" not in path.read_text()  # the run's handler is gone with the run


def test_a_damaged_depth_folder_is_refused_in_our_words(tmp_path):
    from vda.io.writers import META_NAME, DepthFolderError, DepthMeta

    for text, what in [
        ("{not json", "cannot be read (JSONDecodeError)"),
        ('{"schema_version": 0}', "schema version 0"),
    ]:
        (tmp_path / META_NAME).write_text(text)
        with pytest.raises(DepthFolderError, match=re.escape(what) + ".*; write the folder again with `vda merge`"):
            DepthMeta.load(tmp_path)


def test_merge_of_a_mistyped_run_folder_makes_nothing(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "vda", "merge", str(tmp_path / "typo"), "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == EXIT_ERROR and proc.stderr.startswith("vda: error: "), proc.stderr
    assert not (tmp_path / "typo").exists()
