"""Files written whole or not at all: atomic writes, JSON documents, and the one file hash."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from vda.errors import StorageError


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


class DiskFullError(StorageError, OSError):
    """No space left while writing; nothing partial is left under a final name."""


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a hidden temporary name in the same folder, then rename: readers never see a partial file."""
    with atomic_file(path) as fh:
        fh.write(data)


@contextlib.contextmanager
def atomic_file(path: Path, durable: bool = False) -> Iterator:
    """An open binary file under a hidden temporary name in `path`'s folder, renamed to `path` once the block ends.

    Writers stream into it (no whole-file buffer in memory). `durable` fsyncs the data before the rename, for files
    that a marker written next vouches for: after a crash the marker never points at a file the disk lost.
    """
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            yield fh
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            full = DiskFullError(f"disk full while writing {path}; free space and run the same command again to resume")
            full.errno = err.errno
            raise full from None
        if isinstance(err, OSError):
            raise StorageError(
                f"cannot write {path} ({err.strerror or err}); choose a folder you can write to, with free space"
            ) from err
        raise


def write_json(path: Path, obj) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())
