"""Property-based fuzzing of the HTTP edge against a real `charrnn serve` process, beside the bystanders.

Three kinds of case. Completions bodies: every field of OpenAI's completions request and of the `charrnn`
extension, drawn good, hostile (anything JSON holds: huge integers, subnormal and non-finite numbers, wrong
types, nested values), or good but for one field; each gets exactly the status an oracle written here from
docs/api.md gives (200, 400, 409 for another model's token, 413 over the body limit). Raw bodies: bytes
that are not JSON, truncated JSON, nesting and number literals around the parse bounds, NaN, invalid UTF-8,
and the hostile catalogue (bench/hostile.py); the same oracle, after the bounds. Raw HTTP: a valid request
with one part mangled at the wire (method, path, version, framing, headers, Content-Encoding); the oracle
there is only that the server answers, never with a 5xx, within the timeout.

Every answer is checked: a 200 is a well-formed completion (or event stream ending in [DONE]); a refusal is
OpenAI's JSON error shape with a short one-line message, except the plain-text 400 and 417 aiohttp sends for
a request it cannot parse as HTTP at all. Never a 500, never a hang. The bystanders (tests/fuzz/conftest.py)
run throughout on the same engine and must end with exactly their texts. Counts go to the terminal
summary; CHARRNN_FUZZ_EXAMPLES scales the run.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import math
import socket
import urllib.parse
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.bystanders import Bystanders
from bench.hostile import http_cases
from charrnn.client import Client, ModelInfo
from tests.fuzz.conftest import (
    CHEAP_CHARS,
    COUNTS,
    FUZZ_LIMITS,
    check_bystanders,
    examples,
    http_url,
    metric,
    scored_tokens,
)
from tests.fuzz.test_fuzz_rpcs import FUZZ, MAX_DETAILS, in_vocab, long_text
from tests.service.harness import ServerProcess

PER_EXAMPLE = 8
TIMEOUT_S = 30  # an answer later than this is a hang
MAX_PROMPT = FUZZ_LIMITS["--max-prompt-chars"]
MAX_CHARS = FUZZ_LIMITS["--max-request-chars"]
MAX_STOPS = FUZZ_LIMITS["--max-stop-strings"]
MAX_STOP_CHARS = FUZZ_LIMITS["--max-stop-chars"]
MAX_WATCHED = FUZZ_LIMITS["--max-watched-units"]
MAX_BODY = FUZZ_LIMITS["--http-max-body-kb"] * 1024
MAX_STRING = FUZZ_LIMITS["--http-max-string-chars"]
# The parse bounds docs/api.md gives.
MAX_DEPTH = 16
MAX_NUMBER_CHARS = 64
# The request's fields as docs/api.md lists them; those OpenAI defines that take only their neutral value.
FIELDS = ("model", "prompt", "max_tokens", "temperature", "top_p", "seed", "stop", "stream", "stream_options", "user")
NEUTRAL: dict[str, Any] = {
    "n": 1,
    "best_of": 1,
    "echo": False,
    "logprobs": 0,
    "suffix": "",
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logit_bias": {},
}
EXTENSIONS = ("top_k", "resume_token", "watch")
ABSENT = object()  # a field left out of the body


@dataclass
class Web:
    """The fuzzed server's HTTP face and what the oracle needs to know about it."""

    server: ServerProcess
    host: str
    port: int
    info: ModelInfo
    tokens: list[str]  # valid resume tokens, base64url
    foreign: list[str]  # another model's
    bystanders: Bystanders

    def watchable(self, kind: str, layer: int, index: int) -> bool:
        kinds = {"h", "c"} if self.info.cell == "lstm" else {"h"}
        return kind in kinds and layer < self.info.layers and index < self.info.hidden_size


def _b64(token: bytes) -> str:
    return base64.urlsafe_b64encode(token).decode("ascii")


@pytest.fixture(scope="module")
def web(fuzz_server: ServerProcess, other_server: ServerProcess, bystanders: Bystanders) -> Web:
    parts = urllib.parse.urlsplit(http_url(fuzz_server))
    with Client(fuzz_server.target, timeout=10) as client:
        info = client.info()
    texts = ["a", "def f(x):\n", "0123", "Zz ~"]
    tokens = [_b64(t) for t in scored_tokens(fuzz_server.target, texts)]
    foreign = [_b64(t) for t in scored_tokens(other_server.target, texts)]
    return Web(fuzz_server, parts.hostname or "", parts.port or 0, info, tokens, foreign, bystanders)


