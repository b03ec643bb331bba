"""Local backend: one `vda run-chunk` process per device, in its own process group, seeing only its own GPU."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from vda.inference import check_compiler
from vda.plan import Plan
from vda.system import gpu_env, usable_cpus

STOP_GRACE_S = 10
ERROR_PREFIX = "vda: error: "


def worker_reason(line: str, previous: str | None) -> str | None:
    """A worker's own one-line error (`vda: error: ...`) is the reason in the run's messages; else keep the last."""
    return line[len(ERROR_PREFIX) :] if line.startswith(ERROR_PREFIX) else previous


def _pump(stream, log_path: Path, on_line, handle: LocalHandle) -> None:
    with open(log_path, "a", encoding="utf-8", errors="replace") as log:
        for raw in iter(stream.readline, ""):
            log.write(raw)
            log.flush()
            line = raw.rstrip("\n")
            handle.reason = worker_reason(line, handle.reason)
            on_line(line)
    stream.close()


class LocalHandle:
    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.pump: threading.Thread | None = None
        self.reason: str | None = None

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


def worker_threads(plan: Plan, device: str, cpus: int) -> int:
    """CPU threads for one worker: the usable cores shared by the workers of its kind, at least one.

    CPU workers compute on them; GPU workers decode, preprocess and store with them. Without a count each worker
    would use every core, and five GPU workers would fight over them.
    """
    kind = "cpu" if device == "cpu" else "cuda"
    same_kind = sum((c.device == "cpu") == (kind == "cpu") for c in plan.chunks)
    return max(1, cpus // max(1, same_kind))


class LocalBackend:
    """Runs chunks as child processes, each seeing only its own GPU; CPU workers split the cores between them."""

    def __init__(
        self,
        checkpoint: str | None = None,
        threads_per_worker: int | None = None,
        extra_env=None,
        *,
        micro_batch: int | None = None,
        compile: bool = False,
    ):
        self.checkpoint, self.threads, self.extra_env = checkpoint, threads_per_worker, dict(extra_env or {})
        self.micro_batch, self.compile = micro_batch, compile

    def check_compiler(self) -> None:
        """--compile: the workers run here, so this machine needs the C compiler torch.compile uses."""
        check_compiler()

    def command(self, plan: Plan, run_dir: Path, chunk: int, device: str) -> list[str]:
        """The worker's command line; a GPU worker is told cuda:0, the only GPU its environment shows it."""
        inner = "cuda:0" if device.startswith("cuda") else device
        cmd = [sys.executable, "-m", "orchestrator.cli", "run-chunk", str(run_dir), "--chunk", str(chunk)]
        cmd += ["--device", inner, "--input", plan.input.path]
        if self.checkpoint:
            cmd += ["--checkpoint", str(self.checkpoint)]
        if self.micro_batch:
            cmd += ["--micro-batch", str(self.micro_batch)]
        if self.compile:
            cmd += ["--compile"]
        return cmd

    def environment(self, plan: Plan, device: str, parent_env=os.environ) -> dict[str, str]:
        env = {**parent_env, **self.extra_env, "PYTHONUNBUFFERED": "1"}
        if device.startswith("cuda"):
            env.update(gpu_env(int(device.partition(":")[2] or 0), parent_env))
        env.setdefault("VDA_THREADS", str(self.threads or worker_threads(plan, device, usable_cpus())))
        return env

    def start(self, plan: Plan, run_dir: Path, chunk: int, device: str, log_path: Path, on_line) -> LocalHandle:
        cmd, env = self.command(plan, run_dir, chunk, device), self.environment(plan, device)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as log:
            shown = " ".join(f"{k}={env[k]}" for k in ("CUDA_VISIBLE_DEVICES", "VDA_THREADS") if k in env)
            log.write(f"$ {shown} {' '.join(cmd)}\n")
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
        )
        handle = LocalHandle(proc)
        handle.pump = threading.Thread(target=_pump, args=(proc.stdout, log_path, on_line, handle), daemon=True)
        handle.pump.start()
        return handle
