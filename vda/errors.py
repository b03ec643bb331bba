"""The one error type users see: `VdaError`, and the kinds of it.

The contract: an expected failure raises a `VdaError` whose message is one line we wrote, `<what went wrong>; <what
to do>`. The CLI prints it as `vda: error: <message>` and exits with `exit_code` (2, or 4 for out of memory). Any
other exception is a bug: the CLI prints one "this is a bug" line and exits 70, with the traceback under `--debug`
and in the run's log. So an error relayed from a library (a `ValueError` from numpy, torch's multi-sentence
`UnpicklingError`) is caught where it happens and re-raised as one of these, in our words. One exception: an
`OSError` that names a file (missing, unreadable, unwritable) gets `vda: error: <file>: <the OS's reason>; check the
path and its permissions` and exit 2, since any path a user gives can fail so; an `OSError` without a file is a bug.

Modules define their own narrow kinds next to the code that raises them (`vda.io.video.VideoError`,
`vda.core.plan.PlanError`, ...), each a subclass of one of the kinds here, so that `except VdaError` catches them all.
Some kinds also subclass `ValueError` where callers in Python code reasonably expect one (a bad argument value).
"""

from __future__ import annotations

EXIT_ERROR = 2  # an expected failure: the one line says what to do
EXIT_OUT_OF_MEMORY = 4  # a device ran out of memory: lower --micro-batch or --input-size
EXIT_BUG = 70  # anything else (EX_SOFTWARE): a bug in vda, reported with its traceback
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM


def one_line(err: BaseException) -> str:
    """An error's message on one line (a message we wrote is one already; this guards the contract)."""
    return " ".join(str(err).split()) or type(err).__name__


class VdaError(Exception):
    """An expected failure. `str(err)` is one line, `<what>; <what to do>`, written by us."""

    exit_code = EXIT_ERROR


class UsageError(VdaError, ValueError):
    """A flag or argument value that cannot work (a device that is not there, a size that is not positive)."""


class InputError(VdaError):
    """An input that cannot be used: a video, an image folder, a detections file, a depth folder."""


class WeightsError(VdaError):
    """A checkpoint that cannot be found, read or loaded."""


class DeviceError(VdaError):
    """A device that cannot compute: absent, the wrong kind, or out of memory."""


class OutOfMemory(DeviceError):
    """The device ran out of memory: retrying the same work with the same settings there would fail the same way."""

    exit_code = EXIT_OUT_OF_MEMORY


class StorageError(VdaError):
    """A folder that cannot be written, or a disk that is full."""


class BackendError(VdaError):
    """The machinery that runs workers (the Docker engine, a Ray cluster) is missing or refused."""


class RunError(VdaError):
    """Work that failed after its retries: units, a worker that could not start, a merge."""
