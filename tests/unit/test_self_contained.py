"""The repository carries its own design: no tracked file cites a document outside it.

Code comments and docs cite the repository's own files (``docs/design.md`` and the documents
it points to). A citation of a design brief that lives elsewhere ("DESIGN" followed by a
section sign, a path into a ``shared`` folder next to the checkout) means nothing to a reader
of a fresh clone, and neither does a Markdown link that leaves the repository or names a file
that is not in it. This test reads every file ``git ls-files`` lists.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Built from pieces so that this file does not match itself.
OUTSIDE = re.compile(
    "|".join(
        [
            r"\bDESIGN(?:\.md)?\s*" + "\u00a7",  # a section of a design brief that is not here
            r"\bshared/" + "DESIGN",
            r"\.\./" + r"shared\b",
            r"/work/" + r"(?:shared|helpers)\b",
        ]
    )
)

# A Markdown link or image: [text](target) or ![alt](target).
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def tracked_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, text=True
    ).stdout
    files = [name for name in out.split("\0") if name]
    assert "pyproject.toml" in files, f"git ls-files in {ROOT} did not list the repository"
    return files


def text_of(name: str) -> str | None:
    path = ROOT / name
    if not path.is_file():
        return None  # deleted in the work tree, not yet committed
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None  # binary (PNG plots, ...)
    return data.decode("utf-8", errors="replace")


def outside_citations(name: str, text: str) -> list[str]:
    return [f"{name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)!r}" for m in OUTSIDE.finditer(text)]


def broken_links(name: str, text: str) -> list[str]:
    """Relative links of a Markdown file that leave the repository or name no file in it."""
    problems = []
    base = (ROOT / name).parent
    for m in LINK.finditer(text):
        target = m.group(1).split("#", 1)[0]
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target):  # anchor only, or a URL
            continue
        resolved = (base / target).resolve()
        line = text.count("\n", 0, m.start()) + 1
        if not resolved.is_relative_to(ROOT):
            problems.append(f"{name}:{line}: {m.group(1)!r} leaves the repository")
        elif not resolved.exists():
            problems.append(f"{name}:{line}: {m.group(1)!r} names no file in the repository")
    return problems


def test_no_tracked_file_cites_a_document_outside_the_repository() -> None:
    found: list[str] = []
    for name in tracked_files():
        text = text_of(name)
        if text is None:
            continue
        found += outside_citations(name, text)
    assert not found, "cite docs/design.md (or another file of the repository) instead:\n" + "\n".join(found)


def test_markdown_links_stay_inside_the_repository() -> None:
    found: list[str] = []
    for name in tracked_files():
        if name.endswith(".md"):
            text = text_of(name)
            if text is not None:
                found += broken_links(name, text)
    assert not found, "\n".join(found)


def test_the_checks_catch_what_they_are_for() -> None:
    """The patterns match the citations they exist to refuse, and leave the cure alone."""
    bad = [
        "the policy (DESIGN " + "\u00a75, guarantee 5)",
        "see DESIGN.md " + "\u00a77",
        "as in ../" + "shared/notes.md",
        "/work/" + "shared/" + "DESIGN.md",
    ]
    for line in bad:
        assert outside_citations("x.py", line), line
    assert not outside_citations("x.py", 'the policy (docs/design.md, "Guarantees", 5. Identity)')
    assert broken_links("docs/x.md", "[brief](../../" + "elsewhere/DESIGN.md)")
    assert broken_links("docs/x.md", "[gone](no-such-file.md)")
    assert not broken_links(
        "docs/x.md", "[design](design.md#guarantees) [sedna](https://github.com/kubeedge/sedna)"
    )
