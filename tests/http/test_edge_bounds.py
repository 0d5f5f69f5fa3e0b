"""Bounds at the HTTP edge, through a real server over HTTP: a number beyond what the engine stores, a body
nested or numbered beyond what the parser should take, a temperature that would overflow the sampler, and a
body that does not decode. Each is a 400 naming the problem (or, for a tiny temperature, greedy sampling), a
stream running beside it keeps exactly its text, and the server's log gets one line, not a traceback."""

from __future__ import annotations

import gzip
import json
import logging
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.http.body import MAX_DEPTH, MAX_NUMBER_CHARS
from service.requests import MAX_UINT32
from tests.http.conftest import PROMPT, base_url, post
from tests.reference import PlainOnnxStepper
from tests.service.harness import ServerThread, make_config

MAX_STRING = 2000  # the server's --http-max-string-chars here
NEIGHBOUR_CHARS = 4000  # long enough to be mid-stream when the other request arrives


@pytest.fixture(scope="module")
def edge(model_dir: Path) -> Iterator[ServerThread]:
    # One engine: every stream shares its steps with every other.
    with ServerThread(make_config(model_dir, http_port=0, engines=1, http_max_string_chars=MAX_STRING)) as srv:
        yield srv


@pytest.fixture(scope="module")
def greedy(model_dir: Path) -> str:
    """The neighbour's text from an independent reference (a bare ONNX Runtime session, argmax)."""
    return PlainOnnxStepper(model_dir).greedy(PROMPT, NEIGHBOUR_CHARS)


def completions(server: ServerThread) -> str:
    return f"{base_url(server)}/v1/completions"


def events(url: str, body: dict[str, Any]) -> Iterator[str]:
    """A streamed completion's texts, event by event; an error event fails the test."""
    request = urllib.request.Request(url, json.dumps({**body, "stream": True}).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        for line in response:
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            event = json.loads(line[len(b"data: ") :])
            assert "error" not in event, event
            yield event["choices"][0]["text"]


def beside_a_stream(
    server: ServerThread, body: dict[str, Any] | bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], str]:
    """Send `body` while a greedy stream runs on the same worker; (status, JSON body, the stream's whole text)."""
    neighbour = events(completions(server), {"prompt": PROMPT, "max_tokens": NEIGHBOUR_CHARS, "temperature": 0})
    first = next(neighbour)
    status, _, answer = post(completions(server), body, headers, timeout=10)
    return status, answer, first + "".join(neighbour)


def test_a_top_k_beyond_uint32_is_a_400_naming_top_k_and_the_stream_beside_it_keeps_its_text(
    edge: ServerThread, greedy: str
) -> None:
    status, answer, text = beside_a_stream(edge, {"prompt": "def f(x):", "max_tokens": 1, "charrnn": {"top_k": 2**70}})
    error = answer["error"]
    assert status == 400 and error["param"] == "charrnn.top_k", answer
    assert "top_k" in error["message"] and str(MAX_UINT32) in error["message"]
    assert text == greedy
    assert post(completions(edge), {"prompt": "a", "max_tokens": 2, "charrnn": {"top_k": MAX_UINT32}})[0] == 200
    assert post(completions(edge), {"prompt": "a", "max_tokens": 2, "charrnn": {"top_k": MAX_UINT32 + 1}})[0] == 400


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_deep_nesting_is_a_400_naming_the_depth(edge: ServerThread, greedy: str) -> None:
    status, answer, text = beside_a_stream(edge, b"[" * 50_000 + b"]" * 50_000)
    assert status == 400 and f"more than {MAX_DEPTH} deep" in answer["error"]["message"], answer
    assert text == greedy
    ok = {"prompt": "a", "max_tokens": 2}
    assert post(completions(edge), ok | {"user": nested(MAX_DEPTH - 1)})[0] == 200  # the body object is level 1
    status, _, answer = post(completions(edge), ok | {"user": nested(MAX_DEPTH)})
    assert status == 400 and f"more than {MAX_DEPTH} deep" in answer["error"]["message"]


