"""The merge line: each video merged as soon as the queue has stored its units, while the devices go on."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

from vda.merge.early import EarlyMerge
from vda.orchestrator.backends.base import Backend, MergeRequest
from vda.orchestrator.progress import BatchProgress
from vda.orchestrator.records import QueuedVideo
from vda.orchestrator.request import DepthRequest


class MergeLine:
    """Merges videos as the queue reports them computed (on spare CPU while the devices compute the others), one
    after the other in a thread, or `backend.merge_slots` at a time where the backend runs merges on several hosts.
    A merge that fails fails its video only."""

    def __init__(
        self, backend: Backend, request: DepthRequest, outs: dict[str, Path], early: EarlyMerge, progress: BatchProgress
    ):
        self.backend, self.request, self.outs, self.early, self.progress = backend, request, outs, early, progress
        self.errors: dict[str, Exception] = {}
        self._cancelled = False
        self._queue: queue.Queue = queue.Queue()
        self._threads = [
            threading.Thread(target=self._loop, name=f"vda-merge-{k}", daemon=True)
            for k in range(max(1, backend.merge_slots))
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, video: QueuedVideo) -> None:
        self._queue.put(video)

    def finish(self) -> None:
        """Wait for every merge submitted so far (after `cancel`, only for those running)."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()

    def cancel(self) -> None:
        self._cancelled = True

    def _loop(self) -> None:
        while (video := self._queue.get()) is not None and not self._cancelled:
            self.early.release(video.run.folder.path)
            started, out, r = time.perf_counter(), self.outs[video.name], self.request
            began = time.time()
            request = MergeRequest(
                video.run.folder,
                out,
                r.fmt,
                r.create_video,
                r.overwrite,
                r.merge_workers,
                input=video.run.input,
                **r.merge,
            )
            try:
                video.merge_node = self.backend.merge(request)
            except Exception as err:  # noqa: BLE001 - it fails this video only; the batch reports it at the end
                video.status, video.error, video.log = "failed", f"the merge failed: {err}", str(video.run.folder.logs)
                video.merge_times = (began, time.time())
                self.errors[video.name] = err
                self.progress.video_failed(0)
                continue
            video.status, video.merge_times = "merged", (began, time.time())
            if r.clean:  # only after a successful merge: the pieces are what a re-merge or a resume would need
                video.run.folder.discard_results()
            seconds = time.perf_counter() - started
            self.progress.video_finished(
                f"vda: {video.name}: merged {video.plan.frame_count} frames into {out} ({r.fmt}) in {seconds:.1f} s"
            )
