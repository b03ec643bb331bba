"""A worker's side of the host protocol: messages in on stdin; messages and log lines out on stdout, one line each."""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Iterable

from vda import events


def _read_messages(lines: Iterable[str], inbox: queue.Queue) -> None:
    """The host's messages, in order; the end of input (the host went away) is a Stop."""
    try:
        for line in lines:
            message = events.decode(line.strip())
            if message is not None:
                inbox.put(message)
    finally:
        inbox.put(events.Stop())


_STDOUT = threading.Lock()  # the worker's thread and its store thread both write lines to stdout


def say(line: str) -> None:
    """One whole line to stdout: a message to the host must never share a line with log text."""
    with _STDOUT:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _emit(message: events.Message) -> None:
    say(events.encode(message))
