"""Run the test suite in a copy of the repository that has nothing beside it, as a user's clone has.

    python tests/alone.py [pytest arguments ...]        # what `make test` runs

Our build machines have `../shared` next to the repository; users' clones do not. So that the suite can never
quietly depend on it again, `make test` runs it here: the project's files (what git tracks, plus new files git does
not ignore) are copied into a fresh temporary folder, and pytest runs there with `-m "not shared"`. Tests marked
`shared` then run in place, where `../shared` exists.

Only the build outputs the run needs come along: `.venv` as a symbolic link (the interpreter and dependencies; imports
of `vda` resolve to the copy first) and `wheelhouse/` as a folder of hard links (the offline CPU image build; Docker's
build context does not follow a symbolic link). Modification times are kept, so make sees `.venv` as up to date.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINKED = (".venv",)  # build outputs the tests use, linked; never data
HARDLINKED = ("wheelhouse",)  # the same, as real folders of hard links (copies across filesystems)
SKIPPED = {".git", ".venv", "wheelhouse", "out", "runs", "build", "dist", "__pycache__", ".pytest_cache", ".ruff_cache"}


def project_files(root: Path = ROOT) -> list[Path]:
    """Paths relative to `root`: git's tracked and untracked-but-not-ignored files, or a walk without a .git."""
    if (root / ".git").exists() and shutil.which("git"):
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            capture_output=True,
            check=True,
        ).stdout.split(b"\0")
        return [Path(os.fsdecode(p)) for p in listed if p and (root / os.fsdecode(p)).is_file()]
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIPPED and not d.endswith(".egg-info")]
        found += [Path(folder, f).relative_to(root) for f in files if not f.endswith(".pyc")]
    return found


def make_copy(dest_parent: Path, root: Path = ROOT) -> Path:
    """Copy the project into dest_parent/<name> (dest_parent holds nothing else) and link the build outputs."""
    copy = dest_parent / root.name
    for rel in project_files(root):
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, copy / rel)
    for name in LINKED:
        if (root / name).exists() and not (copy / name).exists():
            (copy / name).symlink_to(root / name)
    for name in HARDLINKED:
        if (root / name).is_dir():
            shutil.copytree(root / name, copy / name, copy_function=_link_or_copy, dirs_exist_ok=True)
    return copy


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem
        shutil.copy2(src, dst)


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="vda-alone-") as tmp:
        copy = make_copy(Path(tmp))
        assert not (copy.parent / "shared").exists()
        print(f"tests/alone.py: running the suite in {copy} (no ../shared beside it)", flush=True)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(copy), os.environ.get("PYTHONPATH")]))}
        env.setdefault("VDA_TEST_IMAGE_BUILD", "missing")  # `make test` has just built the image from these files
        return subprocess.call([sys.executable, "-m", "pytest", "-m", "not shared", *argv], cwd=copy, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
