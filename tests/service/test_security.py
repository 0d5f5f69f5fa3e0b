"""TLS (server-only and mutual), bearer-token authentication, the development-key guard and
unparsable request messages, against real servers on loopback."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from charrnn.client import CharRNNError, Client
from charrnn.v1 import charrnn_pb2 as pb
from service.config import DEV_HMAC_KEY, ConfigError, ServerConfig, read_token_file
from tests.service.harness import REPO, ServerThread, charrnn_cmd, make_config, wait_until

TOKEN = "s3cret-token"


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _ca(tmp: Path, name: str) -> tuple[Path, Path]:
    key, cert = tmp / f"{name}.key", tmp / f"{name}.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", str(key), "-out", str(cert))  # fmt: skip
    return key, cert


def _leaf(tmp: Path, name: str, ca: tuple[Path, Path], ext: str) -> tuple[Path, Path]:
    key, csr, cert, extfile = (tmp / f"{name}.{s}" for s in ("key", "csr", "pem", "ext"))
    extfile.write_text(ext + "\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr))
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[1]), "-CAkey", str(ca[0]), "-CAcreateserial",
             "-days", "2", "-extfile", str(extfile), "-out", str(cert))  # fmt: skip
    return key, cert


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("pki")
    ca, other_ca = _ca(tmp, "ca"), _ca(tmp, "other-ca")
    server = _leaf(tmp, "server", ca, "subjectAltName=IP:127.0.0.1,DNS:localhost")
    client = _leaf(tmp, "client", ca, "extendedKeyUsage=clientAuth")
    return {
        "ca": ca[1], "other_ca": other_ca[1], "server_key": server[0], "server_cert": server[1],
        "client_key": client[0], "client_cert": client[1],
    }  # fmt: skip


def _info(target: str, **options: object) -> str:
    with Client(target, timeout=10, **options) as client:  # type: ignore[arg-type]
        return client.info().name


def _refused(target: str, code: grpc.StatusCode, **options: object) -> str:
    with pytest.raises(CharRNNError) as caught:
        _info(target, **options)
    assert caught.value.code == code, caught.value
    return caught.value.details


@pytest.fixture(scope="module")
def tls_server(lstm_dir: Path, pki: dict[str, Path]) -> Iterator[ServerThread]:
    config = make_config(lstm_dir, tls_cert=pki["server_cert"], tls_key=pki["server_key"])
    with ServerThread(config) as srv:
        yield srv


def test_tls_works_with_the_ca_and_refuses_plaintext_and_other_cas(
    tls_server: ServerThread, pki: dict[str, Path]
) -> None:
    assert _info(tls_server.target, tls_ca=pki["ca"].read_bytes())
    _refused(tls_server.target, grpc.StatusCode.UNAVAILABLE)  # plaintext client
    _refused(tls_server.target, grpc.StatusCode.UNAVAILABLE, tls_ca=pki["other_ca"].read_bytes())


def test_mutual_tls_requires_a_client_certificate(lstm_dir: Path, pki: dict[str, Path]) -> None:
    config = make_config(lstm_dir, tls_cert=pki["server_cert"], tls_key=pki["server_key"], tls_client_ca=pki["ca"])
    ca = pki["ca"].read_bytes()
    with ServerThread(config) as srv:
        _refused(srv.target, grpc.StatusCode.UNAVAILABLE, tls_ca=ca)
        mine = {"tls_cert": pki["client_cert"].read_bytes(), "tls_key": pki["client_key"].read_bytes()}
        assert _info(srv.target, tls_ca=ca, **mine)


def test_tls_settings_are_validated(lstm_dir: Path, pki: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="--tls-cert and --tls-key go together"):
        make_config(lstm_dir, tls_cert=pki["server_cert"]).validate()
    with pytest.raises(ConfigError, match="--tls-client-ca needs --tls-cert"):
        make_config(lstm_dir, tls_client_ca=pki["ca"]).validate()


@pytest.fixture(scope="module")
def auth_server(lstm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    token_file = tmp_path_factory.mktemp("auth") / "tokens"
    token_file.write_text(f"# comment\n\n{TOKEN}\n")
    with ServerThread(make_config(lstm_dir, auth_tokens="other-token", auth_token_file=token_file)) as srv:
        yield srv


def _registry(srv: ServerThread) -> CollectorRegistry:
    assert srv.server is not None
    return srv.server.metrics.registry


def test_auth_refuses_missing_and_wrong_tokens_and_counts_them(auth_server: ServerThread) -> None:
    labels = {"grpc_service": "charrnn.v1.CharRNN", "grpc_method": "GetModelInfo", "grpc_type": "unary"}
    before = _registry(auth_server).get_sample_value(
        "grpc_server_handled_total", {**labels, "grpc_code": "Unauthenticated"}
    )
    assert "no bearer token" in _refused(auth_server.target, grpc.StatusCode.UNAUTHENTICATED)
    details = _refused(auth_server.target, grpc.StatusCode.UNAUTHENTICATED, auth_token="wrong")
    assert "not accepted" in details and "Bearer" in details

    def counted() -> float:
        after = _registry(auth_server).get_sample_value(
            "grpc_server_handled_total", {**labels, "grpc_code": "Unauthenticated"}
        )
        return (after or 0) - (before or 0)

    assert wait_until(lambda: counted() == 2), counted()  # recorded just after the status is sent


def test_auth_accepts_configured_tokens_on_every_rpc(auth_server: ServerThread) -> None:
    for token in (TOKEN, "other-token"):
        with Client(auth_server.target, timeout=10, auth_token=token) as client:
            assert client.info().name
            gen = client.generate("ab", max_chars=5, seed=1)
            assert len(gen.text()) == 5
            assert client.score("abc").logprobs
            with client.session() as s:
                assert s.feed("abc") == 3
        with Client(auth_server.target, timeout=10) as client, pytest.raises(CharRNNError) as caught:
            client.generate("ab", max_chars=5).text()
        assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_health_stays_open_without_a_token(auth_server: ServerThread) -> None:
    with Client(auth_server.target, timeout=10) as client:
        assert client.health() == "SERVING"
        assert client.health("charrnn.v1.CharRNN") == "SERVING"


def test_token_sources() -> None:
    assert ServerConfig(auth_tokens=" a, ,b ,").bearer_tokens() == ("a", "b")
    assert ServerConfig().bearer_tokens() == ()
    with pytest.raises(ConfigError, match="auth token file"):
        read_token_file(Path("/nonexistent/tokens"))


def test_the_published_development_key_needs_dev(lstm_dir: Path, tmp_path: Path) -> None:
    dev_key = DEV_HMAC_KEY.decode()
    with pytest.raises(ConfigError, match="development key"):
        ServerConfig(model_dir=lstm_dir, hmac_key=dev_key).resume_key()
    assert ServerConfig(model_dir=lstm_dir, hmac_key=dev_key, dev=True).resume_key() == DEV_HMAC_KEY
    with pytest.raises(ConfigError, match="no resume-token key"):
        ServerConfig(model_dir=lstm_dir).resume_key()
    args = ["serve", "--model", str(lstm_dir), "--port", "0", "--metrics-port", "-1", "--hmac-key", dev_key]
    proc = subprocess.run(charrnn_cmd(*args), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "development key" in proc.stderr


def test_hmac_key_from_a_file(lstm_dir: Path, tmp_path: Path) -> None:
    """A Kubernetes Secret mounted as a file: the trailing newline is not part of the key."""
    key_file = tmp_path / "hmac-key"
    key_file.write_text("s3cret\n")
    assert ServerConfig(model_dir=lstm_dir, hmac_key_file=key_file).resume_key() == b"s3cret"
    with pytest.raises(ConfigError, match="not both"):
        ServerConfig(model_dir=lstm_dir, hmac_key="x", hmac_key_file=key_file).resume_key()
    key_file.write_text(DEV_HMAC_KEY.decode())
    with pytest.raises(ConfigError, match="development key"):
        ServerConfig(model_dir=lstm_dir, hmac_key_file=key_file).resume_key()
    key_file.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        ServerConfig(model_dir=lstm_dir, hmac_key_file=key_file).resume_key()
    with pytest.raises(ConfigError, match="cannot read"):
        ServerConfig(model_dir=lstm_dir, hmac_key_file=tmp_path / "missing").resume_key()


def test_unparsable_messages_are_invalid_argument_and_counted(lstm_dir: Path) -> None:
    """Regression (found by tests/fuzz): invalid UTF-8 in a string field was UNKNOWN with a Python repr."""
    with ServerThread(make_config(lstm_dir)) as srv, grpc.insecure_channel(srv.target) as channel:
        score = channel.unary_unary("/charrnn.v1.CharRNN/Score", request_serializer=bytes, response_deserializer=bytes)
        session = channel.stream_stream(
            "/charrnn.v1.CharRNN/Session", request_serializer=bytes, response_deserializer=bytes
        )
        feed = pb.SessionRequest(feed=pb.FeedAction(text="ab")).SerializeToString()
        for call in (
            lambda: score(b"\x0a\x02\xff\xfe", timeout=10),
            lambda: list(session(iter([feed, b"\xff"]), timeout=10)),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                call()
            error: grpc.Call = caught.value
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "could not be parsed" in (error.details() or "")
        labels = {"grpc_service": "charrnn.v1.CharRNN", "grpc_method": "Score", "grpc_type": "unary"}
        registry = _registry(srv)
        assert wait_until(
            lambda: (
                registry.get_sample_value("grpc_server_handled_total", {**labels, "grpc_code": "InvalidArgument"}) == 1
            )
        )
