"""The suite's own independence from ../shared: the copy `make test` runs in, and no product file reaching out."""

from __future__ import annotations

import os
import re
from pathlib import Path

from alone import HARDLINKED, LINKED, make_copy, project_files
from conftest import ROOT


def test_the_copy_has_the_project_and_nothing_beside_it(tmp_path):
    copy = make_copy(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [ROOT.name]
    for rel in (
        "tests/data/reference_vits_seed0.npz",
        "tests/data/checkpoint_layout.json",
        "vda/model/synth.py",
        "Makefile",
    ):
        assert (copy / rel).read_bytes() == (ROOT / rel).read_bytes()
    assert not (copy / ".git").exists()
    for name in LINKED:
        if (ROOT / name).exists():
            assert (copy / name).is_symlink() and (copy / name).resolve() == (ROOT / name).resolve()
    for name in HARDLINKED:
        if (ROOT / name).is_dir():
            assert not (copy / name).is_symlink()
            assert sorted(p.name for p in (copy / name).iterdir()) == sorted(p.name for p in (ROOT / name).iterdir())
    copied = [Path(d, f) for d, _, files in os.walk(copy) for f in files]  # does not enter the linked folders
    assert copied and not [p for p in copied if p.suffix in (".pth", ".pyc", ".part")]


def test_no_product_file_reads_shared():
    """Code, benchmarks and images never name ../shared: it exists on our build machines only.

    (The Makefile does, once: `make test` runs the optional tests marked `shared` where it exists.)
    """
    pattern = re.compile(r"shared/(fixtures|videos)|parent / \"shared\"|[\"']\.\./shared")  # paths, not prose
    offenders = [
        str(rel)
        for rel in project_files()
        if rel.parts[0] in ("vda", "models", "bench", "docker", ".ci") or rel.name == "compose.yaml"
        if pattern.search((ROOT / rel).read_text(errors="replace"))
    ]
    assert offenders == []
