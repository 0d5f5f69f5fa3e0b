"""Connections between clients and replicas: the server's maximum connection age moves clients behind a
connection balancer (a ClusterIP Service) onto new replicas without failing a call or cutting a stream,
the server accepts the keepalive pings clients send, and keepalive finds a replica that stopped answering."""

from __future__ import annotations

import signal
import time
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from charrnn.client import Balancing, CharRNNError, Client, FailoverClient
from charrnn.client.channel import RETRY_POLICY
from service.config import ConfigError
from tests.service.harness import ServerThread, make_config, wait_until
from tests.service.replicas import ConnectionBalancer, Replica, started

PROMPT = "def main(argv):\n"


@pytest.mark.parametrize("policy", ["pick_first", "round_robin"])
def test_connection_age_moves_clients_behind_a_connection_balancer_to_a_new_replica(
    lstm_dir: Path, policy: str
) -> None:
    config = make_config(lstm_dir, max_connection_age_seconds=0.5)
    with ServerThread(config) as old, ServerThread(config) as new:
        proxy = ConnectionBalancer([old.port])
        try:
            with Client(proxy.target, timeout=30, balancing=Balancing(lb_policy=policy)) as client:
                session = client.session()
                session.feed(PROMPT)
                first = session.generate(max_chars=20, seed=3).text()
                client.info()
                proxy.backends.append(new.port)  # a new pod joins the Service

                def reached_new() -> bool:
                    client.info()  # any failed call fails the test
                    client.generate(PROMPT, max_chars=10, seed=1).text()
                    return started(new, "Generate") > 0

                assert wait_until(reached_new, 20), "the client never left its first connection"
                assert proxy.connections >= 2
                # The Session stream outlived several connection ages on the replica that holds its state.
                time.sleep(1.2)
                second = session.generate(max_chars=20).text()
                session.close()
            assert len(first) == len(second) == 20
            assert started(old, "Session") == 1 and started(new, "Session") == 0
        finally:
            proxy.close()


def test_a_grace_ends_streams_on_an_aged_connection_and_out_of_range_settings_are_refused(lstm_dir: Path) -> None:
    config = make_config(lstm_dir, max_connection_age_seconds=0.3, max_connection_age_grace_seconds=0.3)
    with ServerThread(config) as srv, Client(srv.target, timeout=30) as client, client.session() as session:
        session.feed(PROMPT)
        time.sleep(1.5)  # past the age (±10 %) and the grace
        with pytest.raises(CharRNNError) as err:
            session.generate(max_chars=10, seed=1).text()
        assert err.value.code == grpc.StatusCode.UNAVAILABLE and "max connection age" in err.value.details
    for name, bad in [("max_connection_age_seconds", -1.0), ("max_connection_age_grace_seconds", -0.5),
                      ("min_ping_interval_seconds", -1.0)]:  # fmt: skip
        flag = "--" + name.replace("_", "-")
        with pytest.raises(ConfigError, match=f"{flag} must be >= 0"):
            replace(config, connections=replace(config.connections, **{name: bad})).validate()


def test_the_server_accepts_keepalive_pings_on_an_idle_session(lstm_dir: Path) -> None:
    """An open Session waiting for its user carries no data; the client still pings (about once a second
    here), so the server must accept that rate or it closes the connection with too_many_pings."""
    config = make_config(lstm_dir, min_ping_interval_seconds=0.05)
    keepalive = Balancing(keepalive_ms=100, keepalive_timeout_ms=2000)
    with (
        ServerThread(config) as srv,
        Client(srv.target, timeout=30, balancing=keepalive) as client,
        client.session() as session,
    ):
        session.feed(PROMPT)
        time.sleep(4.5)  # the server's default policy (one ping in 5 minutes) closes it after ~3 pings
        assert len(session.generate(max_chars=10, seed=1).text()) == 10


def test_keepalive_finds_a_frozen_replica_and_the_stream_continues_on_another(lstm_dir: Path, tmp_path: Path) -> None:
    """SIGSTOP leaves the connection open but unanswered, like a lost node: only keepalive notices."""
    flags = ("--max-request-chars", "100000", "--flush-interval-ms", "10", "--min-ping-interval-seconds", "0.1")
    frozen = Replica(lstm_dir, tmp_path, *flags).wait_ready()
    config = make_config(lstm_dir, max_request_chars=100000, min_ping_interval_seconds=0.1)
    keepalive = Balancing(keepalive_ms=200, keepalive_timeout_ms=1000)
    try:
        with ServerThread(config) as alive:
            with FailoverClient([frozen.target, alive.target], timeout=30, balancing=keepalive) as fc:

                def both_in_rotation() -> bool:
                    fc.client.info()
                    return started(alive, "GetModelInfo") > 0 and frozen.started("GetModelInfo") > 0

                # Once round robin has both replicas in its rotation, two streams go one to each.
                assert wait_until(both_in_rotation, 20)
                gens = [fc.generate(PROMPT, max_chars=20000, temperature=0.9, seed=s) for s in (1, 2)]
                heads = [next(g) for g in gens]
                assert alive.live == 1
                frozen.proc.send_signal(signal.SIGSTOP)
                # Without keepalive the frozen stream would wait for its deadline (DEADLINE_EXCEEDED).
                texts = [head + g.text() for head, g in zip(heads, gens, strict=True)]
            with Client(alive.target, timeout=60) as direct:
                expected = [direct.generate(PROMPT, max_chars=20000, temperature=0.9, seed=s).text() for s in (1, 2)]
        assert sorted(g.failovers for g in gens) == [0, 1]
        assert texts == expected
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
        frozen.stop()


def test_a_call_refused_before_any_answer_is_retried(lstm_dir: Path) -> None:
    """A replica that refuses new streams with UNAVAILABLE (here: it stopped accepting, as when draining)
    gets the call again after its retry hint, up to the policy's attempts; then the refusal surfaces."""
    with ServerThread(make_config(lstm_dir, retry_pushback_ms=50)) as srv, Client(srv.target, timeout=30) as client:
        assert srv.server is not None
        client.info()
        srv.server.scheduler.stop_accepting()
        with pytest.raises(CharRNNError) as err:
            client.generate(PROMPT, max_chars=10).text()
        assert err.value.code == grpc.StatusCode.UNAVAILABLE and err.value.retry_pushback_ms == 50
        assert started(srv, "Generate") == RETRY_POLICY["maxAttempts"] == 3
