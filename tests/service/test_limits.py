"""Admission control, cancellation and deadlines: slots are bounded and freed at the next step."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from charrnn.client import CharRNNError, Client
from tests.service.harness import ServerThread, make_config, wait_until

LONG = 1_000_000  # never finishes within a test: the stream must be ended by the client


@pytest.fixture(scope="module")
def small(lstm_dir: Path) -> ServerThread:
    with ServerThread(make_config(lstm_dir, max_live_streams=2, max_queued_streams=1, max_request_chars=LONG)) as srv:
        yield srv


def test_full_slots_and_queue_give_resource_exhausted_naming_the_limit(small: ServerThread) -> None:
    with Client(small.target, timeout=30) as c:
        running = [c.generate("a", max_chars=LONG) for _ in range(2)]
        for gen in running:
            next(gen)
        assert wait_until(lambda: small.live == 2)
        queued = c.generate("b", max_chars=3)
        assert wait_until(lambda: small.queued == 1)
        with pytest.raises(CharRNNError) as err:
            c.generate("c", max_chars=3).text()
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_live_streams" in err.value.details and "max_queued_streams" in err.value.details
        running[0].cancel()
        assert queued.text() and queued.result is not None  # the queued stream got the freed slot
        running[1].cancel()
        assert wait_until(lambda: small.live == 0 and small.queued == 0)


def test_cancel_frees_the_slot(small: ServerThread) -> None:
    with Client(small.target) as c:
        gen = c.generate("a", max_chars=LONG)
        next(gen)
        assert small.live == 1
        gen.cancel()
        assert wait_until(lambda: small.live == 0)


def test_deadline_is_honoured_mid_stream_and_frees_the_slot(small: ServerThread) -> None:
    with Client(small.target) as c:
        gen = c.generate("a", max_chars=LONG, timeout=0.5)
        with pytest.raises(CharRNNError) as err:
            for _ in gen:
                pass
        assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert wait_until(lambda: small.live == 0)


def test_a_queued_stream_that_is_cancelled_never_runs(lstm_dir: Path) -> None:
    with (
        ServerThread(make_config(lstm_dir, max_live_streams=1, max_request_chars=LONG)) as srv,
        Client(srv.target) as c,
    ):
        first = c.generate("a", max_chars=LONG)
        next(first)
        waiting = c.generate("b", max_chars=LONG)
        assert wait_until(lambda: srv.queued == 1)
        waiting.cancel()
        first.cancel()
        assert wait_until(lambda: srv.live == 0 and srv.queued == 0)
