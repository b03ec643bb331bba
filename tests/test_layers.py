"""The package's structure, read from the code: layers import downwards only (every import, also inside functions and
under TYPE_CHECKING), no import cycle, no long module or function, one copy of the shared mechanisms, and no lab notes
(issue numbers, commits, benchmark histories) in vda/."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vda"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# Rank of each part of the package: a module imports parts of lower rank, and its own part. Parts of one rank never
# import each other (device and merge both stand on io, model and core; what both need lives below them).
RANKS = {
    **dict.fromkeys(["vda.errors", "vda.config", "vda.files", "vda.system", "vda.logs", "vda.events"], 0),
    "vda.core": 1,
    "vda.model": 2,
    "vda.io": 3,
    **dict.fromkeys(["vda.device", "vda.merge", "vda.analysis", "vda.report"], 4),
    "vda.orchestrator": 5,
    "vda.api": 6,
    "vda.cli": 7,
    **dict.fromkeys(["vda", "vda.__main__"], 8),
}
BASE = {name for name, rank in RANKS.items() if rank == 0}


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def part(module: str) -> str:
    """The part of the package a module belongs to (a key of RANKS)."""
    if module in RANKS:
        return module
    return ".".join(module.split(".")[:2])


def imports(source: str, known: set[str]) -> set[str]:
    """Every package module `source` imports, wherever the import stands (module level, function, TYPE_CHECKING)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target.startswith("vda"):
                found.add(target)
    return found


def upward(name: str, imported: set[str]) -> list[str]:
    """The imports of module `name` that break the layering."""
    own = part(name)
    bad = []
    for target in sorted(imported):
        theirs = part(target)
        if theirs == own or (own in BASE and theirs in BASE) or target == "vda":
            continue
        if RANKS[theirs] >= RANKS[own]:
            bad.append(f"{name} -> {target}")
    return bad


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(path.read_text(), set(mods)) - {name} for name, path in mods.items()}


def test_every_module_has_a_layer():
    assert [name for name in modules() if part(name) not in RANKS] == []


def test_imports_go_down_the_layers_only():
    assert [bad for name, targets in graph().items() for bad in upward(name, targets)] == []


def test_an_upward_import_inside_a_function_is_caught():
    """The check reads imports in functions and under TYPE_CHECKING too, where an upward import hides most easily."""
    known = set(modules())
    planted = "def f():\n    from vda.orchestrator.planning import create_plan\n"
    assert upward("vda.core.plan", imports(planted, known)) == ["vda.core.plan -> vda.orchestrator.planning"]
    typed = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from vda.merge.render import Job\n"
    assert upward("vda.device.worker", imports(typed, known)) == ["vda.device.worker -> vda.merge.render"]
    assert upward("vda.merge.render", imports("import vda.io.probe\n", known)) == []


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1 and nxt != "vda":  # every module may see the package root
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(nxt) :] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_no_module_over_400_lines_and_no_function_over_60():
    long = []
    for name, path in modules().items():
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert long == []


@pytest.mark.parametrize(
    ("pattern", "home", "what"),
    [
        (r"non_blocking=True", {"vda.device.transfer"}, "a copy between host and device"),
        (r"autocast\(\"fp32\"\)", {"vda.device.guard"}, "the fp32 recompute"),
        (r"iter\(lambda: \w+\.read\(", {"vda.files"}, "a whole file's hash"),
        (r"pin_memory=True", {"vda.device.transfer"}, "page-locked host memory"),
    ],
)
def test_one_copy_of_each_mechanism(pattern, home, what):
    """Each shared mechanism is written once, in its home module; everything else calls it."""
    found = {name for name, path in modules().items() if re.search(pattern, path.read_text())}
    assert found == home, f"{what} is written in {sorted(found)}; call the one in {sorted(home)}"


def test_no_lab_notes_in_the_package():
    """Issue numbers, commit hashes and benchmark histories go stale: they belong in git and bench/RESULTS.md."""
    notes = re.compile(r"\b[Ii]ssue \d+|RESULTS\.md|\bcommit [0-9a-f]{7,40}\b|\(#\d+\)")
    found = [
        f"{path.relative_to(ROOT)}:{k}: {line.strip()}"
        for path in modules().values()
        for k, line in enumerate(path.read_text().splitlines(), 1)
        if notes.search(line)
    ]
    assert found == []
