"""Mid-stream checkpoints and transparent failover: a checkpoint covers exactly the text delivered up to
its message, and a FailoverClient survives `kill -9` of the replica it streams from without losing or
repeating a character."""

from __future__ import annotations

import signal
from pathlib import Path

import grpc
import pytest

from charrnn.client import CharRNNError, Client, FailoverClient
from charrnn.v1 import charrnn_pb2 as pb
from charrnn.v1 import charrnn_pb2_grpc as pb_grpc
from tests.service.harness import ServerProcess, ServerThread, make_config

PROMPT = "def main(argv):\n"
# "e" is frequent, so the matcher often holds characters back: checkpoints must skip those flushes.
STOPS = ("eQ#", "\n\n\n\n")


def test_each_checkpoint_covers_exactly_the_text_delivered_so_far(lstm_dir: Path) -> None:
    config = make_config(lstm_dir, min_checkpoint_chars=16, flush_interval_ms=0.0, max_chunk_chars=7)
    sampling = pb.SamplingParams(temperature=1.0, seed=5)
    request = pb.GenerateRequest(prompt=PROMPT, max_chars=900, sampling=sampling, stop=STOPS, checkpoint_every_chars=40)
    with ServerThread(config) as srv, Client(srv.target, timeout=30) as c, grpc.insecure_channel(srv.target) as ch:
        delivered, checkpoints = "", []
        for response in pb_grpc.CharRNNStub(ch).Generate(request, timeout=30):
            delivered += response.text
            if response.HasField("checkpoint"):
                assert not response.HasField("done")
                assert response.checkpoint.generated_chars == len(delivered)  # never more nor less than received
                checkpoints.append((delivered, response.checkpoint))
            finish = response.done.finish_reason
        assert len(checkpoints) >= 5
        multiples = [cp.generated_chars // 40 for _, cp in checkpoints]  # at most one per multiple of 40
        assert multiples == sorted(set(multiples)) and multiples[0] >= 1
        for head, cp in checkpoints[::4]:
            rest = c.generate(
                max_chars=900 - cp.generated_chars, temperature=1.0, stop=STOPS, resume_token=cp.resume_token
            )
            assert head + rest.text() == delivered
            assert rest.result is not None and rest.result.finish_reason == {2: "stop", 1: "length"}[finish]


def test_checkpoint_interval_below_the_limit_is_refused(lstm_dir: Path) -> None:
    with ServerThread(make_config(lstm_dir, min_checkpoint_chars=64)) as srv, Client(srv.target) as c:
        with pytest.raises(CharRNNError) as err:
            c.generate("a", max_chars=10, checkpoint_every_chars=63).text()
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "min_checkpoint_chars" in err.value.details
        assert c.info().limits["min_checkpoint_chars"] == 64


def test_kill_9_mid_stream_continues_on_another_replica_without_loss(lstm_dir: Path, tmp_path: Path) -> None:
    extra = ("--max-request-chars", "100000", "--flush-interval-ms", "5")
    a = ServerProcess(lstm_dir, tmp_path, *extra).wait_ready()
    b = ServerProcess(lstm_dir, tmp_path, *extra).wait_ready()
    n = 30000
    try:
        with Client(b.target, timeout=60) as direct:
            expected = direct.generate(PROMPT, max_chars=n, temperature=0.9, seed=11, stop=STOPS).text()
        with FailoverClient([a.target, b.target], timeout=60) as fc:
            gen = fc.generate(PROMPT, max_chars=n, temperature=0.9, seed=11, stop=STOPS, checkpoint_every_chars=64)
            parts = [next(gen), next(gen)]
            a.proc.send_signal(signal.SIGKILL)
            parts.extend(gen)
        assert gen.failovers == 1 and len(expected) > 2000
        assert "".join(parts) == expected
        assert gen.result is not None and gen.result.generated_chars >= len(expected)
    finally:
        a.stop()
        assert b.stop() == 0
