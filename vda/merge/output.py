"""A merge's output folder: what it writes there (`Output`), what it may replace, and which units a renderer ahead
(`ahead.RenderAhead`) has already written there.

A folder never mixes frames of two runs: another run's output is replaced only with --overwrite, and then deleted
first. Frames written ahead are this run's own; the record in RUN_DIR/rendered_ahead.json says how many units of
them are complete, for exactly this output (folder, format, size, scale), so that the merge, or a resumed one,
starts after them instead of deleting and writing them again.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from vda.core.plan import Plan, PlanError
from vda.errors import VdaError
from vda.files import write_json
from vda.io.rundir import RunDir
from vda.io.writers import FORMATS, LEVELS, META_NAME, STACK_NAME, DepthMeta

MERGED_MARKER = ".merged"
PREVIEW_NAME = "depth_vis.mp4"
OUTPUT_FILE = re.compile(r"depth_\d{6,}(" + "|".join(re.escape(ext) for ext in FORMATS.values()) + ")")
RENDERED_SCHEMA = 1
# Formats whose files do not depend on the video's value range, which only pass 1 over every unit knows: their
# frames can be written before the last unit is computed. png too, at a fixed --png-scale.
RANGE_FREE = ("npy", "npz", "exr")


@dataclass(frozen=True)
class Output:
    """What a merge writes for one video (the flags of `vda merge`)."""

    out_dir: Path
    fmt: str = "png16"
    output_size: str = "source"
    png_scale: float | None = None
    create_video: bool | str = False
    overwrite: bool = False
    workers: int | None = None

    @property
    def renders_ahead(self) -> bool:
        """Whether frames can be final before pass 1 has seen every unit: files only (a video is encoded in order
        with the range's colours), in a format that needs no range."""
        fixed = self.fmt in LEVELS and self.png_scale is not None
        return not self.create_video and (self.fmt in RANGE_FREE or fixed)

    def key(self, plan: Plan) -> dict:
        """What frames written ahead must match to count for this output."""
        where = str(Path(self.out_dir).resolve())
        return {"run_id": plan.run_id, "out": where, "fmt": self.fmt, "size": self.output_size, "scale": self.png_scale}


def rendered_ahead(run_dir: Path, plan: Plan, output: Output) -> int:
    """Units (a prefix of the plan's pieces) whose frames are written in `output`'s folder, as recorded; 0 if none
    are, or the record is for another output or run."""
    if not output.renders_ahead:  # a video, or a range: the merge writes every frame
        return 0
    try:
        doc = json.loads(RunDir(run_dir).rendered_ahead.read_text())
    except (OSError, ValueError):
        return 0
    if not isinstance(doc, dict) or doc.get("schema_version") != RENDERED_SCHEMA or doc.get("key") != output.key(plan):
        return 0
    units = doc.get("units")
    return units if isinstance(units, int) and 0 <= units <= len(plan.all_pieces()) else 0


def record_rendered(run_dir: Path, plan: Plan, output: Output, units: int) -> None:
    """Record that the first `units` pieces' frames are written (called only once every one of their files is)."""
    doc = {"schema_version": RENDERED_SCHEMA, "key": output.key(plan), "units": units}
    write_json(RunDir(run_dir).rendered_ahead, doc)


def prepare_output(run_dir: Path, plan: Plan, output: Output) -> int:
    """Make `output`'s folder ready for this run's frames and return how many units are already written there.

    Frames this run wrote ahead are kept, with --overwrite too: they are the frames the merge would write. Else
    another run's output is refused, or with --overwrite deleted, and the record of frames written ahead is reset.
    """
    out_dir = Path(output.out_dir)
    done = rendered_ahead(run_dir, plan, output)
    if not (done and output.overwrite):
        refuse_foreign_output(out_dir, plan, output.overwrite)
    if not done:
        RunDir(run_dir).rendered_ahead.unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MERGED_MARKER).unlink(missing_ok=True)
    return done


def refuse_foreign_output(out_dir: Path, plan: Plan, overwrite: bool) -> None:
    """Never mix frames of two runs in one folder: another run's output is replaced only with --overwrite, and then
    deleted first, so that a shorter video leaves no frames of a longer one behind."""
    if overwrite:
        clear_output(out_dir)
        return
    if not (out_dir / META_NAME).is_file():
        return
    try:
        other = DepthMeta.load(out_dir).settings.get("run_id")
    except (VdaError, AttributeError):  # unreadable, from another version, or settings of another shape
        other = "unknown"
    if other != plan.run_id:
        raise PlanError(
            f"{out_dir} already holds the output of another run ({other}); "
            "choose another output folder or pass --overwrite"
        )


def clear_output(out_dir: Path) -> None:
    """Delete what a merge writes (its marker and depth_meta.json first, so that a folder half cleared never reads as
    complete), and nothing else a user keeps there."""
    if not out_dir.is_dir():
        return
    for name in (MERGED_MARKER, META_NAME, PREVIEW_NAME, STACK_NAME):
        (out_dir / name).unlink(missing_ok=True)
    with os.scandir(out_dir) as entries:
        for entry in entries:
            if OUTPUT_FILE.fullmatch(entry.name) and entry.is_file():
                os.unlink(entry.path)
