"""Resume tokens, server-side sessions, the Session stream, Score and GetModelInfo over gRPC."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from charrnn.client import CharRNNError, Client
from tests.service.conftest import SPECS
from tests.service.harness import ServerThread, make_config
from tests.service.tinymodel import build_model, vocabulary_chars

PROMPT = "import os\n"
SAMPLING = {"temperature": 0.9, "top_k": 30}


@pytest.fixture(scope="module")
def server(lstm_dir: Path) -> Iterator[ServerThread]:
    with ServerThread(make_config(lstm_dir, max_sessions=4)) as srv:
        yield srv


@pytest.fixture
def client(server: ServerThread) -> Iterator[Client]:
    with Client(server.target, timeout=30) as c:
        yield c


def test_resume_token_continues_exactly(client: Client) -> None:
    full = client.generate(PROMPT, max_chars=200, seed=11, **SAMPLING).text()
    first = client.generate(PROMPT, max_chars=100, seed=11, **SAMPLING)
    head = first.text()
    assert first.result is not None
    tail = client.generate(max_chars=100, resume_token=first.result.resume_token, **SAMPLING).text()
    assert head + tail == full
    # Greedy continuation with a new prompt = one greedy call over the concatenated text.
    g1 = client.generate(PROMPT, max_chars=20, temperature=0)
    a = g1.text()
    assert g1.result is not None
    b = client.generate("\n# x", max_chars=30, temperature=0, resume_token=g1.result.resume_token).text()
    assert b == client.generate(PROMPT + a + "\n# x", max_chars=30, temperature=0).text()


def test_tampered_and_foreign_tokens(client: Client, artifacts: dict[str, Path]) -> None:
    gen = client.generate(PROMPT, max_chars=5)
    gen.text()
    assert gen.result is not None
    token = bytearray(gen.result.resume_token)
    token[len(token) // 2] ^= 0x40
    with pytest.raises(CharRNNError) as err:
        client.generate(max_chars=5, resume_token=bytes(token)).text()
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "signature" in err.value.details
    with ServerThread(make_config(artifacts["lstm_other"])) as other, Client(other.target) as c:
        with pytest.raises(CharRNNError) as err:
            c.generate(max_chars=5, resume_token=gen.result.resume_token).text()
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(CharRNNError) as err:
            c.score("abc", resume_token=gen.result.resume_token)
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_server_side_sessions(client: Client) -> None:
    full = client.generate(PROMPT, max_chars=90, seed=5, **SAMPLING).text()
    gen = client.generate(PROMPT, max_chars=30, seed=5, create_session=True, **SAMPLING)
    parts = [gen.text()]
    assert gen.result is not None and gen.result.session_id
    sid = gen.result.session_id
    for _ in range(2):
        g = client.generate(max_chars=30, session_id=sid, **SAMPLING)
        parts.append(g.text())
        assert g.result is not None and g.result.session_id == sid
    assert "".join(parts) == full
    with pytest.raises(CharRNNError) as err:
        client.generate(max_chars=5, session_id="no-such-session").text()
    assert err.value.code == grpc.StatusCode.NOT_FOUND


def test_a_session_used_by_two_calls_at_once_is_refused(client: Client) -> None:
    gen = client.generate(PROMPT, max_chars=5, create_session=True)
    gen.text()
    assert gen.result is not None
    sid = gen.result.session_id
    slow = client.generate(max_chars=20000, session_id=sid)
    next(slow)
    with pytest.raises(CharRNNError) as err:
        client.generate(max_chars=5, session_id=sid).text()
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION and "in use" in err.value.details
    slow.cancel()


def test_session_lru_bound(client: Client) -> None:
    ids = []
    for _ in range(5):  # the server keeps 4
        gen = client.generate(PROMPT, max_chars=2, create_session=True)
        gen.text()
        assert gen.result is not None
        ids.append(gen.result.session_id)
    with pytest.raises(CharRNNError) as err:
        client.generate(max_chars=2, session_id=ids[0]).text()
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    client.generate(max_chars=2, session_id=ids[-1]).text()


def test_session_stream_feed_generate_token_cancel(client: Client) -> None:
    reference = client.generate(PROMPT + "x = 1\n", max_chars=60, seed=3, **SAMPLING).text()
    with client.session() as s:
        assert s.feed(PROMPT) == len(PROMPT)
        assert s.feed("x = 1\n") == 6
        gen = s.generate(max_chars=30, seed=3, **SAMPLING)
        head = gen.text()
        token = s.token()
        tail = s.generate(max_chars=30, **SAMPLING).text()
        assert head + tail == reference
        # The token taken mid-stream resumes elsewhere to the same text.
        assert client.generate(max_chars=30, resume_token=token, **SAMPLING).text() == tail
        # Cancel a long generation: it ends as "cancelled" and the session carries on from there.
        long = s.generate(max_chars=20000)
        first = next(long)
        s.cancel()
        rest = "".join(long)
        assert long.result is not None and long.result.finish_reason == "cancelled"
        assert 0 < len(first + rest) < 20000
        s.reset()
        assert (
            s.generate("hi", max_chars=10, temperature=0).text()
            == client.generate("hi", max_chars=10, temperature=0).text()
        )
        s.load(resume_token=token)
        assert s.generate(max_chars=30, **SAMPLING).text() == tail


def test_session_stream_errors_carry_codes(client: Client) -> None:
    with client.session() as s:
        with pytest.raises(CharRNNError) as err:
            s.load(session_id="missing")
        assert err.value.code == grpc.StatusCode.NOT_FOUND


@torch.no_grad()
def _torch_logprobs(text: str) -> np.ndarray:
    spec = SPECS["lstm"]
    model = build_model(spec)
    index = {c: i for i, c in enumerate(vocabulary_chars(spec.policy))}
    ids = torch.tensor([[index[c] for c in text]])
    zeros = torch.zeros(spec.layers, 1, spec.hidden)
    logits, *_ = model(ids, zeros, zeros)
    lp = torch.log_softmax(logits[0, :-1].double(), dim=-1)
    return lp[torch.arange(len(text) - 1), ids[0, 1:]].numpy()


def test_score_matches_torch_and_chains_through_tokens(client: Client) -> None:
    text = "def f(x):\n    return x + 1\n"
    r = client.score(text)
    assert r.first_scored == 1 and len(r.logprobs) == len(text) - 1
    np.testing.assert_allclose(r.logprobs, _torch_logprobs(text), atol=1e-4)
    assert math.isclose(r.total_nats, -sum(r.logprobs), rel_tol=1e-5)
    assert math.isclose(r.bits_per_char, r.total_nats / (len(text) - 1) / math.log(2), rel_tol=1e-9)
    # Scoring the second half from the first half's state covers every char of the second half.
    head, tail = text[:10], text[10:]
    first = client.score(head)
    second = client.score(tail, resume_token=first.resume_token)
    assert second.first_scored == 0 and len(second.logprobs) == len(tail)
    np.testing.assert_allclose(second.logprobs, r.logprobs[9:], atol=1e-5)
    # Generating from a Score token continues the scored text.
    greedy = client.generate(max_chars=20, temperature=0, resume_token=r.resume_token).text()
    assert greedy == client.generate(text, max_chars=20, temperature=0).text()
    with pytest.raises(CharRNNError) as err:
        client.score("")
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_model_info(client: Client, lstm_dir: Path) -> None:
    from charrnn.artifact import load_manifest

    info = client.info()
    m = load_manifest(lstm_dir)
    assert (info.name, info.cell, info.layers, info.hidden_size) == (m.model.name, "lstm", 2, 24)
    assert info.vocabulary == m.vocabulary.chars and info.unknown_policy == "replace"
    assert info.sha256 == m.onnx.sha256 and info.val_bits_per_char == 6.5
    assert info.limits["max_sessions"] == 4 and info.limits["max_live_streams"] == 64
