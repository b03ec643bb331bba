"""Settings read once: the documented `VDA_*` variables, into one typed `Config`.

`vda`'s entry point reads them once (`load`) with its global flags; everything else asks `current()`. A library user
who never runs the CLI gets them read from the environment when asked. Workers get their settings through the
command and environment that `vda.orchestrator.launch` builds for them, never through the host changing its own
environment.

| variable | meaning |
|---|---|
| `VDA_THREADS` | CPU threads of this process's torch (the host sets it per worker: the cores shared out) |
| `VDA_MODELS_DIR` | checkpoint folders, `:`-separated (default: the checkout's `models/`, else `./models`) |
| `VDA_FAIL_AT_UNIT` | fault rehearsal: fail unit `U` of any video, or `NAME:U` of video NAME |
| `VDA_FAIL_TIMES` | fault rehearsal: fail only the first N times |
| `VDA_FAIL_MODE` | fault rehearsal: `raise` (the unit fails), `exit` (the worker exits 3), `kill` (SIGKILL), `oom` |
| `VDA_WORKER_DELAY` | fault rehearsal: `SLOT:SECONDS` slows worker SLOT by SECONDS per unit (a slow device) |
| `VDA_SIMULATE_MS_PER_FRAME` | simulated device: no model; a window holds the device MS ms per output frame |
| `VDA_MERGE_DELAY` | fault rehearsal: a merge run as a Ray task waits SECONDS before it starts (lose its node) |
| `VDA_CUDNN_DETERMINISTIC` | `1`: cuDNN's deterministic algorithms on GPU workers (measured by `make gpu-check`) |
| `VDA_COMPILE_CACHE` | `--compile`'s inductor and Triton caches, shared by all workers (`~/.cache/vda/compile`) |
| `VDA_ONNX_CACHE` | `--runtime onnx`'s graphs, one folder per checkpoint, size and version (`~/.cache/vda/onnx`) |
| `VDA_STAGE_TIMES` | per-window stage times as JSON there (`vda work RUN_DIR`), or at `<it>.<pid>.json` (workers) |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from vda.errors import UsageError

THREADS_ENV = "VDA_THREADS"
MODELS_ENV = "VDA_MODELS_DIR"
FAIL_ENV, FAIL_TIMES_ENV, FAIL_MODE_ENV, DELAY_ENV, SIMULATE_ENV = (
    "VDA_FAIL_AT_UNIT",
    "VDA_FAIL_TIMES",
    "VDA_FAIL_MODE",
    "VDA_WORKER_DELAY",
    "VDA_SIMULATE_MS_PER_FRAME",
)
MERGE_DELAY_ENV = "VDA_MERGE_DELAY"
FAULT_ENV = (FAIL_ENV, FAIL_TIMES_ENV, FAIL_MODE_ENV, DELAY_ENV, SIMULATE_ENV, MERGE_DELAY_ENV)
CUDNN_DETERMINISTIC_ENV, COMPILE_CACHE_ENV, STAGE_TIMES_ENV, ONNX_CACHE_ENV = (
    "VDA_CUDNN_DETERMINISTIC",
    "VDA_COMPILE_CACHE",
    "VDA_STAGE_TIMES",
    "VDA_ONNX_CACHE",
)
FAIL_MODES = ("raise", "exit", "kill", "oom")
# The checkout's models/ folder (an editable install, told by the pyproject.toml beside it); a wheel installed elsewhere
# looks in ./models instead (site-packages/models could be another package's).
CHECKOUT = Path(__file__).resolve().parents[1]
CHECKOUT_MODELS = CHECKOUT / "models" if (CHECKOUT / "pyproject.toml").is_file() else None


@dataclass(frozen=True)
class Faults:
    """Rehearsals (VDA_FAIL_*, VDA_WORKER_DELAY, VDA_SIMULATE_MS_PER_FRAME): what the queue does when a unit, a worker
    or a device fails, and whether this host can feed its devices (a simulated device: vda.device.simulate).

    They travel together to every worker of every backend (vda.orchestrator.launch), so a rehearsal on the host is a
    rehearsal wherever the workers run."""

    at_unit: str = ""  # "U" or "NAME:U"; empty: no fault
    times: int | None = None  # fail only the first `times` times (counted in the run folder)
    mode: str = ""  # empty: raise
    delay: str = ""  # "SLOT:SECONDS"
    simulate_ms: float | None = None  # a simulated device: ms it is held per output frame; None: the real model
    merge_delay: str = ""  # "SECONDS"

    def env(self) -> dict[str, str]:
        """The variables that give a worker these rehearsals (only those that are set)."""
        times = "" if self.times is None else str(self.times)
        simulate = "" if self.simulate_ms is None else repr(self.simulate_ms)
        values = (self.at_unit, times, self.mode, self.delay, simulate, self.merge_delay)
        return {k: v for k, v in zip(FAULT_ENV, values) if v}

    def delay_of(self, slot: int) -> float:
        """Seconds worker `slot` sleeps per unit."""
        which, _, seconds = self.delay.partition(":")
        return float(seconds) if self.delay and int(which) == slot else 0.0


@dataclass(frozen=True)
class Config:
    threads: int | None = None
    models_dirs: tuple[Path, ...] = ()
    faults: Faults = field(default_factory=Faults)
    verbose: bool = False
    debug: bool = False
    cudnn_deterministic: bool = False
    compile_cache: Path = field(default_factory=lambda: Path.home() / ".cache" / "vda" / "compile")
    stage_times: str = ""
    onnx_cache: Path = field(default_factory=lambda: Path.home() / ".cache" / "vda" / "onnx")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, *, verbose: bool = False, debug: bool = False):
        """Read and check every VDA_* variable; a value that cannot work is refused in one line."""
        dirs = environ.get(MODELS_ENV, "")
        models = tuple(Path(p) for p in dirs.split(os.pathsep) if p)
        if not models:
            models = (CHECKOUT_MODELS if CHECKOUT_MODELS and CHECKOUT_MODELS.is_dir() else Path("models"),)
        faults = Faults(
            at_unit=environ.get(FAIL_ENV, ""),
            times=_whole(environ, FAIL_TIMES_ENV, 0),
            mode=environ.get(FAIL_MODE_ENV, ""),
            delay=environ.get(DELAY_ENV, ""),
            simulate_ms=_milliseconds(environ, SIMULATE_ENV),
            merge_delay=environ.get(MERGE_DELAY_ENV, ""),
        )
        if faults.mode and faults.mode not in FAIL_MODES:
            raise UsageError(f"{FAIL_MODE_ENV}={faults.mode!r} is not one of {', '.join(FAIL_MODES)}; fix or unset it")
        _check_spec(FAIL_ENV, faults.at_unit, "U or NAME:U, U a unit number", lambda s: s.rpartition(":")[2].isdigit())
        _check_spec(DELAY_ENV, faults.delay, "SLOT:SECONDS", _is_delay)
        _check_spec(MERGE_DELAY_ENV, faults.merge_delay, "SECONDS", lambda s: _is_delay(f"0:{s}"))
        deterministic = environ.get(CUDNN_DETERMINISTIC_ENV, "")
        if deterministic not in ("", "0", "1"):
            raise UsageError(f"{CUDNN_DETERMINISTIC_ENV}={deterministic!r} is not 0 or 1; fix or unset it")
        cache, onnx = environ.get(COMPILE_CACHE_ENV, ""), environ.get(ONNX_CACHE_ENV, "")
        return cls(
            _whole(environ, THREADS_ENV, 1),
            models,
            faults,
            verbose,
            debug,
            cudnn_deterministic=deterministic == "1",
            compile_cache=Path(cache).expanduser() if cache else Path.home() / ".cache" / "vda" / "compile",
            stage_times=environ.get(STAGE_TIMES_ENV, ""),
            onnx_cache=Path(onnx).expanduser() if onnx else Path.home() / ".cache" / "vda" / "onnx",
        )


def _check_spec(name: str, value: str, form: str, valid) -> None:
    if value and not valid(value):
        raise UsageError(f"{name}={value!r} is not {form}; fix or unset it")


def _is_delay(spec: str) -> bool:
    slot, sep, seconds = spec.partition(":")
    try:
        return bool(sep) and slot.isdigit() and float(seconds) >= 0
    except ValueError:
        return False


def _milliseconds(environ: Mapping[str, str], name: str) -> float | None:
    text = environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise UsageError(f"{name}={text!r} is not a number of milliseconds of at least 0; fix or unset it")
    return value


def _whole(environ: Mapping[str, str], name: str, least: int) -> int | None:
    text = environ.get(name, "")
    if not text:
        return None
    if not text.strip().isdigit() or int(text) < least:
        raise UsageError(f"{name}={text!r} is not a whole number of at least {least}; fix or unset it")
    return int(text)


_loaded: Config | None = None


def load(environ: Mapping[str, str] = os.environ, *, verbose: bool = False, debug: bool = False) -> Config:
    """Read the settings once, for this process (the CLI's entry point calls it first)."""
    global _loaded
    _loaded = Config.from_env(environ, verbose=verbose, debug=debug)
    return _loaded


def current() -> Config:
    """The settings `load` read; without a `load` (vda used as a library), read from the environment now."""
    return _loaded if _loaded is not None else Config.from_env()
