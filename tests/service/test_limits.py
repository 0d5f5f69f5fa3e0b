"""Admission control, cancellation and deadlines: slots are bounded and freed at the next step."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from charrnn.client import CharRNNError, Client
from tests.observability.scrape import value
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
    """Cancelled while it waits for a slot, a stream leaves the queue without one model call for it: none of
    its prompt is prefilled, and the decode steps advanced exactly the rows of the stream that held the slot."""
    queued_prompt = "b" * 50
    with (
        ServerThread(make_config(lstm_dir, max_live_streams=1, max_request_chars=LONG)) as srv,
        Client(srv.target) as c,
        c.session() as session,
    ):
        holder = session.generate("a", max_chars=LONG)  # a Session generation: its cancel still says how far it got
        next(holder)
        waiting = c.generate(queued_prompt, max_chars=LONG)
        assert wait_until(lambda: srv.queued == 1)
        waiting.cancel()
        assert wait_until(lambda: srv.queued == 0)
        assert srv.live == 1, "it left the queue while the slot was still taken"
        session.cancel()
        list(holder)  # the rest of its text, then its result
        assert holder.result is not None
        assert holder.result.finish_reason == "cancelled"
        assert wait_until(lambda: srv.live == 0 and srv.queued == 0)
        reg = srv.registry
        assert value(reg, "charrnn_streams_finished_total", reason="cancelled") == 2
        assert value(reg, "charrnn_prefilled_chars_total") == len("a"), "the queued prompt never reached the model"
        steps = holder.result.generated_chars  # the holder's row took every step, one character each
        assert value(reg, "charrnn_batch_size_count") == steps
        assert value(reg, "charrnn_batch_size_sum") == steps, "a step advanced a row besides the holder's"