# --- calls ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes


def _post(w: Web, body: bytes, headers: dict[str, str] | None = None) -> Answer:
    """One POST /v1/completions, read to its end; a timeout fails the test (a hang)."""
    w.bystanders.witness()
    conn = http.client.HTTPConnection(w.host, w.port, timeout=TIMEOUT_S)
    try:
        conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return Answer(response.status, response.getheader("Content-Type", ""), response.read())
    finally:
        conn.close()


def _wire(w: Web, raw: bytes) -> Answer | None:
    """Raw bytes to the HTTP port (every wire case says Connection: close); the answer read to the server's
    close, or None if it closed without one."""
    w.bystanders.witness()
    received = b""
    connection = socket.create_connection((w.host, w.port), timeout=TIMEOUT_S)
    # A close with bytes unread arrives as a reset.
    with connection as sock, contextlib.suppress(ConnectionResetError, BrokenPipeError):
        sock.sendall(raw)
        while chunk := sock.recv(65536):
            received += chunk
    return _response(received) if received else None


def _response(raw: bytes) -> Answer:
    """An HTTP/1.x response (any version the status line names), past any 100 Continue, body de-chunked."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.split(b"\r\n")
    status = int(status_line.split()[1])
    if 100 <= status < 200:
        return _response(body)
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(b":") for line in lines)}
    if headers.get(b"transfer-encoding") == b"chunked":
        body = _dechunked(body)
    return Answer(status, headers.get(b"content-type", b"").decode(), body)


def _dechunked(body: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return out
        out, body = out + body[:size], body[size + 2 :]


def _check(answer: Answer, expected: int, case: object) -> None:
    shown = repr(case)[:600]
    assert answer.status == expected, (answer.status, answer.body[:300], expected, shown)
    _well_formed(answer, shown)


def _well_formed(answer: Answer, shown: str) -> None:
    """A completion, an event stream ending in [DONE], or an error in OpenAI's shape with a short message."""
    if answer.status == 200 and answer.content_type.startswith("text/event-stream"):
        events = answer.body.split(b"\n\n")
        assert events[-2:] == [b"data: [DONE]", b""], (answer.body[-300:], shown)
        for event in events[:-2]:
            assert "error" not in json.loads(event.removeprefix(b"data: ")), (event[:300], shown)
        return
    assert answer.content_type.startswith("application/json"), (answer, shown)
    body = json.loads(answer.body)
    if answer.status == 200:
        assert isinstance(body["choices"][0]["text"], str) and body["charrnn"]["resume_token"], shown
        return
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, (error, shown)
    message = error["message"]
    assert message and len(message) <= MAX_DETAILS and "\n" not in message, (message[:600], shown)
    assert error["code"] != "internal", (error, shown)


# --- the oracle: the API's rules ------------------------------------------------------------------
def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _within(value: Any, low: float, high: float, low_open: bool = False) -> bool:
    """A finite number in [low, high] (or (low, high])."""
    try:
        number = float(value)
    except OverflowError:
        return False
    return math.isfinite(number) and (low < number if low_open else low <= number) and number <= high


def _text_ok(w: Web, text: str, limit: int) -> bool:
    return len(text) <= limit and set(text) <= set(w.info.vocabulary)


def _units(spec: str) -> list[tuple[str, int, int]] | None:
    """A watch spec's units (KIND:LAYER:INDEX or KINDLAYER:INDEX, comma-separated), None if one is malformed."""
    units = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        kind, _, rest = item.partition(":") if ":" in item[:2] else (item[:1], "", item[1:])
        layer, _, index = rest.partition(":")
        if kind not in ("h", "c") or not (layer.isascii() and layer.isdigit() and index.isascii() and index.isdigit()):
            return None
        units.append((kind, int(layer), int(index)))
    return units


