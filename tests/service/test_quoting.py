"""Messages quote at most a bounded prefix of client input, so a long input cannot turn a NOT_FOUND into
gRPC's "metadata size exceeds limit" (the message travels in a trailer) or flood the logs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from charrnn.quoting import QUOTE_CHARS, quote
from charrnn.v1 import charrnn_pb2 as pb
from charrnn.v1 import charrnn_pb2_grpc as pb_grpc
from service.errors import InvalidRequest
from service.requests import Validator
from service.server import build_runtime
from tests.service.harness import ServerThread, make_config

# Past the ~8 KB of metadata gRPC allows a status message: echoed whole, these came back RESOURCE_EXHAUSTED
# ("metadata size exceeds limit") some or all of the time instead of NOT_FOUND.
LONG_IDS = ("s" * 10_000, "s" * 30_000)
BOUND = 200  # a message's length, whatever the input's


@pytest.fixture(scope="module")
def stub(artifacts: dict[str, Path]) -> Iterator[pb_grpc.CharRNNStub]:
    with ServerThread(make_config(artifacts["lstm_refuse"])) as srv, grpc.insecure_channel(srv.target) as channel:
        yield pb_grpc.CharRNNStub(channel)


def _refusal(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        result = call()  # type: ignore[operator]
        if not isinstance(result, pb.ScoreResponse):
            list(result)
    err: grpc.Call = info.value
    return err.code(), err.details() or ""


def test_quote_keeps_a_bounded_prefix() -> None:
    assert quote("abc") == "'abc'"
    long = quote("x" * 10_000 + "\n")
    assert long == f"{'x' * QUOTE_CHARS!r}… (10001 characters)"
    assert len(quote("\U0001f600" * 10_000)) < 12 * QUOTE_CHARS  # each character repr'd, still bounded
    assert quote("a\nb") == "'a\\nb'", "one line: control characters are escaped"


@pytest.mark.parametrize("long_id", LONG_IDS, ids=lambda s: f"{len(s) // 1000}k")
@pytest.mark.parametrize("rpc", ["Generate", "Score", "Session load"])
def test_a_long_session_id_gets_not_found_quoting_a_prefix(stub: pb_grpc.CharRNNStub, rpc: str, long_id: str) -> None:
    calls = {
        "Generate": lambda: stub.Generate(pb.GenerateRequest(prompt="a", max_chars=2, session_id=long_id)),
        "Score": lambda: stub.Score(pb.ScoreRequest(text="ab", session_id=long_id)),
        "Session load": lambda: stub.Session(iter([pb.SessionRequest(load=pb.LoadAction(session_id=long_id))])),
    }
    code, details = _refusal(calls[rpc])
    assert code == grpc.StatusCode.NOT_FOUND, (code, details[:200])
    assert details == f"session {quote(long_id)} not found (unknown, expired or evicted)"
    assert len(details) < BOUND


def test_many_unknown_characters_are_named_in_part(stub: pb_grpc.CharRNNStub) -> None:
    prompt = "".join(chr(0x4E00 + i) for i in range(3000))  # 3000 distinct characters outside the vocabulary
    code, details = _refusal(lambda: stub.Generate(pb.GenerateRequest(prompt=prompt[:2000], max_chars=2)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "and 1990 more" in details and len(details) < BOUND


def test_an_unknown_watched_state_kind_is_quoted_in_part(lstm_dir: Path) -> None:
    """The transport-neutral Validator takes kinds as strings: an edge other than gRPC may pass any text."""
    runtime = build_runtime(make_config(lstm_dir))
    with pytest.raises(InvalidRequest) as info:
        Validator(runtime.limits).watch(runtime.models.current, [("k" * 10_000, 0, 0)])
    message = str(info.value)
    assert message.startswith(f"watched unit 0 ({quote('k' * 10_000)}:0:0): the lstm model has no such state")
    assert len(message) < BOUND
