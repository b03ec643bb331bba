"""Docker backend: one long-lived worker container per device from one image, and one merge container per video.

A worker container lives for the whole run: it loads the model once and is handed units on its stdin (vda.events),
like a local worker process. Every container is labelled with its run folder and role, runs as the invoking user
with no network, sees the inputs read-only and the run folder read-write, and is removed when it ends, fails or the
run is interrupted. Its output is streamed into RUN_DIR/logs/worker_<slot>.log. Its stdin closes when the host goes
away (StdinOnce), so a host killed with -9 leaves no worker behind waiting for work; a rerun on the same run folder
also removes any container a previous host left there.

A worker container that cannot start (no NVIDIA runtime, an NVML error, a GPU that is gone) is reported as exit code
125, like `docker run`: the queue retires that device, and the containers on other devices keep working.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

from vda import config, events
from vda.errors import BackendError
from vda.model.registry import models_dir
from vda.orchestrator.backends.base import START_FAILED, Backend, LinePump, MergeRequest
from vda.orchestrator.launch import COMPILE_CACHE_MOUNT, ONNX_CACHE_MOUNT, worker_command, worker_env
from vda.system import owner, process_alive

RUN_MOUNT, OUT_MOUNT, INPUT_MOUNT, MODELS_MOUNT, CKPT_MOUNT = "/work/run", "/work/out", "/input", "/models", "/ckpt"
LABEL_RUN, LABEL_SLOT, LABEL_ROLE = "vda.run", "vda.slot", "vda.role"  # vda.run: the run folder on the host
LABEL_OWNER = "vda.owner"  # HOST:PID of the `vda depth` that started the container (vda.system.owner)
PROGRAM = ["vda"]  # how `vda` is run inside the image
CONTAINER_GONE = 137  # the code a worker gets when its container vanished (as if killed)
NVIDIA_HINT = (
    "Docker has no NVIDIA runtime: install nvidia-container-toolkit "
    "(https://docs.nvidia.com/datacenter/cloud-native/container-toolkit/latest/install-guide.html), "
    "run `sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker`, "
    "or run on CPU with --devices cpu"
)

logger = logging.getLogger(__name__)  # `log` names worker log files here


class DockerError(BackendError):
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
    """A started worker container; it reads its messages from an attached stdin socket."""

    def __init__(self, container, stdin):
        self.container, self.stdin = container, stdin
        self.pump: LinePump | None = None
        self.reason: str | None = None

    def send(self, message: events.Message) -> None:
        try:
            self.stdin._sock.sendall((events.encode(message) + "\n").encode())
        except OSError:  # the container is gone: poll() reports it
            pass

    def poll(self) -> int | None:
        try:
            self.container.reload()
            if self.container.status not in ("exited", "dead"):
                return None
            code = int(self.container.wait(timeout=30).get("StatusCode", 1))
        except Exception as err:  # removed by hand, or the engine restarted: the worker is gone either way
            self.reason = self.reason or f"its container is gone ({type(err).__name__})"
            self._close_stdin()
            return CONTAINER_GONE
        self.pump.join(timeout=10)
        self._close_stdin()
        _remove(self.container)
        return code

    def stop(self) -> None:
        self._close_stdin()
        try:
            self.container.stop(timeout=10)
        except Exception:  # already gone or engine hiccup: removal below is what matters
            pass
        _remove(self.container)

    def _close_stdin(self) -> None:
        raw = getattr(self.stdin, "_sock", None)  # SocketIO.close() forgets the socket without closing it
        try:
            if raw is not None:
                raw.close()
            self.stdin.close()
        except OSError:
            pass


class FailedStart:
    """A worker container that never started: exit code START_FAILED, and `reason` (the translated one-line error)
    for the run's messages. The queue retires its device; the other devices go on."""

    def __init__(self, reason: str):
        self.reason = reason

    def send(self, message: events.Message) -> None:
        """Nothing runs to receive it."""

    def poll(self) -> int:
        return START_FAILED

    def stop(self) -> None:
        """Nothing runs: the container that could not start was already removed."""


def _remove(container) -> None:
    try:
        container.remove(force=True)
    except Exception:  # NotFound after auto-removal, or a removal already in progress
        pass