def test_a_5001_digit_integer_is_a_400_naming_the_number_length(edge: ServerThread, greedy: str) -> None:
    status, answer, text = beside_a_stream(edge, b'{"prompt": "a", "max_tokens": ' + b"1" * 5001 + b"}")
    message = answer["error"]["message"]
    assert status == 400 and f"has 5001 characters; the limit is {MAX_NUMBER_CHARS}" in message, answer
    assert text == greedy
    longest = b'{"prompt": "a", "max_tokens": ' + b"9" * MAX_NUMBER_CHARS + b"}"
    status, _, answer = post(completions(edge), longest)  # parsed, then refused by the range check, by name
    assert status == 400 and answer["error"]["param"] == "max_tokens" and "max_request_chars" in str(answer)


@pytest.mark.parametrize("temperature", [1e-320, 5e-324, 1e-39])  # subnormal doubles, and below float32's normals
def test_a_subnormal_temperature_samples_greedily(edge: ServerThread, greedy: str, temperature: float) -> None:
    status, _, answer = post(completions(edge), {"prompt": PROMPT, "max_tokens": 300, "temperature": temperature})
    assert status == 200 and answer["choices"][0]["text"] == greedy[:300]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'{"prompt": "a", "temperature": NaN}', "NaN is not a JSON value"),
        (b'{"prompt": "a", "top_p": -Infinity}', "-Infinity is not a JSON value"),
        (b'{"prompt": "a", "seed": 1' + b"0" * MAX_NUMBER_CHARS + b"}", f"the limit is {MAX_NUMBER_CHARS}"),
        (b'{"prompt": "a", "temperature": 0.' + b"5" * MAX_NUMBER_CHARS + b"}", f"the limit is {MAX_NUMBER_CHARS}"),
        (json.dumps({"prompt": "a", "user": "u" * (MAX_STRING + 1)}).encode(), "http_max_string_chars"),
        (json.dumps({"prompt": "a", "u" * (MAX_STRING + 1): 1}).encode(), "http_max_string_chars"),  # keys too
        (b"\xff\xfe{}", "not valid JSON"),
    ],
)
def test_bodies_beyond_the_parse_bounds_are_400_naming_the_bound(edge: ServerThread, body: bytes, words: str) -> None:
    status, _, answer = post(completions(edge), body)
    assert status == 400 and words in answer["error"]["message"], answer
    assert answer["error"]["code"] == "invalid_argument"


def test_a_string_at_the_limit_is_accepted(edge: ServerThread) -> None:
    assert post(completions(edge), {"prompt": "a", "max_tokens": 1, "user": "u" * MAX_STRING})[0] == 200


def test_a_body_whose_content_encoding_does_not_decode_is_a_400(edge: ServerThread, greedy: str) -> None:
    headers = {"Content-Encoding": "gzip"}
    status, answer, text = beside_a_stream(edge, b"not gzip at all", headers)
    assert status == 400 and "Content-Encoding 'gzip'" in answer["error"]["message"], answer
    assert text == greedy
    body = gzip.compress(json.dumps({"prompt": "a", "max_tokens": 2}).encode())
    assert post(completions(edge), body, headers)[0] == 200


def test_a_request_that_is_not_http_is_refused_in_one_log_line(
    edge: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    assert edge.server is not None
    with (
        caplog.at_level(logging.INFO, logger="aiohttp.server"),
        socket.create_connection(("127.0.0.1", edge.server.http.port), timeout=10) as conn,
    ):
        conn.sendall(b"POST /v1/completions HTTP/1.1\r\nContent-Length: -1\r\n\r\n")
        reply = conn.recv(4096)
    assert reply.startswith(b"HTTP/1.") and b" 400 " in reply.split(b"\r\n")[0]
    refused = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert [r.levelno for r in refused] == [logging.INFO], [r.getMessage() for r in refused]
    assert "Content-Length" in refused[0].getMessage() and refused[0].exc_info is None
