"""Resume tokens: a token correctly signed with the server's key but holding NaN or infinite state or logits
is refused (INVALID_ARGUMENT, counted as `non_finite`); and the token size docs/api.md states is the size
a token of the shipped model really has."""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from charrnn.artifact import load_manifest
from charrnn.v1 import charrnn_pb2 as pb
from charrnn.v1 import charrnn_pb2_grpc as pb_grpc
from service.context import Context
from service.tokens import TokenCodec
from tests.observability.scrape import value
from tests.service.harness import REPO, TEST_KEY, ServerThread, make_config

HEADER, MAC = 64, 32  # bytes around a token's float32 values (docs/api.md)


def _resign(token: bytes, index: int, bad: float) -> bytes:
    """The same token with one float32 value replaced, signed again with the server's key."""
    values = np.frombuffer(token[HEADER:-MAC], "<f4").copy()
    values[index] = bad
    payload = token[:HEADER] + values.tobytes()
    return payload + hmac.new(TEST_KEY.encode(), payload, hashlib.sha256).digest()


@pytest.fixture(scope="module")
def server(lstm_dir: Path) -> Iterator[ServerThread]:
    with ServerThread(make_config(lstm_dir)) as srv:
        yield srv


@pytest.mark.parametrize(("where", "bad"), [("logit", math.nan), ("state", math.inf), ("state", -math.inf)])
def test_a_signed_token_with_non_finite_values_is_refused(server: ServerThread, where: str, bad: float) -> None:
    assert server.server is not None
    registry = server.server.metrics.registry
    before = value(registry, "charrnn_resume_tokens_refused_total", reason="non_finite")
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.CharRNNStub(channel)
        good = stub.Score(pb.ScoreRequest(text="def f(x):")).resume_token
        assert stub.Score(pb.ScoreRequest(text="ab", resume_token=good)).total_nats > 0, "the untouched token works"
        vocab = server.server.runtime.manifest.model.vocab_size
        forged = _resign(good, 3 if where == "logit" else vocab + 5, bad)
        calls = (
            lambda: stub.Score(pb.ScoreRequest(text="ab", resume_token=forged)),
            lambda: list(stub.Generate(pb.GenerateRequest(max_chars=3, resume_token=forged))),
            lambda: list(stub.Session(iter([pb.SessionRequest(load=pb.LoadAction(resume_token=forged))]))),
        )
        for call in calls:
            with pytest.raises(grpc.RpcError) as info:
                call()
            err: grpc.Call = info.value
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
            assert "NaN or infinite" in (err.details() or "")
    assert value(registry, "charrnn_resume_tokens_refused_total", reason="non_finite") == before + len(calls)


def test_shipped_model_token_size_is_what_the_api_docs_say() -> None:
    manifest = load_manifest(REPO / "models" / "default")
    layers, hidden = manifest.state_shape
    states, vocab = len(manifest.onnx.states), manifest.model.vocab_size
    codec = TokenCodec(b"k", manifest.onnx.sha256, states, layers, hidden, vocab)
    zeros = tuple(np.zeros((layers, hidden), np.float32) for _ in range(states))
    token = codec.encode(Context(zeros, np.zeros(vocab, np.float32), seed=1, position=2))
    assert len(token) == 4 * (vocab + states * layers * hidden) + HEADER + MAC
    api = (REPO / "docs" / "api.md").read_text(encoding="utf-8")
    assert f"+ {HEADER + MAC}" in api and "+ 82" not in api
    for doc in ("api.md", "operations.md"):
        text = (REPO / "docs" / doc).read_text(encoding="utf-8")
        sizes = {float(k) for k in re.findall(r"~(\d+\.\d) KB for the shipped model", text)}
        assert sizes == {round(len(token) / 1000, 1)}, (doc, sizes, len(token))
