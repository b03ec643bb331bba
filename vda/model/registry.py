"""Published checkpoints and how a run finds the file.

The table of published checkpoints is `registry.json` next to this module: the code reads it here, and
`docker/Dockerfile` reads the same file to bake weights into an image (CHECKPOINT=<name>). Resolution order: an
explicit path, then the models folders (vda.config: the checkout's models/, or $VDA_MODELS_DIR), then the Hugging Face
cache through huggingface-hub (which downloads when online).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from vda import config
from vda.errors import WeightsError

TABLE = Path(__file__).with_name("registry.json")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    name: str  # the table's key, as CHECKPOINT=<name> in the Dockerfile: vits, ..., metric-vitl
    repo_id: str
    filename: str
    encoder: str
    metric: bool
    license: str

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}/blob/main/{self.filename}"


def read_table(path: Path = TABLE) -> tuple[Checkpoint, ...]:
    rows = json.loads(path.read_text())["checkpoints"]
    return tuple(
        Checkpoint(name, row["repo"], row["file"], row["encoder"], row["metric"], row["license"])
        for name, row in rows.items()
    )


CHECKPOINTS: tuple[Checkpoint, ...] = read_table()
ENCODERS = tuple(dict.fromkeys(ck.encoder for ck in CHECKPOINTS))  # vits, vitb, vitl: the --encoder choices


def find(encoder: str, metric: bool) -> Checkpoint:
    for ck in CHECKPOINTS:
        if ck.encoder == encoder and ck.metric == metric:
            return ck
    raise WeightsError(f"no published checkpoint for encoder {encoder!r}; choose vits, vitb or vitl")


def models_dirs() -> list[Path]:
    """Folders searched for checkpoint files (vda.config: $VDA_MODELS_DIR, else the models/ folder)."""
    return list(config.current().models_dirs)


def models_dir() -> Path:
    return models_dirs()[0]


def local_file(ck: Checkpoint) -> Path | None:
    """The checkpoint's file in the models folders, if one holds it (the Hugging Face cache is not looked at)."""
    return next((d / ck.filename for d in models_dirs() if (d / ck.filename).is_file()), None)


def resolve(encoder: str, metric: bool, checkpoint: str | Path | None = None, *, download: bool = True) -> Path:
    """Path of the checkpoint file; prints the licence of the published weights it uses."""
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            raise WeightsError(f"checkpoint not found: {path}; check --checkpoint")
        return path
    ck = find(encoder, metric)
    local = local_file(ck)
    if local is None:
        local = _from_hub(ck, models_dir() / ck.filename, download)
    print(f"vda: using {ck.filename} ({ck.repo_id}), licence {ck.license}", file=sys.stderr)
    log.info("checkpoint %s: %s", ck.name, local)
    return local


def _from_hub(ck: Checkpoint, local: Path, download: bool) -> Path:
    advice = (
        f"checkpoint {ck.filename} not found; download it from {ck.url} and place it at {local}, "
        "or pass --checkpoint PATH"
    )
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise WeightsError(advice) from None
    try:
        return Path(hf_hub_download(ck.repo_id, ck.filename, local_files_only=not download))
    except Exception as err:  # offline, hub unreachable, gated, ...: all end in the same advice
        raise WeightsError(f"{advice} (hub: {type(err).__name__})") from err
