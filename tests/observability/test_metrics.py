"""Each metric moves as the traffic says it should, on a real server with a fresh registry."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from charrnn.artifact import load_manifest
from charrnn.client import CharRNNError, Client
from charrnn.v1 import charrnn_pb2 as pb
from charrnn.v1 import charrnn_pb2_grpc as pb_grpc
from service.interceptors import grpc_code_name
from service.tokens import TokenCodec
from tests.observability.scrape import MissingSeries, scrape, value
from tests.service.harness import TEST_KEY, ServerThread, make_config, wait_until

SERVICE = "charrnn.v1.CharRNN"
PROMPT = "def f(x):\n"


def registry(srv: ServerThread) -> CollectorRegistry:
    assert srv.server is not None
    return srv.server.metrics.registry


@pytest.fixture
def client(server: ServerThread) -> Iterator[Client]:
    with Client(server.target, timeout=30) as c:
        yield c


def rpc(method: str, kind: str) -> dict[str, str]:
    return {"grpc_service": SERVICE, "grpc_method": method, "grpc_type": kind}


def handled(reg: CollectorRegistry, method: str, kind: str, code: str) -> float | None:
    """RPCs handled with `code`; None (never 0) before the first: a code's series appears with its first call."""
    try:
        return value(reg, "grpc_server_handled_total", **rpc(method, kind), grpc_code=code)
    except MissingSeries:
        return None


def test_generate_counts_chars_messages_and_latencies(server: ServerThread) -> None:
    reg = registry(server)
    n = 300
    with grpc.insecure_channel(server.target) as channel:
        responses = list(
            pb_grpc.CharRNNStub(channel).Generate(
                pb.GenerateRequest(prompt=PROMPT, max_chars=n, sampling=pb.SamplingParams(seed=1))
            )
        )
    assert responses[-1].done.usage.generated_chars == n
    assert value(reg, "charrnn_generated_chars_total") == n
    assert value(reg, "charrnn_prefilled_chars_total") == len(PROMPT)
    assert value(reg, "charrnn_time_to_first_char_seconds_count") == 1
    assert value(reg, "charrnn_stream_duration_seconds_count") == 1
    assert value(reg, "charrnn_streams_finished_total", reason="length") == 1
    # One step per character for a lone stream: n steps of batch 1, each timed in both phases.
    assert value(reg, "charrnn_batch_size_count") == n
    assert value(reg, "charrnn_batch_size_sum") == n
    for phase in ("model", "sampling"):
        assert value(reg, "charrnn_step_duration_seconds_count", phase=phase) == n
    assert value(reg, "charrnn_prefill_duration_seconds_count") == 1
    # The stream was coalesced into several chunks (10 ms flushes), each gap observed.
    assert value(reg, "charrnn_inter_chunk_gap_seconds_count") >= 1
    labels = rpc("Generate", "server_stream")
    assert wait_until(lambda: handled(reg, "Generate", "server_stream", "OK") == 1)
    assert value(reg, "grpc_server_started_total", **labels) == 1
    assert value(reg, "grpc_server_msg_received_total", **labels) == 1
    assert value(reg, "grpc_server_msg_sent_total", **labels) == len(responses)
    assert value(reg, "grpc_server_handling_seconds_count", **labels) == 1


def test_concurrent_streams_share_steps(server: ServerThread, client: Client) -> None:
    """Batch sizes sum to the characters generated, however streams were batched together."""
    reg = registry(server)
    gens = [client.generate(PROMPT, max_chars=200 + 50 * i, seed=i) for i in range(4)]
    for gen in gens:
        gen.text()
    total = sum(200 + 50 * i for i in range(4))
    assert value(reg, "charrnn_generated_chars_total") == total
    assert value(reg, "charrnn_batch_size_sum") == total
    assert value(reg, "charrnn_batch_size_count") < total  # some steps advanced several streams


def test_unary_and_bidi_rpcs_are_counted_by_type(server: ServerThread, client: Client) -> None:
    reg = registry(server)
    client.score("import os\n")
    client.info()
    with client.session() as s:
        s.feed("x = 1\n")
        s.generate(max_chars=20, seed=3).text()
        s.token()
    assert wait_until(lambda: handled(reg, "Session", "bidi_stream", "OK") == 1)
    assert handled(reg, "Score", "unary", "OK") == 1
    assert handled(reg, "GetModelInfo", "unary", "OK") == 1
    assert value(reg, "grpc_server_msg_received_total", **rpc("Session", "bidi_stream")) == 3
    assert value(reg, "grpc_server_msg_sent_total", **rpc("Score", "unary")) == 1


def test_refusals_show_under_their_code(server: ServerThread, client: Client) -> None:
    reg = registry(server)
    with pytest.raises(CharRNNError):
        client.generate(PROMPT, max_chars=10, temperature=-1.0).text()
    with pytest.raises(CharRNNError):
        client.generate(max_chars=5, session_id="no-such-session").text()
    assert wait_until(lambda: handled(reg, "Generate", "server_stream", "InvalidArgument") == 1)
    assert wait_until(lambda: handled(reg, "Generate", "server_stream", "NotFound") == 1)
    # Neither counted as OK: no OK series yet, and the two calls started are the two refused.
    assert handled(reg, "Generate", "server_stream", "OK") is None
    assert value(reg, "grpc_server_started_total", **rpc("Generate", "server_stream")) == 2