def _typed(w: Web, body: dict[str, Any]) -> bool:
    """Every field of the right type and spelling (the refusals before any range is checked)."""
    ext = body.get("charrnn")
    if any(name not in FIELDS and name not in NEUTRAL and name != "charrnn" for name in body):
        return False
    if any(body.get(name) is not None and body[name] != value for name, value in NEUTRAL.items()):
        return False
    stop = body.get("stop")
    options = body.get("stream_options")
    checks = [
        body.get("prompt") is None or isinstance(body["prompt"], str),
        stop is None or isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop)),
        options is None or isinstance(options, dict),
        ext is None or isinstance(ext, dict),
        body.get("max_tokens") is None or _integer(body["max_tokens"]),
        body.get("temperature") is None or _number(body["temperature"]),
        body.get("top_p") is None or _number(body["top_p"]),
        body.get("seed") is None or _integer(body["seed"]),
        body.get("model") is None or isinstance(body["model"], str),
        body.get("stream") is None or isinstance(body["stream"], bool),
    ]
    if not all(checks):
        return False
    if isinstance(options, dict) and not (
        options.get("include_usage") is None or isinstance(options["include_usage"], bool)
    ):
        return False
    ext = ext or {}
    watch = ext.get("watch")
    token = ext.get("resume_token")
    specs_ok = isinstance(watch, list) and all(isinstance(s, str) and _units(s) is not None for s in watch)
    return (
        all(name in EXTENSIONS for name in ext)
        and (watch is None or specs_ok)
        and (ext.get("top_k") is None or _integer(ext["top_k"]))
        and (token is None or isinstance(token, str))  # any string but a live token is refused (400 or 409)
    )  # fmt: skip


def _in_range(w: Web, body: dict[str, Any], has_state: bool) -> bool:
    """The range rules, shared with gRPC (docs/api.md's Sampling and Limits)."""
    ext = body.get("charrnn") or {}
    prompt = body.get("prompt") or ""
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else (stop or [])
    units = [u for spec in ext.get("watch") or [] for u in _units(spec) or []]
    temperature, top_p, seed = body.get("temperature"), body.get("top_p"), body.get("seed")
    return all(
        [
            _text_ok(w, prompt, MAX_PROMPT) and (bool(prompt) or has_state),
            0 <= (body.get("max_tokens") or 0) <= MAX_CHARS,
            temperature is None or _within(temperature, 0, 100),
            top_p is None or _within(top_p, 0, 1, low_open=True),
            0 <= (ext.get("top_k") or 0) <= 2**32 - 1,
            seed is None or 0 <= seed <= 2**64 - 1,
            len(stops) <= MAX_STOPS and all(0 < len(s) <= MAX_STOP_CHARS for s in stops),
            len(units) <= MAX_WATCHED and all(w.watchable(*u) for u in units),
        ]
    )


def expect_body(w: Web, body: Any) -> int:
    """The status a parsed body gets: types first (400), then the token (400 or 409 for another model's),
    the model's name (404 unless the served one), then the ranges (400)."""
    if not isinstance(body, dict) or not _typed(w, body):
        return 400
    token = (body.get("charrnn") or {}).get("resume_token")
    if token is not None and token not in w.tokens:
        return 409 if token in w.foreign else 400
    if body.get("model") not in (None, w.info.served_name):
        return 404
    return 200 if _in_range(w, body, token is not None) else 400


class Refused(Exception):
    """The body breaks a parse bound: the status it gets."""


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, [*value, *value.values()]), default=0)
    return 0


def _longest_string(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    items = [*value, *value.values()] if isinstance(value, dict) else value if isinstance(value, list) else []
    return max(map(_longest_string, items), default=0)


def _short_number(literal: str) -> Any:
    if len(literal) > MAX_NUMBER_CHARS:
        raise Refused(400)
    return float(literal) if any(c in literal for c in ".eE") else int(literal)


def _no_constants(name: str) -> Any:
    raise Refused(400)


def expect_raw(w: Web, raw: bytes) -> int:
    """Bytes as a body: over the size limit 413; not JSON, or beyond a parse bound, 400; else the body's rules."""
    if len(raw) > MAX_BODY:
        return 413
    try:
        body = json.loads(raw, parse_int=_short_number, parse_float=_short_number, parse_constant=_no_constants)
        if _depth(body) > MAX_DEPTH or _longest_string(body) > MAX_STRING:
            return 400
    except Refused as refused:
        return int(refused.args[0])
    except (ValueError, RecursionError):
        return 400
    return expect_body(w, body)


# --- strategies ----------------------------------------------------------------------------------
# Each field has a good strategy (within every rule) and a hostile one (anything JSON holds, the bounds and
# their neighbours). Bodies are drawn all good, all hostile, or good but for one field.
huge = st.sampled_from([2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**70, -(2**70), 10**64, 10**65])
tiny = st.sampled_from([0.0, -0.0, 5e-324, 1e-320, 1e-39, 1.1754943508222875e-38, 1e-7, 1e308])
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), huge, st.floats(), tiny, st.text(max_size=12))
json_any = st.recursive(
    json_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)  # fmt: skip
