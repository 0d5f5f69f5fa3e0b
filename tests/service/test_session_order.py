"""A Session runs its actions in order, so its status is the first failing action's, even when a later
message in the stream does not parse (the stream's reader has already met it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from charrnn.v1 import charrnn_pb2 as pb
from tests.service.harness import ServerThread, make_config

UNPARSABLE = b"\xff\xff\xff"  # not a SessionRequest


@pytest.fixture(scope="module")
def session_rpc(lstm_dir: Path) -> Iterator[grpc.StreamStreamMultiCallable]:
    with ServerThread(make_config(lstm_dir, flush_interval_ms=5.0)) as srv, grpc.insecure_channel(srv.target) as ch:
        yield ch.stream_stream("/charrnn.v1.CharRNN/Session", request_serializer=bytes, response_deserializer=bytes)


def test_an_unparsable_message_does_not_mask_an_earlier_failure(session_rpc: grpc.StreamStreamMultiCallable) -> None:
    # A generation long enough for the reader to take in every later message before the load runs.
    generate = pb.SessionRequest(
        generate=pb.GenerateAction(prompt="def ", max_chars=3000, sampling=pb.SamplingParams(seed=1))
    )
    missing = pb.SessionRequest(load=pb.LoadAction(session_id="no-such-session"))
    messages = [generate.SerializeToString(), missing.SerializeToString(), UNPARSABLE]
    with pytest.raises(grpc.RpcError) as info:
        list(session_rpc(iter(messages), timeout=60))
    err: grpc.Call = info.value
    assert err.code() == grpc.StatusCode.NOT_FOUND, err.details()
