"""Fixtures for the HTTP tests: a tiny artifact and real servers with the HTTP listener on a free port."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.service.harness import ServerThread, make_config
from tests.service.tinymodel import TinySpec, export

PROMPT = "def main(argv):\n    "
MODEL = "tiny-lstm"  # the served name: the artifact's folder (the manifest's name is the same)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(TinySpec(), tmp_path_factory.mktemp("http-artifact") / MODEL)


def base_url(server: ServerThread) -> str:
    """The server's HTTP API root, e.g. http://127.0.0.1:41234."""
    assert server.server is not None and server.server.http.port
    return f"http://127.0.0.1:{server.server.http.port}"


@pytest.fixture
def server(model_dir: Path) -> Iterator[ServerThread]:
    """A fresh server (its own metrics registry) serving gRPC and HTTP."""
    with ServerThread(make_config(model_dir, http_port=0)) as srv:
        yield srv


def post(
    url: str, body: Any, headers: dict[str, str] | None = None, timeout: float = 30
) -> tuple[int, dict[str, str], Any]:
    """POST JSON (or raw bytes); (status, headers, parsed JSON body) whatever the status."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())
