"""The HTTP API at the wire, with curl as the client: SSE framing, errors with their statuses and headers,
disconnects, draining, TLS, and the metrics they leave behind."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tests.http import sse
from tests.http.conftest import MODEL, PROMPT, base_url, post
from tests.observability.scrape import series, value
from tests.service.harness import ServerThread, make_config, wait_until

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed (apt-get install curl)")


def curl(*args: str, body: Any = None) -> subprocess.Popen[bytes]:
    """curl with the body on stdin; -N: no buffering, so a stream reads as it arrives."""
    data = ["--data-binary", "@-", "-H", "Content-Type: application/json"] if body is not None else []
    stdin = subprocess.PIPE if body is not None else subprocess.DEVNULL
    proc = subprocess.Popen(["curl", "-sSN", *data, *args], stdin=stdin, stdout=subprocess.PIPE)
    if proc.stdin is not None:
        proc.stdin.write(json.dumps(body).encode())
        proc.stdin.close()
    return proc


def rest_of(proc: subprocess.Popen[bytes]) -> bytes:
    """Everything curl still writes, once it has exited."""
    assert proc.stdout is not None
    with proc.stdout:
        out = proc.stdout.read()
    proc.wait(60)
    return out


def curl_output(*args: str, body: Any = None) -> bytes:
    proc = curl(*args, body=body)
    out = rest_of(proc)
    assert proc.returncode == 0
    return out


def health(root: str) -> tuple[int, Any]:
    """GET /health under the API root `root`: (status, parsed body)."""
    body, status = curl_output("-w", "\n%{http_code}", f"{root}/health").rsplit(b"\n", 1)
    return int(status), json.loads(body)


def registry(server: ServerThread) -> CollectorRegistry:
    assert server.server is not None
    return server.server.metrics.registry


def requests_counted(server: ServerThread, method: str, route: str, code: int) -> float:
    return value(registry(server), "http_server_requests_total", method=method, route=route, code=str(code))


def test_event_stream_framing(server: ServerThread, tmp_path: Path) -> None:
    url = f"{base_url(server)}/v1/completions"
    request = {"model": MODEL, "prompt": PROMPT, "max_tokens": 400, "seed": 2, "stop": "e", "stream": True}
    raw = curl_output("-D", str(tmp_path / "headers"), url, body=request)
    headers = (tmp_path / "headers").read_text().lower()
    assert "content-type: text/event-stream" in headers and "cache-control: no-cache" in headers
    chunks = sse.events(raw)
    assert len(chunks) >= 2 and {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert all(c["object"] == "text_completion" and c["model"] == MODEL for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] == "stop" and last["charrnn"]["stop"] == "e"
    text = sse.text(chunks)
    status, _, whole = post(url, {**request, "stream": False})
    assert status == 200 and whole["choices"][0]["text"] == text and "e" not in text
    assert whole["choices"][0]["finish_reason"] == "stop"
    assert value(registry(server), "http_server_sse_events_total", route="/v1/completions") == len(chunks)


def test_an_unknown_model_is_404_listing_the_served_ones(server: ServerThread) -> None:
    out = curl_output(
        "-w", "\n%{http_code}", f"{base_url(server)}/v1/completions", body={"prompt": PROMPT, "model": "gpt-4"}
    )
    body, status = out.rsplit(b"\n", 1)
    error = json.loads(body)["error"]
    assert status == b"404" and error["param"] == "model" and error["code"] == "not_found", error
    assert error["type"] == "not_found_error" and error["message"].endswith(f"is not served here; served: {MODEL}")


@pytest.mark.parametrize(
    ("change", "param", "words"),
    [
        ({"temperature": -0.5}, "temperature", "temperature must be in [0, 100]"),
        ({"top_p": 0}, "top_p", "top_p must be in (0, 1]"),
        ({"max_tokens": 20001}, "max_tokens", "max_request_chars"),
        ({"max_tokens": "ten"}, "max_tokens", "max_tokens must be an integer"),
        ({"max_tokens": -1}, "max_tokens", "max_tokens must be 0 (the default) or more"),  # HTTP's name, not gRPC's
        ({"stop": ["x"] * 9}, "stop", "max_stop_strings"),
        ({"stop": 3}, "stop", "stop must be a string or a list of strings"),
        ({"seed": -1}, "seed", "seed must be in [0, 2**64 - 1]"),
        ({"prompt": ""}, "prompt", "prompt is empty and there is no state to continue from"),
        ({"prompt": ["a", "b"]}, "prompt", "prompt must be a string"),
        ({"prompt": "x" * 8193}, "prompt", "the limit is 8192"),
        ({"n": 2}, "n", "n is not supported"),
        ({"max_token": 5}, "max_token", "unknown parameter 'max_token'"),
        ({"charrnn": {"watch": ["h:5:0"]}}, "charrnn.watch", "out of range (layers 2, hidden_size 24)"),
        ({"charrnn": {"watch": ["q1"]}}, "charrnn.watch", "bad hidden unit 'q1'"),
        ({"charrnn": {"resume_token": "AAAA"}}, "charrnn.resume_token", "resume token"),
        ({"charrnn": {"top_k": -1}}, "charrnn.top_k", "top_k must be in [0, 4294967295] (0 = off)"),
        ({"m" * 10_000: 1}, "m" * 32, "(10000 characters)"),  # client input is quoted in part, never whole
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(
    server: ServerThread, change: dict[str, Any], param: str, words: str
) -> None:
    out = curl_output("-w", "\n%{http_code}", f"{base_url(server)}/v1/completions", body={"prompt": PROMPT} | change)
    body, status = out.rsplit(b"\n", 1)
    error = json.loads(body)["error"]
    assert status == b"400" and error["param"] == param and words in error["message"], error
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_argument"
    assert requests_counted(server, "POST", "/v1/completions", 400) == 1


def test_malformed_bodies_routes_and_methods(server: ServerThread) -> None:
    url = f"{base_url(server)}/v1/completions"
    status, _, body = post(url, b"{not json")
    assert status == 400 and body["error"]["message"].startswith("the request body is not valid JSON")
    status, _, body = post(url, [1, 2])
    assert status == 400 and body["error"]["message"] == "the request body must be a JSON object"
    status, headers, body = post(f"{base_url(server)}/v1/models", {})
    assert status == 405 and headers["Allow"] == "GET,HEAD" and body["error"]["type"] == "invalid_request_error"
    out = curl_output("-w", "\n%{http_code}", f"{base_url(server)}/v1/chat/completions")
    assert out.endswith(b"\n404") and b"no route GET '/v1/chat/completions'" in out
    assert requests_counted(server, "GET", "unmatched", 404) == 1


def test_body_over_the_limit_is_413(model_dir: Path) -> None:
    with ServerThread(make_config(model_dir, http_port=0, http_max_body_kb=1)) as srv:
        status, _, body = post(f"{base_url(srv)}/v1/completions", {"prompt": "x" * 2000})
        assert status == 413 and "http_max_body_kb" in body["error"]["message"]
        assert body["error"]["code"] == "resource_exhausted"
        assert post(f"{base_url(srv)}/v1/completions", {"prompt": "x" * 500, "max_tokens": 1})[0] == 200


def test_bearer_tokens_guard_the_api_but_not_the_page(model_dir: Path) -> None:
    with ServerThread(make_config(model_dir, http_port=0, auth_tokens="secret-a,secret-b")) as srv:
        url = f"{base_url(srv)}/v1/completions"
        request = {"prompt": PROMPT, "max_tokens": 5}
        status, headers, body = post(url, request)
        assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
        assert body["error"]["message"].startswith("no bearer token") and body["error"]["code"] == "unauthenticated"
        status, _, body = post(url, request, {"Authorization": "Bearer secret-c"})
        assert status == 401 and body["error"]["message"].startswith("the bearer token is not accepted")
        assert post(url, request, {"Authorization": "Bearer secret-b"})[0] == 200
        assert curl_output("-w", "%{http_code}", "-o", "/dev/null", f"{base_url(srv)}/v1/models") == b"401"
        assert curl_output("-w", "%{http_code}", "-o", "/dev/null", f"{base_url(srv)}/") == b"200"
        assert health(base_url(srv)) == (200, {"status": "SERVING"}), "probes carry no token"


def _long_stream(server: ServerThread) -> subprocess.Popen[bytes]:
    """A streaming request that runs until cancelled (20000 characters), once its first event is read."""
    body = {"prompt": PROMPT, "max_tokens": 20000, "seed": 1, "stream": True}
    proc = curl(f"{base_url(server)}/v1/completions", body=body)
    assert proc.stdout is not None and proc.stdout.readline().startswith(b"data: ")
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    rest_of(proc)


def test_a_client_that_disconnects_frees_its_slot(server: ServerThread) -> None:
    proc = _long_stream(server)
    assert server.live == 1
    _stop(proc)
    reg = registry(server)
    assert wait_until(lambda: value(reg, "charrnn_streams_finished_total", reason="cancelled") == 1)
    assert server.live == 0 and value(reg, "charrnn_streams_finished_total", reason="length") == 0
    assert wait_until(lambda: requests_counted(server, "POST", "/v1/completions", 499) == 1)


def test_a_full_queue_is_429_with_retry_after(model_dir: Path) -> None:
    config = make_config(model_dir, http_port=0, max_live_streams=1, max_queued_streams=0, retry_pushback_ms=1500)
    with ServerThread(config) as srv:
        proc = _long_stream(srv)
        try:
            status, headers, body = post(f"{base_url(srv)}/v1/completions", {"prompt": PROMPT})
        finally:
            _stop(proc)
        assert status == 429 and headers["Retry-After"] == "2" and headers["retry-after-ms"] == "1500"
        assert "max_live_streams" in body["error"]["message"] and body["error"]["type"] == "rate_limit_error"


def test_draining_is_503_with_retry_after_and_health_says_so(model_dir: Path) -> None:
    with ServerThread(make_config(model_dir, http_port=0)) as srv:
        root = base_url(srv)
        url = f"{root}/v1/completions"
        assert health(root) == (200, {"status": "SERVING"})
        proc = _long_stream(srv)
        server, srv.server = srv.server, None  # this test stops it; the harness must not stop it again
        assert server is not None and srv.loop is not None
        stopping = asyncio.run_coroutine_threadsafe(server.stop(30.0), srv.loop)
        try:
            assert wait_until(lambda: post(url, {"prompt": PROMPT, "max_tokens": 1})[0] == 503)
            status, headers, body = post(url, {"prompt": PROMPT, "max_tokens": 1})
            # A readiness probe on /health takes the pod out of the Service while live streams finish.
            assert health(root) == (503, {"status": "NOT_SERVING"})
        finally:
            _stop(proc)  # the live stream is cancelled, so the drain ends well inside its grace
        stopping.result(30)
        assert status == 503 and headers["Retry-After"] == "1" and headers["retry-after-ms"] == "1000"
        assert "shutting down" in body["error"]["message"] and body["error"]["code"] == "unavailable"


def test_a_stream_cut_by_shutdown_ends_with_an_error_event(model_dir: Path) -> None:
    with ServerThread(make_config(model_dir, http_port=0)) as srv:
        proc = _long_stream(srv)
        srv.stop(0.0)  # no grace: the live stream is failed
        rest = rest_of(proc)
    last = rest.rstrip(b"\n").split(b"\n\n")[-1]
    error = json.loads(last[len(b"data: ") :])["error"]
    assert error["code"] == "unavailable" and "shut down before the stream finished" in error["message"]
    assert b"[DONE]" not in rest


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    tmp = tmp_path_factory.mktemp("tls")
    key, cert = tmp / "key.pem", tmp / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    yield key, cert


def test_tls_serves_https_only_with_the_grpc_certificate(model_dir: Path, certificate: tuple[Path, Path]) -> None:
    key, cert = certificate
    with ServerThread(make_config(model_dir, http_port=0, tls_cert=cert, tls_key=key)) as srv:
        assert srv.server is not None
        url = f"https://127.0.0.1:{srv.server.http.port}/v1/models"
        context = ssl.create_default_context(cafile=str(cert))
        with urllib.request.urlopen(url, timeout=10, context=context) as response:
            assert json.loads(response.read())["data"][0]["id"] == MODEL
        plain = curl("-w", "%{http_code}", "-o", "/dev/null", url.replace("https", "http"))
        assert rest_of(plain) in (b"000", b"400"), "plaintext must not get the API"


def test_requests_are_counted_by_route_and_status_and_characters_in_the_shared_series(server: ServerThread) -> None:
    url = f"{base_url(server)}/v1/completions"
    assert post(url, {"prompt": PROMPT, "max_tokens": 30})[0] == 200
    curl_output(url, body={"prompt": PROMPT, "max_tokens": 70, "stream": True})
    curl_output(f"{base_url(server)}/v1/models")
    reg = registry(server)
    assert requests_counted(server, "POST", "/v1/completions", 200) == 2
    assert requests_counted(server, "GET", "/v1/models", 200) == 1
    duration = value(
        reg, "http_server_request_duration_seconds_count", method="POST", route="/v1/completions", code="200"
    )
    assert duration == 2
    assert value(reg, "charrnn_generated_chars_total") == 100, "HTTP streams count in the scheduler's series"
    assert value(reg, "charrnn_time_to_first_char_seconds_count") == 2, "timed at the HTTP edge too"
    assert series(reg, "grpc_server_started_total") == [], "no gRPC call counted for an HTTP request"
