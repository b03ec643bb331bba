"""Diagnostics through `logging`, under the `vda` logger; what users are told stays printed lines.

Progress bars, `vda: error:` lines and per-video results are the product's output and are printed where they are
made. Diagnostics (which worker got which unit, commands started, checkpoints resolved, a bug's traceback) are
logged: to stderr with `-v` (INFO) or `--debug` (DEBUG), and always, at DEBUG, to the run's log file
(RUN_DIR/logs/vda.log, `run_log`), so that a failed run can be read afterwards without rerunning it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vda.config import Config
from vda.errors import VdaError

LOGGER = "vda"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUIET = "traceback_only_in_files"  # a record the stderr handler shows only under --debug
_last: Path | None = None


def setup(settings: Config) -> None:
    """Route the `vda` logger to stderr at the level the flags ask for (nothing below WARNING without a flag)."""
    root = logging.getLogger(LOGGER)
    root.setLevel(logging.DEBUG)
    for handler in [h for h in root.handlers if getattr(h, "vda_stderr", False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.vda_stderr = True
    handler.setLevel(logging.DEBUG if settings.debug else logging.INFO if settings.verbose else logging.WARNING)
    handler.setFormatter(logging.Formatter(FORMAT))
    if not settings.debug:  # a bug's traceback: in the run log always, on stderr only under --debug
        handler.addFilter(lambda record: not getattr(record, QUIET, False))
    root.addHandler(handler)


@contextmanager
def run_log(path: Path) -> Iterator[Path]:
    """Log everything, at DEBUG, to `path` (a run folder's logs/vda.log) while the block runs.

    An exception that is not a VdaError leaves its traceback there too: it is a bug, and the run's log is where a
    user finds it without rerunning. The handler is removed afterwards, so that a process running several batches
    (vda as a library, the tests) never writes one run's lines into another's log.
    """
    global _last
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger(LOGGER)
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    _last = path
    try:
        yield path
    except Exception as err:
        if not isinstance(err, VdaError):  # to this file only: stderr gets the CLI's own line for it
            what, exc_info = (type(err).__name__, err), (type(err), err, err.__traceback__)
            record = root.makeRecord(LOGGER, logging.ERROR, __file__, 0, "bug: %s: %s", what, exc_info)
            handler.handle(record)
        raise
    finally:
        root.removeHandler(handler)
        handler.close()


def last_run_log() -> Path | None:
    """The run log this process wrote last (where a bug's traceback can be read), if any."""
    return _last
