"""Local backend: one `vda run-chunk` process per device, in its own process group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from vda.plan import Plan
from vda.system import usable_cpus

STOP_GRACE_S = 10


def _pump(stream, log_path: Path, on_line) -> None:
    with open(log_path, "a", encoding="utf-8", errors="replace") as log:
        for raw in iter(stream.readline, ""):
            log.write(raw)
            log.flush()
            on_line(raw.rstrip("\n"))
    stream.close()


class LocalHandle:
    def __init__(self, proc: subprocess.Popen, pump: threading.Thread):
        self.proc, self.pump = proc, pump

    def poll(self) -> int | None:
        code = self.proc.poll()
        if code is not None:
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


class LocalBackend:
    """Runs chunks as child processes. CPU workers split the cores between them."""

    def __init__(self, checkpoint: str | None = None, threads_per_worker: int | None = None, extra_env=None):
        self.checkpoint, self.threads, self.extra_env = checkpoint, threads_per_worker, dict(extra_env or {})

    def start(self, plan: Plan, run_dir: Path, chunk: int, device: str, log_path: Path, on_line) -> LocalHandle:
        cmd = [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "run-chunk",
            str(run_dir),
            "--chunk",
            str(chunk),
            "--device",
            device,
            "--input",
            plan.input.path,
        ]
        if self.checkpoint:
            cmd += ["--checkpoint", str(self.checkpoint)]
        env = {**os.environ, **self.extra_env, "PYTHONUNBUFFERED": "1"}
        if device == "cpu":
            cpus = max(1, usable_cpus() // max(1, sum(c.device == "cpu" for c in plan.chunks)))
            env.setdefault("VDA_THREADS", str(self.threads or cpus))
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as log:
            log.write(f"$ {' '.join(cmd)}\n")
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
        )
        pump = threading.Thread(target=_pump, args=(proc.stdout, log_path, on_line), daemon=True)
        pump.start()
        return LocalHandle(proc, pump)
