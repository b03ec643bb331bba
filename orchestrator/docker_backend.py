"""Docker backend: one container per device from one image, then one merge container.

Each container is labelled with its run and chunk, runs as the invoking user with no network, sees
the input read-only, and is removed when it ends, fails or the run is interrupted. Its output is
streamed into RUN_DIR/logs/chunk_K.log.

A worker container that cannot start (no NVIDIA runtime, an NVML error, a GPU that is gone) fails its
chunk only, with exit code 125 like `docker run`: the scheduler retries the chunk on another device,
and the containers already running on other devices are left alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

from models.registry import models_dir
from orchestrator.local import worker_reason, worker_threads
from orchestrator.scheduler import START_FAILED
from vda.plan import Plan
from vda.system import usable_cpus

RUN_MOUNT, OUT_MOUNT, INPUT_MOUNT, MODELS_MOUNT, CKPT_MOUNT = "/work/run", "/work/out", "/input", "/models", "/ckpt"
LABEL_RUN, LABEL_CHUNK, LABEL_ROLE = "vda.run", "vda.chunk", "vda.role"
NVIDIA_HINT = (
    "Docker has no NVIDIA runtime: install nvidia-container-toolkit "
    "(https://docs.nvidia.com/datacenter/cloud-native/container-toolkit/latest/install-guide.html), "
    "run `sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker`, "
    "or run on CPU with --devices cpu"
)


class DockerError(Exception):
    """The Docker side cannot run the job; the message says what to do."""


def visible_gpus() -> int:
    """GPUs the host driver shows (nvidia-smi), which is what --gpus / --gpu-ids are checked against."""
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in out.splitlines())


def connect():
    import docker

    try:
        client = docker.from_env()
        client.ping()
        return client
    except Exception as err:  # DockerException, connection errors, permission denied on the socket
        raise DockerError(
            f"cannot reach the Docker engine ({type(err).__name__}); start it (`sudo systemctl start docker`, "
            "or `make engine`), check that your user may use it, or run with --backend local"
        ) from None


def translate(err: Exception) -> DockerError:
    text = str(err)
    if "could not select device driver" in text or "unknown or invalid runtime name: nvidia" in text:
        return DockerError(NVIDIA_HINT)
    return DockerError(f"docker failed: {text.strip().splitlines()[0] if text.strip() else type(err).__name__}")


class DockerHandle:
    """A started worker container; `reason` is its last `vda: error:` line, if it printed one."""

    def __init__(self, container, pump: threading.Thread | None):
        self.container, self.pump = container, pump
        self.reason: str | None = None

    def poll(self) -> int | None:
        self.container.reload()
        if self.container.status not in ("exited", "dead"):
            return None
        code = int(self.container.wait(timeout=30).get("StatusCode", 1))
        self.pump.join(timeout=10)
        _remove(self.container)
        return code

    def stop(self) -> None:
        try:
            self.container.stop(timeout=10)
        except Exception:  # already gone or engine hiccup: removal below is what matters
            pass
        _remove(self.container)


class FailedStart:
    """A worker container that never started.

    It fails only its own chunk, as exit code START_FAILED, so that the scheduler retries the chunk on
    another device; `reason` (the translated one-line error) goes into the scheduler's messages.
    """

    def __init__(self, reason: str):
        self.reason = reason

    def poll(self) -> int:
        return START_FAILED

    def stop(self) -> None:
        """Nothing runs: the container that could not start was already removed."""


def _remove(container) -> None:
    try:
        container.remove(force=True)
    except Exception:  # NotFound after auto-removal, or a removal already in progress
        pass


def _pump(container, log_path: Path, on_line, handle: DockerHandle) -> None:
    buffer = ""
    with open(log_path, "a", encoding="utf-8", errors="replace") as log:
        for chunk in container.logs(stream=True, follow=True):
            text = chunk.decode("utf-8", errors="replace")
            log.write(text)
            log.flush()
            buffer += text
            *lines, buffer = buffer.split("\n")
            for line in lines:
                handle.reason = worker_reason(line, handle.reason)
                on_line(line)


class DockerBackend:
    def __init__(
        self,
        plan: Plan,
        run_dir: Path,
        *,
        image: str | None = None,
        checkpoint: str | None = None,
        client=None,
        extra_env: dict | None = None,
        micro_batch: int | None = None,
        compile: bool = False,
    ):
        self.plan, self.run_dir = plan, Path(run_dir).resolve()
        self.micro_batch, self.compile = micro_batch, compile
        self.client = client or connect()
        gpu = any(c.device.startswith("cuda") for c in plan.chunks)
        self.image = image or ("vda:latest" if gpu else "vda:cpu")
        self.checkpoint = Path(checkpoint).resolve() if checkpoint else None
        self.extra_env = dict(extra_env or {})
        for key in ("VDA_FAIL_AT_UNIT", "VDA_FAIL_TIMES", "VDA_FAIL_MODE"):  # fault injection passes through
            if key in os.environ:
                self.extra_env.setdefault(key, os.environ[key])
        import docker

        try:
            self.client.images.get(self.image)
        except docker.errors.ImageNotFound:
            target = "image" if gpu else "image-cpu"
            raise DockerError(f"image {self.image} not found; build it with `make {target}` or pass --image") from None

    # -- what every container gets ---------------------------------------------------------------
    def _mounts(self, extra: dict | None = None) -> dict:
        from docker.types import Mount

        src = Path(self.plan.input.path)
        mounts = [
            Mount(f"{INPUT_MOUNT}/{src.name}", str(src), type="bind", read_only=True),
            Mount(RUN_MOUNT, str(self.run_dir), type="bind"),
        ]
        if self.checkpoint:
            mounts.append(Mount(CKPT_MOUNT, str(self.checkpoint.parent), type="bind", read_only=True))
        elif models_dir().is_dir():
            mounts.append(Mount(MODELS_MOUNT, str(models_dir().resolve()), type="bind", read_only=True))
        for target, source in (extra or {}).items():
            mounts.append(Mount(target, str(source), type="bind"))
        return {"mounts": mounts}

    def _env(self, device: str) -> dict:
        env = {"PYTHONUNBUFFERED": "1", **self.extra_env}
        if self.checkpoint:
            env["VDA_CHECKPOINT"] = f"{CKPT_MOUNT}/{self.checkpoint.name}"
        env["VDA_THREADS"] = str(worker_threads(self.plan, device, usable_cpus()))
        if device.startswith("cuda"):
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        return env

    def _run(self, command: list[str], device: str, labels: dict, extra_mounts: dict | None = None):
        from docker.types import DeviceRequest

        requests = []
        if device.startswith("cuda"):
            requests = [
                DeviceRequest(driver="nvidia", device_ids=[device.partition(":")[2] or "0"], capabilities=[["gpu"]])
            ]
        # create + start rather than containers.run: when the start fails (the GPU request is checked
        # only then), the created container is removed here, and only that one; the other devices'
        # containers keep running.
        try:
            container = self.client.containers.create(
                self.image,
                command,
                detach=True,
                network_mode="none",
                user=f"{os.getuid()}:{os.getgid()}",
                environment=self._env(device),
                device_requests=requests,
                labels={LABEL_RUN: self.plan.run_id, **labels},
                **self._mounts(extra_mounts),
            )
        except Exception as err:
            raise translate(err) from None
        try:
            container.start()
        except Exception as err:
            _remove(container)
            raise translate(err) from None
        return container

    def check_compiler(self) -> None:
        """--compile: refuse in one line, before any work, when the image has no C compiler for torch.compile.

        Otherwise every worker container would fail the same way and be retried on every device.
        """
        import docker
        from vda.inference import DeviceError

        probe = ["sh", "-c", "command -v cc || command -v gcc || command -v clang"]
        try:
            self.client.containers.run(self.image, probe, remove=True, network_mode="none")
        except docker.errors.ContainerError as err:  # the probe ran and found no compiler
            raise DeviceError(
                f"--compile needs a C compiler in the image {self.image} (torch.compile builds kernels), and it has "
                "none; run without --compile, or build an image with gcc"
            ) from err
        except Exception as err:  # the engine itself failed: say what docker said
            raise translate(err) from None

    # -- backend interface -----------------------------------------------------------------------
    def start(
        self, plan: Plan, run_dir: Path, chunk: int, device: str, log_path: Path, on_line
    ) -> DockerHandle | FailedStart:
        """Start chunk CHUNK's worker on DEVICE. A container that cannot start fails this chunk only (FailedStart)."""
        inner = "cuda:0" if device.startswith("cuda") else "cpu"  # the container sees only its own GPU
        command = [
            "vda",
            "run-chunk",
            RUN_MOUNT,
            "--chunk",
            str(chunk),
            "--device",
            inner,
            "--input",
            f"{INPUT_MOUNT}/{Path(plan.input.path).name}",
        ]
        command += ["--micro-batch", str(self.micro_batch)] * bool(self.micro_batch) + ["--compile"] * self.compile
        try:
            container = self._run(command, device, {LABEL_CHUNK: str(chunk), LABEL_ROLE: "worker"})
        except DockerError as err:
            reason = str(err)
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(f"$ docker run {self.image} {' '.join(command)}  # failed to start on {device}\n{reason}\n")
            on_line(reason)
            return FailedStart(reason)
        with open(log_path, "a") as log:
            log.write(f"$ docker run {self.image} {' '.join(command)}  # {container.short_id} on {device}\n")
        handle = DockerHandle(container, None)
        handle.pump = threading.Thread(target=_pump, args=(container, log_path, on_line, handle), daemon=True)
        handle.pump.start()
        return handle

    def merge(self, out: Path, fmt: str, create_video: bool, overwrite: bool = False) -> None:
        """Run the merge container; it is the last step, so a failure to start it raises DockerError."""
        out = Path(out).resolve()
        out.mkdir(parents=True, exist_ok=True)
        command = ["vda", "merge", RUN_MOUNT, "-o", OUT_MOUNT, "--format", fmt]
        command += ["--create-video"] * create_video + ["--overwrite"] * overwrite
        log_path = self.run_dir / "logs" / "merge.log"
        container = self._run(command, "cpu", {LABEL_ROLE: "merge"}, {OUT_MOUNT: out})
        try:
            code = int(container.wait().get("StatusCode", 1))
            logs = container.logs().decode("utf-8", errors="replace")
            log_path.write_text(logs)
        finally:
            _remove(container)
        if code != 0:
            tail = " | ".join(logs.strip().splitlines()[-3:])
            raise DockerError(f"merge container failed (exit {code}): {tail}; full log in {log_path}")

    def close(self) -> None:
        """Remove every container of this run, whatever state it is in: no orphans."""
        try:
            for c in self.client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={self.plan.run_id}"}):
                _remove(c)
        except Exception:  # engine gone: nothing left that we could remove
            pass