absent = st.just(ABSENT)
hostile_text = st.one_of(
    st.just(""), st.text(max_size=40), st.text(alphabet=in_vocab, max_size=MAX_PROMPT + 8), long_text
)
# Watch specs: the CLI's spellings, some outside the tiny model (2 layers of 24), some malformed.
specs = st.sampled_from(["h:0:0", "c1:23", "h1:5", "c:0:7,h:1:2", "", "h:2:0", "c0:24", "h0:99999999999999999999",
                         "q1", "h:x:1", "h1", "h:1:2:3", " h:0:1 , ", "c0:-1"])  # fmt: skip
good_specs = st.sampled_from(["h:0:0", "c1:23", "h1:5", "c:0:7", "h:1:2"])
# resume_token: ("valid" | "foreign", i), or a string (random, or base64url of random bytes)
tokens = st.one_of(
    st.tuples(st.sampled_from(["valid", "foreign"]), st.integers(0, 3)),
    st.text(max_size=40),
    st.binary(max_size=80).map(_b64),
)
good_extension = {
    "top_k": st.integers(0, 40),
    "watch": st.lists(good_specs, max_size=MAX_WATCHED),
    "resume_token": st.tuples(st.just("valid"), st.integers(0, 3)),
}
hostile_extension = {
    "top_k": st.one_of(st.integers(), huge, json_any),
    "watch": st.one_of(st.lists(specs, max_size=MAX_WATCHED + 2), json_any),
    "resume_token": st.one_of(tokens, json_any),
    "unknown": json_any,
}


@st.composite
def extensions(draw: st.DrawFn, hostile: bool) -> dict[str, Any]:
    """The `charrnn` object: its keys good, or good but for one hostile one (maybe one it does not know)."""
    bad = draw(st.sampled_from(sorted(hostile_extension))) if hostile else None
    ext = {name: draw(strategy) for name, strategy in good_extension.items() if draw(st.booleans())}
    return ext if bad is None else ext | {bad: draw(hostile_extension[bad])}


neutral_bad = st.sampled_from([2, -1, 0.5, "1", [1], {"a": 1}, "x"])
good: dict[str, st.SearchStrategy[Any]] = {
    "model": st.one_of(absent, st.none(), st.just("SERVED")),
    "prompt": st.text(alphabet=in_vocab, min_size=1, max_size=MAX_PROMPT),
    "max_tokens": st.one_of(absent, st.integers(0, CHEAP_CHARS)),
    "temperature": st.one_of(absent, st.none(), st.floats(0, 2), tiny.filter(lambda t: t >= 0)),
    "top_p": st.one_of(absent, st.floats(0, 1, exclude_min=True)),
    "seed": st.one_of(absent, st.integers(0, 2**64 - 1)),
    "stop": st.one_of(
        absent,
        st.text(alphabet="ab\n", min_size=1, max_size=MAX_STOP_CHARS),
        st.lists(st.text(alphabet="ab\n", min_size=1, max_size=MAX_STOP_CHARS), max_size=MAX_STOPS),
    ),
    "stream": st.one_of(absent, st.booleans()),
    "stream_options": st.one_of(absent, st.fixed_dictionaries({}, optional={"include_usage": st.booleans()})),
    "user": st.one_of(absent, st.text(max_size=20)),
    "charrnn": st.one_of(absent, extensions(hostile=False)),
} | {name: st.one_of(absent, st.none(), st.just(value)) for name, value in NEUTRAL.items()}
hostile: dict[str, st.SearchStrategy[Any]] = {
    "model": st.one_of(st.text(max_size=20), json_any),
    "prompt": st.one_of(hostile_text, json_any),
    "max_tokens": st.one_of(st.integers(), huge, st.sampled_from([MAX_CHARS, MAX_CHARS + 1, -1]), json_any),
    "temperature": st.one_of(st.floats(), tiny, huge, st.integers(-3, 200), json_any),
    "top_p": st.one_of(st.floats(), tiny, huge, json_any),
    "seed": st.one_of(st.integers(), huge, json_any),
    "stop": st.one_of(
        st.lists(st.one_of(st.just(""), st.text(max_size=12), long_text), max_size=MAX_STOPS + 3), json_any
    ),
    "stream": json_any,
    "stream_options": st.one_of(json_any, st.fixed_dictionaries({"include_usage": json_any})),
    "user": json_any,
    "charrnn": st.one_of(json_any, extensions(hostile=True)),
} | {name: neutral_bad for name in NEUTRAL}
NAMES = tuple(good)


