"""sys.stdout inside a Ray actor: the worker prints its messages and log lines (vda.device.worker.say), and each
whole line goes into the actor's outbox, which its stream (DeviceActor.serve) carries to the driver's worker log."""

from __future__ import annotations

import io
import queue
import threading


class OutboxLines(io.TextIOBase):
    """Whole lines to `outbox` as ("line", text); a partial line waits for its end."""

    def __init__(self, outbox: queue.Queue):
        self.outbox, self.partial, self.lock = outbox, "", threading.Lock()

    def write(self, text: str) -> int:
        with self.lock:
            *lines, self.partial = (self.partial + text).split("\n")
            for line in lines:
                self.outbox.put(("line", line))
        return len(text)
