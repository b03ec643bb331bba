"""Every relative link in README.md and docs/*.md resolves: the file exists, and a `#anchor` names a heading."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")


def prose(text: str) -> str:
    """The text without fenced blocks and inline code, where a `[x](y)` is not a link."""
    return CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings, with GitHub's -1, -2 suffixes for repeats."""
    seen: dict[str, int] = {}
    found = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(page: Path) -> list[str]:
    return [target for target in LINK.findall(prose(page.read_text())) if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


def test_there_are_pages_with_links():
    assert (ROOT / "docs").is_dir() and len(PAGES) > 1
    assert links(ROOT / "README.md"), "the README links into docs/"


def broken(page: Path) -> list[str]:
    """The relative links of `page` that do not resolve, each with why."""
    found = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            found.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            found.append(f"{target}: no heading #{anchor} in {dest.name}")
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    assert not broken(page), f"{page.relative_to(ROOT)}: " + "; ".join(broken(page))


def test_the_check_catches_a_broken_link(tmp_path):
    """A missing file and a missing anchor are found; a good anchor, a URL and links in code are not."""
    (tmp_path / "a.md").write_text("# Many hosts: `--backend ray`\n\n## Faults\n\n## Faults\n")
    assert anchors(tmp_path / "a.md") == {"many-hosts---backend-ray", "faults", "faults-1"}
    page = tmp_path / "b.md"
    page.write_text(
        "[ok](a.md#faults-1) [self](#nowhere) [gone](missing.md) [no anchor](a.md#faults-2)\n"
        "`[code](x.md)` [web](https://example.com)\n```\n[fenced](y.md)\n```\n"
    )
    assert links(page) == ["a.md#faults-1", "#nowhere", "missing.md", "a.md#faults-2"]
    assert broken(page) == [
        "#nowhere: no heading #nowhere in b.md",
        "missing.md: no such file",
        "a.md#faults-2: no heading #faults-2 in a.md",
    ]