class DockerBackend(Backend):
    name = "docker"

    def __init__(
        self, devices: list[str], options, image: str | None = None, address: str | None = None, *, client=None
    ):
        super().__init__(devices, options, image, address)
        self.client = client
        gpu = any(d.startswith("cuda") for d in devices)
        self.image = image or ("vda:latest" if gpu else "vda:cpu")
        self._image_target = "image" if gpu else "image-cpu"
        self.checkpoint = Path(options.checkpoint).resolve() if options.checkpoint else None

    @staticmethod
    def visible_gpus(address: str | None = None) -> int:
        return visible_gpus()

    def open(self, root, videos) -> None:
        """Connect, check the image (and its compiler for --compile), and remove what a dead host left here."""
        import docker

        super().open(root, videos)
        self.root_path = root.path.resolve()
        self.client = self.client or connect()
        try:
            self.client.images.get(self.image)
        except docker.errors.ImageNotFound:
            raise DockerError(
                f"image {self.image} not found; build it with `make {self._image_target}` or pass --image"
            ) from None
        self._remove_orphans()  # containers of an earlier host on this run folder (killed with -9) hold its devices
        self._inputs = {v.input.resolve(): f"{INPUT_MOUNT}/{k}/{v.input.name}" for k, v in enumerate(videos)}
        if self.options.compile:
            self.check_compiler()

    def worker_path(self, path: Path) -> str:
        path = Path(path).resolve()
        if path in self._inputs:
            return self._inputs[path]
        if path == self.root_path or self.root_path in path.parents:
            return str(Path(RUN_MOUNT) / path.relative_to(self.root_path))
        raise DockerError(f"{path} is neither an input nor inside the run folder {self.root_path}; this is a bug")

    # -- what every container gets ---------------------------------------------------------------
    def _mounts(self, extra: dict | None = None) -> list:
        from docker.types import Mount

        mounts = [Mount(target, str(src), type="bind", read_only=True) for src, target in self._inputs.items()]
        mounts.append(Mount(RUN_MOUNT, str(self.root_path), type="bind"))
        if self.checkpoint:
            mounts.append(Mount(CKPT_MOUNT, str(self.checkpoint.parent), type="bind", read_only=True))
        elif models_dir().is_dir():
            mounts.append(Mount(MODELS_MOUNT, str(models_dir().resolve()), type="bind", read_only=True))
        if self.options.compile:  # the host's compile cache, shared by its containers and later runs
            cache = config.current().compile_cache
            cache.mkdir(parents=True, exist_ok=True)
            mounts.append(Mount(COMPILE_CACHE_MOUNT, str(cache), type="bind"))
        if self.options.runtime == "onnx":  # the host's export cache: each graph exported once, for every container
            cache = config.current().onnx_cache
            cache.mkdir(parents=True, exist_ok=True)
            mounts.append(Mount(ONNX_CACHE_MOUNT, str(cache), type="bind"))
        for target, source in (extra or {}).items():
            mounts.append(Mount(target, str(source), type="bind"))
        return mounts

    def _env(self, device: str) -> dict:
        env = worker_env(
            self.devices, device, self.options, compile_cache=COMPILE_CACHE_MOUNT, onnx_cache=ONNX_CACHE_MOUNT
        )
        if device.startswith("cuda"):
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        return env

    def _create(self, command: list[str], device: str, labels: dict, extra_mounts: dict | None = None, stdin=False):
        """Create and start a container; when the start fails (a GPU request is checked only then), the created
        container is removed here, and only that one: the other devices' containers keep running."""
        from docker.types import DeviceRequest

        api = self.client.api
        requests = []
        if device.startswith("cuda"):
            requests = [
                DeviceRequest(driver="nvidia", device_ids=[device.partition(":")[2] or "0"], capabilities=[["gpu"]])
            ]
        try:
            host = api.create_host_config(
                mounts=self._mounts(extra_mounts), network_mode="none", device_requests=requests or None
            )
            config = api.create_container_config(
                self.image,
                command,
                user=f"{os.getuid()}:{os.getgid()}",
                environment=self._env(device),
                labels={LABEL_RUN: str(self.root_path), LABEL_OWNER: owner(), **labels},
                stdin_open=stdin,
                host_config=host,
            )
            config["StdinOnce"] = stdin  # stdin closes when the host detaches: a worker never outlives its host
            container = self.client.containers.get(api.create_container_from_config(config)["Id"])
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

        Otherwise every worker container would fail the same way, on every device.
        """
        import docker
        from vda.device.runtime import UnsupportedDevice

        probe = ["sh", "-c", "command -v cc || command -v gcc || command -v clang"]
        try:
            self.client.containers.run(self.image, probe, remove=True, network_mode="none")
        except docker.errors.ContainerError as err:  # the probe ran and found no compiler
            raise UnsupportedDevice(
                f"--compile needs a C compiler in the image {self.image} (torch.compile builds kernels), and it has "
                "none; run without --compile, or build an image with gcc"
            ) from err
        except Exception as err:  # the engine itself failed: say what docker said
            raise translate(err) from None

    # -- backend contract ------------------------------------------------------------------------
    def start_worker(self, slot: int, device: str, log_path: Path, on_line) -> DockerHandle | FailedStart:
        """Start the worker container of SLOT on DEVICE. One that cannot start is a FailedStart (exit 125)."""
        checkpoint = f"{CKPT_MOUNT}/{self.checkpoint.name}" if self.checkpoint else None
        command = worker_command(PROGRAM, device, slot, self.options, checkpoint)
        logger.debug("worker %d on %s: docker run %s %s", slot, device, self.image, " ".join(command))
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            container = self._create(command, device, {LABEL_SLOT: str(slot), LABEL_ROLE: "worker"}, stdin=True)
        except DockerError as err:
            reason = str(err)
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(f"$ docker run {self.image} {' '.join(command)}  # failed to start on {device}\n{reason}\n")
            on_line(reason)
            return FailedStart(reason)
        with open(log_path, "a") as log:
            log.write(f"$ docker run {self.image} {' '.join(command)}  # {container.short_id} on {device}\n")
        stdin = self.client.api.attach_socket(container.id, params={"stdin": 1, "stream": 1})
        handle = DockerHandle(container, stdin)
        handle.pump = LinePump(_lines(container), log_path, on_line, handle)
        return handle

    def merge(self, request: MergeRequest) -> None:
        """Run one video's merge container; raises DockerError with the end of its log if it fails."""
        out = Path(request.out).resolve()
        out.mkdir(parents=True, exist_ok=True)
        source = self.worker_path(request.input) if request.input else None
        command = ["vda", "merge", self.worker_path(request.run.path), "-o", OUT_MOUNT, *request.flags(source)]
        log_path = request.run.logs / "merge.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        container = self._create(command, "cpu", {LABEL_ROLE: "merge"}, {OUT_MOUNT: out})
        try:
            code = int(container.wait().get("StatusCode", 1))
            logs = container.logs().decode("utf-8", errors="replace")
            log_path.write_text(logs)
        finally:
            _remove(container)
        if code != 0:
            tail = " | ".join(logs.strip().splitlines()[-3:])
            raise DockerError(f"merge container failed (exit {code}): {tail}; full log in {log_path}")

    def _remove_orphans(self) -> None:
        """Remove the containers on this run folder whose `vda depth` is gone; a live one's are refused, never touched.

        The run folder's lock (RunDir.locked) already refuses a second `vda depth` here; this guards the containers
        of a host that shares the folder without sharing its lock (another engine user, an older vda's lock-less run).
        """
        label = f"{LABEL_RUN}={self.root_path}"
        for c in self.client.containers.list(all=True, filters={"label": label}):
            host, _, pid = (c.labels.get(LABEL_OWNER) or "").rpartition(":")
            mine = host == owner().rpartition(":")[0]
            if pid.isdigit() and (not mine or process_alive(int(pid))) and c.labels.get(LABEL_OWNER) != owner():
                raise DockerError(
                    f"{self.root_path} is in use by the containers of another vda (pid {pid} on {host}); wait for it "
                    "to finish, stop it, or use another output folder"
                )
            _remove(c)

    def close(self) -> None:
        """Remove every container this process started on this run folder, whatever state it is in: no orphans.
        Another process's containers on the folder are not this one's to remove."""
        if self.client is None or not hasattr(self, "root_path"):
            return
        try:
            labels = [f"{LABEL_RUN}={self.root_path}", f"{LABEL_OWNER}={owner()}"]
            for c in self.client.containers.list(all=True, filters={"label": labels}):
                _remove(c)
        except Exception:  # engine gone: nothing left that we could remove
            pass


def _lines(container):
    """A container's output as lines, as it comes."""
    buffer = ""
    for chunk in container.logs(stream=True, follow=True):
        buffer += chunk.decode("utf-8", errors="replace")
        *lines, buffer = buffer.split("\n")
        yield from (line + "\n" for line in lines)
    if buffer:
        yield buffer