def test_cancelled_stream(server: ServerThread, client: Client) -> None:
    reg = registry(server)
    gen = client.generate(PROMPT, max_chars=20000, seed=1)
    next(gen)
    gen.cancel()
    assert wait_until(lambda: value(reg, "charrnn_streams_finished_total", reason="cancelled") == 1)
    assert wait_until(lambda: handled(reg, "Generate", "server_stream", "Canceled") == 1)
    assert wait_until(lambda: value(reg, "charrnn_live_streams") == 0)


def test_a_stream_cancelled_while_the_server_writes_counts_as_canceled(model_dir: Path) -> None:
    """The client stops reading, so the server's handler waits at a `yield` on a full transport when the
    cancellation arrives (not in an await): it must count as Canceled, not as an Unknown error."""
    config = make_config(model_dir, flush_interval_ms=0.0, max_chunk_chars=1, max_request_chars=20000)
    with ServerThread(config) as srv, Client(srv.target, timeout=30) as c:
        reg = registry(srv)
        for seed in range(3):
            gen = c.generate(PROMPT, max_chars=20000, seed=seed)
            next(gen)
            time.sleep(0.3)  # one character a message: the transport fills while nothing is read
            gen.cancel()
        assert wait_until(lambda: handled(reg, "Generate", "server_stream", "Canceled") == 3)
        assert handled(reg, "Generate", "server_stream", "Unknown") is None, "no Unknown series: none ended so"


def test_resume_token_refusals_by_reason(server: ServerThread, client: Client, model_dir: Path) -> None:
    reg = registry(server)
    gen = client.generate(PROMPT, max_chars=5, seed=1)
    gen.text()
    assert gen.result is not None
    token = gen.result.resume_token
    tampered = token[:-1] + bytes([token[-1] ^ 1])
    m = load_manifest(model_dir)
    spec = TokenCodec(TEST_KEY.encode(), m.onnx.sha256, 2, m.model.layers, m.model.hidden_size, m.model.vocab_size)
    foreign_codec = TokenCodec(TEST_KEY.encode(), "00" * 32, 2, m.model.layers, m.model.hidden_size, m.model.vocab_size)
    foreign = foreign_codec.encode(spec.decode(token))
    for bad in (b"garbage", tampered, foreign):
        with pytest.raises(CharRNNError):
            client.generate(max_chars=5, resume_token=bad).text()
    for reason in ("malformed", "signature", "foreign_model"):
        assert value(reg, "charrnn_resume_tokens_refused_total", reason=reason) == 1, reason
    assert value(reg, "charrnn_resume_tokens_refused_total", reason="version") == 0
    assert wait_until(lambda: handled(reg, "Generate", "server_stream", "FailedPrecondition") == 1)


def test_sessions_gauge_and_evictions(server: ServerThread, client: Client) -> None:
    reg = registry(server)
    for i in range(3):  # the server keeps 2
        client.generate(PROMPT, max_chars=2, seed=i, create_session=True).text()
    assert value(reg, "charrnn_sessions") == 2
    assert value(reg, "charrnn_session_evictions_total", reason="count") == 1
    assert value(reg, "charrnn_session_evictions_total", reason="ttl") == 0


def test_live_queued_gauges_and_queue_full_rejection(model_dir: Path) -> None:
    config = make_config(model_dir, max_live_streams=1, max_queued_streams=1)
    with ServerThread(config) as srv, Client(srv.target, timeout=30) as client:
        reg = registry(srv)
        first = client.generate(PROMPT, max_chars=20000, seed=1)
        next(first)
        second = client.generate(PROMPT, max_chars=20000, seed=2)
        assert wait_until(lambda: value(reg, "charrnn_queued_streams") == 1)
        assert value(reg, "charrnn_live_streams") == 1
        with pytest.raises(CharRNNError) as err:
            client.generate(PROMPT, max_chars=5).text()
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert value(reg, "charrnn_rejections_total", reason="queue_full") == 1
        assert value(reg, "charrnn_rejections_total", reason="shutting_down") == 0
        assert wait_until(lambda: handled(reg, "Generate", "server_stream", "ResourceExhausted") == 1)
        first.cancel()
        second.cancel()
        assert wait_until(lambda: value(reg, "charrnn_live_streams") + value(reg, "charrnn_queued_streams") == 0)


def test_model_info_serving_and_http_endpoint(server: ServerThread, model_dir: Path) -> None:
    assert server.server is not None and server.server.metrics_http is not None
    url = f"http://127.0.0.1:{server.server.metrics_http.port}/metrics"
    samples = scrape(url)
    m = load_manifest(model_dir)
    labels = {"model": model_dir.name, "name": m.model.name, "version": m.model.version, "sha256": m.onnx.sha256,
              "precision": "fp32"}  # fmt: skip
    info = frozenset(labels.items())
    assert samples[("charrnn_model_info", info)] == 1
    assert samples[("charrnn_serving", frozenset())] == 1
    reg = registry(server)
    server.stop()
    assert value(reg, "charrnn_serving") == 0


def test_code_names_follow_grpc_go() -> None:
    assert grpc_code_name(grpc.StatusCode.OK) == "OK"
    assert grpc_code_name(grpc.StatusCode.CANCELLED) == "Canceled"
    assert grpc_code_name(grpc.StatusCode.RESOURCE_EXHAUSTED) == "ResourceExhausted"
    assert grpc_code_name(grpc.StatusCode.DEADLINE_EXCEEDED) == "DeadlineExceeded"
