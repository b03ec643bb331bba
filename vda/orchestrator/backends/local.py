"""Local backend: one long-lived `vda work` process per device, in its own process group, seeing only its own GPU."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from vda import events
from vda.config import THREADS_ENV, Config
from vda.device.runtime import check_compiler
from vda.orchestrator.backends.base import Backend, LinePump, MergeRequest, merge_in_process
from vda.orchestrator.launch import worker_command, worker_env
from vda.system import gpu_env

STOP_GRACE_S = 10
logger = logging.getLogger(__name__)  # `log` is the worker log file below


class LocalHandle:
    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.pump: LinePump | None = None
        self.reason: str | None = None

    def send(self, message: events.Message) -> None:
        try:
            self.proc.stdin.write(events.encode(message) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):  # the worker is gone (or its stdin closed): poll() reports it
            pass

    def poll(self) -> int | None:
        code = self.proc.poll()
        if code is not None and self.pump is not None:
            self.pump.join(timeout=5)
        return code

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


class LocalBackend(Backend):
    """Runs workers as child processes, each seeing only its own GPU; CPU workers split the cores between them."""

    name = "local"
    PROGRAM = [sys.executable, "-m", "vda"]

    def open(self, root, videos) -> None:
        """--compile: the workers run here, so this machine needs the C compiler torch.compile uses (one line now,
        rather than every worker failing alike)."""
        super().open(root, videos)
        if self.options.compile:
            check_compiler()

    def worker_path(self, path: Path) -> str:
        return str(path)

    def command(self, slot: int, device: str) -> list[str]:
        return worker_command(self.PROGRAM, device, slot, self.options, self.options.checkpoint)

    def environment(self, device: str, parent_env=os.environ) -> dict[str, str]:
        settings = Config.from_env(parent_env)  # the environment the worker inherits, read as the host reads its own
        env = {**parent_env, **worker_env(self.devices, device, self.options, settings, parent_env)}
        if settings.threads and not self.options.threads:
            env[THREADS_ENV] = str(settings.threads)  # a thread count set here wins over the default share
        if device.startswith("cuda"):
            env.update(gpu_env(int(device.partition(":")[2] or 0), parent_env))
        return env

    def start_worker(self, slot: int, device: str, log_path: Path, on_line) -> LocalHandle:
        cmd, env = self.command(slot, device), self.environment(device)
        logger.debug("worker %d on %s: %s", slot, device, " ".join(cmd))
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as log:
            shown = " ".join(f"{k}={env[k]}" for k in ("CUDA_VISIBLE_DEVICES", THREADS_ENV) if k in env)
            log.write(f"$ {shown} {' '.join(cmd)}  # on {device}\n")
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        handle = LocalHandle(proc)
        handle.pump = LinePump(proc.stdout, log_path, on_line, handle)
        return handle

    def merge(self, request: MergeRequest) -> None:
        merge_in_process(request)

    def close(self) -> None:
        """Nothing outlives a run: the queue stops every worker it started."""
