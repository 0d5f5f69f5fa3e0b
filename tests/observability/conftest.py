"""Fixtures for the observability tests: a tiny artifact and a running server with metrics."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.harness import ServerThread, make_config
from tests.service.tinymodel import TinySpec, export


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(TinySpec(), tmp_path_factory.mktemp("obs-artifact") / "lstm")


@pytest.fixture
def server(model_dir: Path) -> Iterator[ServerThread]:
    """A real server (fresh metrics registry) with /metrics on a free port."""
    with ServerThread(make_config(model_dir, metrics_port=0, max_sessions=2)) as srv:
        yield srv
