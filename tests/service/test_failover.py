"""Mid-stream checkpoints and transparent failover: a checkpoint covers exactly the text delivered up to
its message, one arrives at 0 characters and at every multiple asked for, and a FailoverClient survives
`kill -9` of the replica it streams from, seeded or not, before or after the first periodic checkpoint,
without losing or repeating a character."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from charrnn.client import Balancing, CharRNNError, Client, FailoverClient
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
        assert checkpoints[0][1].generated_chars == 0, "the first message carries a resume point at 0 chars"
        multiples = [cp.generated_chars // 40 for _, cp in checkpoints]
        assert multiples == list(range(len(multiples))), "exactly one per multiple of 40, none skipped"
        held = max(len(s) for s in STOPS) - 1  # a possible stop string delays a checkpoint by at most this
        assert all(cp.generated_chars - 40 * k <= held for k, (_, cp) in enumerate(checkpoints))
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


@pytest.fixture(scope="module")
def replica_b(lstm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    b = ServerProcess(lstm_dir, tmp_path_factory.mktemp("b"), *REPLICA_FLAGS).wait_ready()
    yield b
    assert b.stop() == 0


PICK_FIRST = Balancing(lb_policy="pick_first")
REPLICA_FLAGS = ("--max-request-chars", "100000", "--flush-interval-ms", "5", "--max-chunk-chars", "16")
EVERY = 256


@pytest.mark.parametrize("seeded", [True, False], ids=["seeded", "unseeded"])
@pytest.mark.parametrize("checkpoints_before_kill", [0, 3], ids=["before-first-checkpoint", "after-3-checkpoints"])
def test_kill_9_mid_stream_continues_from_the_last_checkpoint(
    lstm_dir: Path, tmp_path: Path, replica_b: ServerProcess, seeded: bool, checkpoints_before_kill: int
) -> None:
    a = ServerProcess(lstm_dir, tmp_path, *REPLICA_FLAGS).wait_ready()
    n = 20000  # longer than the kill takes: the stream must still be running when its replica dies
    seed = {"seed": 11} if seeded else {}
    try:
        # pick_first: the stream starts on the first address, the one this test kills.
        with FailoverClient([a.target, replica_b.target], timeout=60, balancing=PICK_FIRST) as fc:
            gen = fc.generate(PROMPT, max_chars=n, temperature=0.9, stop=STOPS, checkpoint_every_chars=EVERY, **seed)
            parts = [next(gen)]
            while len("".join(parts)) < checkpoints_before_kill * EVERY + 1:
                parts.append(next(gen))
            a.proc.send_signal(signal.SIGKILL)
            parts.extend(gen)
        assert gen.result is not None
        with Client(replica_b.target, timeout=60) as direct:  # the uninterrupted run of the same seed
            expected = direct.generate(PROMPT, max_chars=n, temperature=0.9, seed=gen.result.seed, stop=STOPS).text()
        assert gen.failovers == 1 and len(expected) > 2 * EVERY
        # It resumed from the last resume point it had received, not from a restart: the point at 0
        # characters before the first periodic one, else a multiple of EVERY (plus a held-back stop prefix).
        (resumed,) = gen.resumed_at
        held = max(len(s) for s in STOPS) - 1
        assert resumed == 0 if checkpoints_before_kill == 0 else checkpoints_before_kill * EVERY <= resumed
        assert resumed % EVERY <= held
        assert "".join(parts) == expected
    finally:
        a.stop()