# A number at or past a bound: what the engine's columns (int64, uint64, float64) and gRPC's uint32 hold.
numbers = st.one_of(huge, tiny, st.integers(-(2**70), 2**70), st.floats(), st.sampled_from([MAX_CHARS, MAX_CHARS + 1]))
NUMERIC = ("max_tokens", "temperature", "top_p", "seed", "charrnn.top_k")


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A body drawn all good, all hostile, good but for one field, or good but for one number at or past a
    bound; sometimes with an unknown field."""
    mode = draw(st.sampled_from(["good", "one hostile", "hostile", "one number"]))
    bad = draw(st.sampled_from(NAMES)) if mode == "one hostile" else None
    fields = {n: draw(hostile[n] if mode == "hostile" or n == bad else good[n]) for n in NAMES}
    if mode == "one number":
        name = draw(st.sampled_from(NUMERIC))
        if name == "charrnn.top_k":
            ext = fields["charrnn"] if isinstance(fields["charrnn"], dict) else {}
            fields["charrnn"] = {**ext, "top_k": draw(numbers)}
        else:
            fields[name] = draw(numbers)
    if draw(st.integers(0, 9)) == 0:
        fields[draw(st.sampled_from(["max_token", "charrnn_top_k", "functions", "x" * 40]))] = draw(json_leaf)
    if draw(st.integers(0, 9)) == 0 and isinstance(fields["charrnn"], dict):  # another model's token: 409
        fields["charrnn"] = {**fields["charrnn"], "resume_token": ("foreign", draw(st.integers(0, 3)))}
    return {name: value for name, value in fields.items() if value is not ABSENT}


def _materialise(w: Web, body: dict[str, Any]) -> dict[str, Any]:
    """Markers replaced by the live server's values: the served model's name, its tokens."""
    body = dict(body)
    if body.get("model") == "SERVED":
        body["model"] = w.info.served_name
    ext = body.get("charrnn")
    if isinstance(ext, dict) and isinstance(ext.get("resume_token"), tuple):
        kind, index = ext["resume_token"]
        body["charrnn"] = {**ext, "resume_token": (w.tokens if kind == "valid" else w.foreign)[index]}
    return body


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# Bodies whose bytes are odd: invalid UTF-8, a repeated key (the last wins), a BOM and UTF-16 (the stdlib
# parser reads both), past the size limit, empty, null.
ODD_BODIES = [
    b'{"prompt": "\xff"}',
    b'{"prompt": "a", "prompt": 5}',
    b'\xef\xbb\xbf{"prompt": "a"}',
    '{"prompt": "a"}'.encode("utf-16"),
    b" " * (MAX_BODY + 1) + b"{}",
    b"",
    b"null",
]
raw_bodies = st.one_of(
    st.binary(max_size=64),
    st.tuples(bodies(), st.integers(0, 200)).map(lambda c: json.dumps(c[0]).encode()[: c[1]]),  # truncated JSON
    st.sampled_from([MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 100, 1000, 4000]).flatmap(
        lambda d: st.sampled_from([_nested(d), b'{"prompt": "a", "max_tokens": 1, "user": ' + _nested(d - 1) + b"}"])
    ),
    st.sampled_from([19, 20, MAX_NUMBER_CHARS, MAX_NUMBER_CHARS + 1, 4299, 4301, 5001]).flatmap(
        lambda n: st.sampled_from(
            [
                b'{"prompt": "a", "seed": ' + b"1" * n + b"}",
                b'{"prompt": "a", "temperature": 0.' + b"0" * (n - 2) + b"}",
            ]
        )
    ),
    st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-0", b"1E-400"]).map(
        lambda n: b'{"prompt": "a", "max_tokens": 1, "temperature": ' + n + b"}"
    ),
    st.sampled_from([MAX_STRING, MAX_STRING + 1]).map(lambda n: json.dumps({"prompt": "a", "user": "u" * n}).encode()),
    st.sampled_from(ODD_BODIES),
)


def _unreadable(case: Any) -> int:
    """A hostile-catalogue body whose Content-Encoding does not decode: 400; one that decodes past the limit: 413."""
    return 413 if case.name == "gzip bomb" else 400


@settings(FUZZ, max_examples=examples(800, PER_EXAMPLE))
@given(batch=st.lists(bodies(), min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
def test_completions_get_the_status_the_rules_give(web: Web, batch: list[dict[str, Any]]) -> None:
    for drawn in batch:
        body = _materialise(web, drawn)
        raw = json.dumps(body).encode()
        expected = expect_raw(web, raw)
        _check(_post(web, raw), expected, body)
        COUNTS["http cases"] += 1
        COUNTS[f"http cases: completions {expected}"] += 1


@settings(FUZZ, max_examples=examples(300, PER_EXAMPLE))
@given(batch=st.lists(raw_bodies, min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
def test_raw_bodies_get_the_status_the_rules_give(web: Web, batch: list[bytes]) -> None:
    for raw in batch:
        expected = expect_raw(web, raw)
        _check(_post(web, raw), expected, raw[:200])
        COUNTS["http cases"] += 1
        COUNTS[f"http cases: raw body {expected}"] += 1


@pytest.mark.parametrize("case", http_cases(), ids=lambda c: c.name)
def test_the_hostile_catalogue_gets_the_status_the_rules_give(web: Web, case: Any) -> None:
    headers = dict(case.headers)
    expected = _unreadable(case) if "Content-Encoding" in headers else expect_raw(web, case.body)
    _check(_post(web, case.body, headers), expected, case.name)
    COUNTS["http cases"] += 1


# --- malformed HTTP ------------------------------------------------------------------------------
def _request(method: bytes, path: bytes, version: bytes, headers: list[bytes], body: bytes) -> bytes:
    return b"\r\n".join([b" ".join([method, path, version]), *headers]) + b"\r\n\r\n" + body


def _chunked(body: bytes, size: bytes | None) -> bytes:
    return (size if size is not None else b"%x" % len(body)) + b"\r\n" + body + b"\r\n0\r\n\r\n"


ODD_HEADERS = [
    b"X-A: " + b"a" * 9000,
    b"Bad Header: 1",
    b"X-\xff: \xfe",
    b"NoColon",
    b"Authorization: Bearer \xff",
    b"Content-Type: text/plain; charset=\xff",
]


@st.composite
def wire_requests(draw: st.DrawFn) -> bytes:
    """A valid completions request with one part mangled (framing always complete: a hang is the server's)."""
    body = draw(st.sampled_from([b'{"prompt": "a", "max_tokens": 3}', b'{"prompt": "a", "stream": true}', b"{}"]))
    method, path, version = b"POST", b"/v1/completions", b"HTTP/1.1"
    headers = [b"Host: fuzz", b"Connection: close", b"Content-Type: application/json"]
    framing = [b"Content-Length: %d" % len(body)]
    part = draw(st.sampled_from(["method", "path", "version", "framing", "header", "encoding", "expect", "pipelined"]))
    if part == "method":
        method = draw(st.sampled_from([b"GET", b"PUT", b"post", b"DELETE", b"P\x00ST", b"", b"CONNECT"]))
    elif part == "path":
        path = draw(st.sampled_from([b"/v1/completions/", b"/v1/completions?x=1", b"//v1/completions", b"v1",
                                     b"/static/../../etc/passwd", b"/%2e%2e/%2e%2e/etc/passwd", b"/v1/models",
                                     b"/" + b"a" * 9000, b"/v1/comp\xffletions", b"*"]))  # fmt: skip
    elif part == "version":
        version = draw(st.sampled_from([b"HTTP/1.0", b"HTTP/2.0", b"HTTP/9.9", b"HTTX/1.1", b"", b"HTTP/1.1 extra"]))
    elif part == "framing":
        framing = draw(
            st.sampled_from(
                [[b"Content-Length: x"], [b"Content-Length: -1"], [b"Content-Length: 99999999999999999999999"],
                 [b"Content-Length: 2", b"Content-Length: 3"], [b"Transfer-Encoding: chunked"],
                 [b"Transfer-Encoding: chunked", b"Content-Length: %d" % len(body)], [b"Transfer-Encoding: gzip"],
                 [b"Content-Length: 0"], []]
            )
        )  # fmt: skip
        if b"Transfer-Encoding: chunked" in framing:
            body = _chunked(body, draw(st.sampled_from([None, b"zz", b"-1", b"ffffffffffffffffffff"])))
    elif part == "header":
        headers.append(draw(st.sampled_from(ODD_HEADERS)))
        if draw(st.booleans()):
            headers += [b"X-%d: 1" % i for i in range(200)]
    elif part == "encoding":
        encoding, data = draw(st.sampled_from([(b"gzip", b"not gzip"), (b"deflate", b"\x00\x01"), (b"br", b"??"),
                                               (b"xz", body), (b"gzip, gzip", body), (b"identity", body)]))  # fmt: skip
        body, framing = data, [b"Content-Length: %d" % len(data), b"Content-Encoding: " + encoding]
    elif part == "expect":
        headers.append(draw(st.sampled_from([b"Expect: 100-continue", b"Expect: banana"])))
    else:
        body += draw(st.sampled_from([b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n", b"\x00" * 10]))
    return _request(method, path, version, headers + framing, body)


@settings(FUZZ, max_examples=examples(400, PER_EXAMPLE))
@given(batch=st.lists(wire_requests(), min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
def test_malformed_http_is_answered_without_a_5xx(web: Web, batch: list[bytes]) -> None:
    for raw in batch:
        answer = _wire(web, raw)
        COUNTS["http cases"] += 1
        COUNTS[f"http cases: wire {answer.status if answer else 'closed'}"] += 1
        if answer is None:
            continue
        assert answer.status < 500, (answer, raw[:300])
        if answer.content_type.startswith("text/plain"):  # aiohttp's own: a request it cannot parse as HTTP
            assert answer.status in (400, 417), (answer, raw[:300])
        else:
            _well_formed(answer, repr(raw[:300]))


# --- coverage and afterwards ---------------------------------------------------------------------
def test_the_strategies_set_every_field() -> None:
    """Every field of the completions request and of the extension is drawn, good and hostile."""
    seen: set[str] = set()

    @settings(FUZZ, max_examples=300)
    @given(body=bodies())
    def collect(body: dict[str, Any]) -> None:
        seen.update(body)
        if isinstance(body.get("charrnn"), dict):
            seen.update(f"charrnn.{name}" for name in body["charrnn"])
        if isinstance(body.get("stream_options"), dict):
            seen.update(f"stream_options.{name}" for name in body["stream_options"])

    collect()
    every = {*FIELDS, *NEUTRAL, "charrnn", *(f"charrnn.{n}" for n in EXTENSIONS), "stream_options.include_usage"}
    assert every <= seen, every - seen


def test_the_bystanders_kept_their_text(web: Web) -> None:
    """Stops the bystanders (so it runs after the fuzz): each run was exactly its text alone, beside the fuzz."""
    check_bystanders(web.bystanders, "HTTP")


def test_server_still_serving(web: Web) -> None:
    assert _post(web, json.dumps({"prompt": "a", "max_tokens": 3}).encode()).status == 200
    assert metric(web.server, "charrnn_live_streams") == 0
    output = web.server.output()
    assert "Traceback" not in output and "ERROR" not in output, output[-3000:]
