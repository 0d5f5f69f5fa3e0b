"""Rewrite the settings table in docs/operations.md from the settings dataclasses (the one source)."""

from __future__ import annotations

import sys
from pathlib import Path

from charrnn.settings import markdown_table
from service.config import ServerConfig

DOC = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
BEGIN, END = "<!-- settings-table:begin -->\n", "<!-- settings-table:end -->"


def render(text: str) -> str:
    """`text` with the block between the markers replaced by the generated table."""
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return head + BEGIN + markdown_table(ServerConfig) + END + tail


if __name__ == "__main__":
    DOC.write_text(render(DOC.read_text(encoding="utf-8")), encoding="utf-8")
    sys.exit(0)
