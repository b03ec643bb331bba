"""The messages between the host and a device worker, written and parsed here only.

A worker reads `Assign` and `Stop` lines on stdin and writes `Ready`, `Done` and `Failed` lines on stdout, among its
ordinary log lines; each message is one line, PREFIX followed by JSON with a `kind`. Any other line is log text.
The same types travel as Python objects where no pipe is involved.

    host -> worker   Assign   compute one unit of one video        Stop     finish the stored work and exit
    worker -> host   Ready    give me a unit (sent at start, and as it begins each unit: it decodes the next ahead)
                     Done     a unit is stored, every piece of it  Failed   a unit could not be computed; why
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from vda.errors import BackendError


class ProtocolError(BackendError, ValueError):
    """A worker line that does not parse: the host and the worker run different versions of vda."""


PREFIX = "@vda "


@dataclass(frozen=True)
class Assign:
    video: str  # the video's name in the batch, for messages
    run_dir: str  # the video's run folder, as the worker sees it
    input: str  # the video (or image folder), as the worker sees it; verified against the plan by size and hash
    unit: int
    micro_batch: int = 0  # the micro-batch that worked on this device after an out-of-memory (0: the worker's own)


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class Ready:
    pid: int


@dataclass(frozen=True)
class Done:
    video: str
    unit: int
    frames: int  # output frames the unit produces
    computed: int  # frames the encoder ran on (warm-up and window overlap included)
    seconds: float  # from the unit's start to its last piece stored
    fp32_recomputes: int = 0  # windows (stream mode: frames) not finite in fp16/bf16, recomputed in fp32
    micro_batch: int = 0  # the micro-batch the unit was computed with (halved after an out-of-memory)
    fp32_switch: str = ""  # set on the unit during which the worker switched to fp32 for good: the one line why


@dataclass(frozen=True)
class Failed:
    video: str
    unit: int
    reason: str  # the one-line error, as `vda: error:` would print it
    device_bound: bool = False  # out of memory: the same device and settings would fail again
    retire: bool = False  # the worker cannot go on (its model did not fit): retire the device, the unit runs elsewhere


KINDS = {cls.__name__.lower(): cls for cls in (Assign, Stop, Ready, Done, Failed)}
Message = Assign | Stop | Ready | Done | Failed


def encode(message: Message) -> str:
    return PREFIX + json.dumps({"kind": type(message).__name__.lower(), **asdict(message)})


def decode(line: str) -> Message | None:
    """The message on a line, or None for a log line. A line with the prefix that does not parse is an error.

    A message is written with one write() call, which a pipe never splits, and ends its line; but the worker's stderr
    shares the pipe, so a partial line of it may come first: the message is read from its prefix on.
    """
    start = line.find(PREFIX)
    if start < 0:
        return None
    try:
        data = json.loads(line[start + len(PREFIX) :])
        cls = KINDS[data.pop("kind")]
        names = {f.name for f in fields(cls)}
        if set(data) != names:
            raise KeyError(f"fields {sorted(data)} instead of {sorted(names)}")
        return cls(**data)
    except (ValueError, KeyError, TypeError) as err:
        raise ProtocolError(
            f"malformed line {line!r} ({err}); are the worker and host different vda versions?"
        ) from None
