"""The targets a client takes (one address, a list of replicas, a DNS name for all of them), the balancing
settings of the CLI, and one-line refusals of what gRPC could not use."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from charrnn.cli import main
from charrnn.client import Balancing, Client, FailoverClient
from charrnn.client.balancing import grpc_target
from charrnn.client.cli import Connection
from charrnn.settings import SettingError, add_flags, build
from tests.service.harness import ServerThread, make_config
from tests.service.replicas import started


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("127.0.0.1:5001,127.0.0.1:5002", "ipv4:127.0.0.1:5001,127.0.0.1:5002"),
        ("10.0.0.1:50051, 10.0.0.2:50051", "ipv4:10.0.0.1:50051,10.0.0.2:50051"),
        ("[::1]:5001,[fd00::2]:5002", "ipv6:[::1]:5001,[fd00::2]:5002"),
        ("localhost:50051", "localhost:50051"),
        (
            "dns:///charrnn-headless.charrnn.svc.cluster.local:50051",
            "dns:///charrnn-headless.charrnn.svc.cluster.local:50051",
        ),
        ("ipv4:127.0.0.1:5001,127.0.0.1:5002", "ipv4:127.0.0.1:5001,127.0.0.1:5002"),
        ("unix:/run/charrnn.sock", "unix:/run/charrnn.sock"),
    ],
)
def test_a_list_of_addresses_becomes_grpcs_static_list_and_other_targets_pass(given: str, expected: str) -> None:
    assert grpc_target(given) == expected


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ("", "empty"),
        ("localhost:5001,localhost:5002", "'localhost:5001' is not IP:PORT"),
        ("127.0.0.1,127.0.0.1:5002", "'127.0.0.1' is not IP:PORT"),
        ("127.0.0.1:70000,127.0.0.1:5002", "'127.0.0.1:70000' is not IP:PORT"),
        ("::1:5001,::1:5002", "'::1:5001' is not IP:PORT ([IPv6]:PORT)"),
        ("127.0.0.1:5001,[::1]:5002", "mixes IPv4 and IPv6"),
        ("dns:///a:50051,dns:///b:50051", "dns: takes one name"),
    ],
)
def test_targets_grpc_cannot_take_are_refused_saying_why(given: str, words: str) -> None:
    with pytest.raises(SettingError, match=re.escape(words)):
        grpc_target(given)
    with pytest.raises(ValueError):  # SettingError is one
        FailoverClient(given.split(","))


def test_tls_refuses_a_list_of_addresses_and_takes_a_name() -> None:
    with pytest.raises(SettingError, match="dns:///NAME:PORT"):
        grpc_target("10.0.0.1:50051,10.0.0.2:50051", tls=True)
    assert grpc_target("dns:///charrnn-headless:50051", tls=True) == "dns:///charrnn-headless:50051"
    assert grpc_target("10.0.0.1:50051", tls=True) == "10.0.0.1:50051"


def test_the_cli_refuses_bad_targets_and_balancing_settings_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refusal(*argv: str) -> str:
        assert main(["info", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("charrnn info: "), err
        return err

    assert "is not IP:PORT" in refusal("--target", "localhost:1,localhost:2")
    assert "TLS checks the server's name" in refusal("--target", "127.0.0.1:1,127.0.0.1:2", "--tls")
    assert "--lb-policy must be one of round_robin, pick_first" in refusal("--lb-policy", "random")
    assert "--keepalive-ms must be 0 (off) or more" in refusal("--keepalive-ms", "-1")
    monkeypatch.setenv("CHARRNN_KEEPALIVE_TIMEOUT_MS", "0")
    assert "--keepalive-timeout-ms must be 1 or more" in refusal()


def test_balancing_settings_come_from_flags_and_variables() -> None:
    parser = argparse.ArgumentParser()
    add_flags(parser, Connection)
    env = {"CHARRNN_LB_POLICY": "pick_first", "CHARRNN_KEEPALIVE_MS": "0"}
    assert build(Connection, parser.parse_args([]), {}).balancing == Balancing()
    assert build(Connection, parser.parse_args([]), env).balancing == Balancing(lb_policy="pick_first", keepalive_ms=0)
    given = parser.parse_args(["--lb-policy", "round_robin", "--keepalive-timeout-ms", "500"])
    assert build(Connection, given, env).balancing == Balancing(keepalive_ms=0, keepalive_timeout_ms=500)


def test_the_cli_reaches_replicas_through_a_list_or_a_dns_name(
    lstm_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ServerThread(make_config(lstm_dir)) as a, ServerThread(make_config(lstm_dir)) as b:
        with Client(a.target) as direct:
            expected = direct.generate("def ", max_chars=40, temperature=0.8, seed=4).text()
        sampling = ["--max-chars", "40", "--temperature", "0.8", "--seed", "4"]
        for target in (f"{a.target},{b.target}", f"dns:///localhost:{b.port}"):
            for policy in ("round_robin", "pick_first"):
                assert main(["generate", "def ", "--target", target, "--lb-policy", policy, *sampling]) == 0
                assert capsys.readouterr().out == expected, (target, policy)
        assert started(a, "Generate") + started(b, "Generate") == 5
