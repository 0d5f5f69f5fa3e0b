"""User docs stand alone in a clone: every relative link resolves inside the repository, no path points
outside it, and no phrase speaks of the machine they were written on or of internal issue numbers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from training.config import TrainingConfig

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
# Phrases that only make sense to whoever wrote the doc, where it was written.
PRIVATE = re.compile(
    r"this(\s[\w-]+){0,2}\s(box|machine)|\bissue #?\d+|\.\./shared|shared folder|DESIGN\.md", re.IGNORECASE
)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_links_resolve_inside_the_repository(doc: Path) -> None:
    for target in LINK.findall(doc.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a URL or an anchor in the same file
        path = (doc.parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(REPO) and path.exists(), f"{doc.name}: link to {target}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_no_private_phrases(doc: Path) -> None:
    found = [m.group(0) for m in PRIVATE.finditer(doc.read_text(encoding="utf-8"))]
    assert not found, f"{doc.name}: {found}"


def test_the_onednn_default_in_the_docs_is_the_codes() -> None:
    text = (REPO / "docs" / "training.md").read_text(encoding="utf-8")
    (default,) = re.findall(r"\| `run\.mkldnn` \| `(\w+)` \|", text)
    assert default == TrainingConfig().run.mkldnn == "on"
