"""Published checkpoints and how a run finds the file.

Resolution order: an explicit path, then the models/ folder (or $VDA_MODELS_DIR), then the
Hugging Face cache through huggingface-hub (which downloads when online).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"  # the checkout's models/ (README there)


class WeightsError(Exception):
    """A checkpoint that cannot be found; the message says where to put it."""


@dataclass(frozen=True)
class Checkpoint:
    repo_id: str
    filename: str
    encoder: str
    metric: bool
    license: str

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}/blob/main/{self.filename}"


_SIZES = {"vits": ("Small", "Apache-2.0"), "vitb": ("Base", "CC-BY-NC-4.0"), "vitl": ("Large", "CC-BY-NC-4.0")}

CHECKPOINTS: tuple[Checkpoint, ...] = tuple(
    Checkpoint(
        f"depth-anything/{'Metric-' if metric else ''}Video-Depth-Anything-{size}",
        f"{'metric_' if metric else ''}video_depth_anything_{enc}.pth",
        enc,
        metric,
        lic,
    )
    for metric in (False, True)
    for enc, (size, lic) in _SIZES.items()
)


def find(encoder: str, metric: bool) -> Checkpoint:
    for ck in CHECKPOINTS:
        if ck.encoder == encoder and ck.metric == metric:
            return ck
    raise WeightsError(f"no published checkpoint for encoder {encoder!r}; choose vits, vitb or vitl")


def models_dirs() -> list[Path]:
    """Folders searched for checkpoint files: $VDA_MODELS_DIR (colon-separated), else this folder."""
    env = os.environ.get("VDA_MODELS_DIR")
    return [Path(p) for p in env.split(os.pathsep) if p] if env else [MODELS_DIR]


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
