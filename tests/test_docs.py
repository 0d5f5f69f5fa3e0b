"""Docs that are generated from code must match it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_settings_table_matches_the_settings_dataclasses() -> None:
    spec = importlib.util.spec_from_file_location("settings_table", REPO / "scripts" / "settings_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.DOC.read_text(encoding="utf-8")
    assert module.BEGIN in text and module.END in text, "docs/operations.md lost its settings-table markers"
    assert module.render(text) == text, "docs/operations.md's settings table is stale: python scripts/settings_table.py"
