"""Several models over HTTP: `model` picks one, /v1/models lists them all (the default first), each card has
the model's own units and limits, an unknown name is 404 listing the served ones (OpenAI's error shape)."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from charrnn.client import Client
from tests.http.conftest import MODEL, PROMPT, base_url, post
from tests.observability.scrape import series
from tests.service.harness import ServerThread, make_config
from tests.service.tinymodel import TinySpec, export


@pytest.fixture(scope="module")
def repo(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repository")
    shutil.copytree(model_dir, root / MODEL)
    export(TinySpec(cell="gru", layers=1, hidden=16, embedding=8, seed=5), root / "small")
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[ServerThread]:
    with ServerThread(make_config(None, model_repository=repo, default_model="small", http_port=0)) as srv:
        yield srv


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_v1_models_lists_every_model_the_default_first(server: ServerThread) -> None:
    status, body = _get(f"{base_url(server)}/v1/models")
    assert status == 200
    cards = body["data"]
    assert [(c["id"], c["charrnn"]["default"]) for c in cards] == [("small", True), (MODEL, False)]
    assert [(c["charrnn"]["cell"], c["charrnn"]["hidden_size"]) for c in cards] == [("gru", 16), ("lstm", 24)]
    status, card = _get(f"{base_url(server)}/v1/models/{MODEL}")
    assert status == 200 and card == cards[1]
    status, error = _get(f"{base_url(server)}/v1/models/{'x' * 300}")
    assert status == 404 and error["error"]["code"] == "not_found" and error["error"]["param"] == "model"
    assert error["error"]["message"].endswith(f"served: small, {MODEL}") and len(error["error"]["message"]) < 200


def test_the_body_s_model_picks_the_model_and_its_absence_the_default(server: ServerThread) -> None:
    url = f"{base_url(server)}/v1/completions"
    with Client(server.target, timeout=30) as client:
        for model in (MODEL, "small", None):
            body = {"prompt": PROMPT, "max_tokens": 60, "seed": 4} | ({"model": model} if model else {})
            status, _, answer = post(url, body)
            assert status == 200, answer
            served = model or "small"
            assert answer["model"] == served
            expected = client.generate(PROMPT, max_chars=60, seed=4, model=served).text()
            assert answer["choices"][0]["text"] == expected
    status, _, answer = post(url, {"prompt": PROMPT, "model": "gpt-4"})
    assert status == 404 and answer["error"]["message"].endswith(f"served: small, {MODEL}")
    assert answer["error"]["type"] == "not_found_error"
    assert server.server is not None
    assert {s.get("model") for s in series(server.registry, "charrnn_streams_finished_total")} == {MODEL, "small"}
