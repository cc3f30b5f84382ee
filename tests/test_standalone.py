"""The repository stands alone: a clone from a forge has nothing beside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# A path that leaves the checkout for the team's reading folder beside it (or any absolute
# path through a folder of that name): what a clone from a forge does not have. The name
# is put together here so that this file does not name it itself.
SIBLING = b"sha" + b"red"
OUTSIDE = re.compile(rb"\.\./" + SIBLING + rb"|/" + SIBLING + rb"/")
SKIPPED = {".git", ".venv", ".demo", ".bench", "build", "dist", "__pycache__"}


def tracked_files() -> list[Path]:
    """The files git tracks; outside a git checkout (an unpacked archive), every file."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return [p for p in ROOT.rglob("*")
                if not SKIPPED.intersection(p.relative_to(ROOT).parts)]
    return [ROOT / name for name in out.decode().split("\0") if name]


def test_no_tracked_file_refers_outside_the_repository():
    # Docs, tests, scripts and the Makefile name only files inside the repository: a
    # reference to the folder beside the checkout would break a clone (or a docs link
    # would lead nowhere).
    files = tracked_files()
    assert any(p.name == "README.md" for p in files)  # the listing really is this repository
    me = Path(__file__).resolve()
    found = []
    for path in files:
        if path.resolve() == me or not path.is_file():
            continue
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.decode(errors='replace')}")
    assert found == []


def test_the_corpus_is_inside_the_repository():
    # The corpus tests read their mails from tests/data/corpus, with the licences kept.
    corpus = ROOT / "tests" / "data" / "corpus"
    assert len(list(corpus.rglob("*.eml"))) == 735
    for name in ("README.md", "mikel-mail/MIT-LICENSE", "sisimai/LICENSE"):
        assert (corpus / name).is_file(), name
