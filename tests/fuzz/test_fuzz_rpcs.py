"""Property-based fuzzing of every RPC against a real `charrnn serve` process.

Each example sends a batch of requests (cheap unary calls and short streams under small limits)
and checks each status against an oracle: the code the service's rules give (INVALID_ARGUMENT,
NOT_FOUND, FAILED_PRECONDITION or OK), with a message; never INTERNAL or UNKNOWN. Resume tokens
are fuzzed by random bytes, truncation, bit flips, extra bytes, a wrong key, another model, and
forgeries signed with the right key. Afterwards the server is still SERVING, its RSS is flat and
its sessions stay within their bound. Counts land in the terminal summary (conftest.COUNTS);
CHARRNN_FUZZ_EXAMPLES=20000 scales the run up.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charrnn.client import Client
from charrnn.v1 import charrnn_pb2 as pb
from service.tokens import _HEADER, _MAC_SIZE, TOKEN_MAGIC, TOKEN_VERSION
from tests.fuzz.conftest import COUNTS, FUZZ_LIMITS, examples
from tests.service.harness import TEST_KEY, ServerProcess

C = grpc.StatusCode
PER_EXAMPLE = 8
FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
    report_multiple_bugs=False,
)
MAX_PROMPT = FUZZ_LIMITS["--max-prompt-chars"]
MAX_SCORE = FUZZ_LIMITS["--max-score-chars"]
MAX_CHARS = FUZZ_LIMITS["--max-request-chars"]
MAX_STOPS = FUZZ_LIMITS["--max-stop-strings"]
MAX_STOP_CHARS = FUZZ_LIMITS["--max-stop-chars"]
RAW = {"request_serializer": bytes, "response_deserializer": bytes}
METHODS = {
    "Generate": "unary_stream",
    "Score": "unary_unary",
    "GetModelInfo": "unary_unary",
    "Session": "stream_stream",
}


@dataclass
class Target:
    """A live fuzz server and what the oracle needs to know about it."""

    server: ServerProcess
    channel: grpc.Channel
    vocab: frozenset[str]
    tokens: list[bytes]  # valid resume tokens (with state and logits)
    foreign: list[bytes]  # valid tokens from another model
    rss_kb: int = 0
    rpcs: dict[str, Callable[..., Any]] = field(default_factory=dict)

    def raw(self, method: str) -> Callable[..., Any]:
        if method not in self.rpcs:
            kind = METHODS[method]
            self.rpcs[method] = getattr(self.channel, kind)(f"/charrnn.v1.CharRNN/{method}", **RAW)
        return self.rpcs[method]


def _rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+)", status)
    assert match is not None
    return int(match.group(1))


def _metric(server: ServerProcess, name: str) -> float:
    port = int((server.port_file.parent / "metrics").read_text())
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    match = re.search(rf"^{name} (\S+)$", body, re.MULTILINE)
    assert match is not None, name
    return float(match.group(1))


def _scored_tokens(target: str, texts: list[str]) -> list[bytes]:
    with Client(target, timeout=10) as client:
        return [client.score(text).resume_token for text in texts]


@pytest.fixture(scope="module")
def target(fuzz_server: ServerProcess, other_server: ServerProcess) -> Iterator[Target]:
    with Client(fuzz_server.target, timeout=10) as client:
        vocab = frozenset(client.info().vocabulary)
    texts = ["a", "def f(x):\n", "0123", "Zz ~"]
    channel = grpc.insecure_channel(fuzz_server.target)
    t = Target(fuzz_server, channel, vocab, _scored_tokens(fuzz_server.target, texts), [])
    t.foreign = _scored_tokens(other_server.target, texts)
    for _ in range(50):  # warm up allocator and caches before the RSS baseline
        _call(t, "Score", pb.ScoreRequest(text="warm up " * 4).SerializeToString())
    t.rss_kb = _rss_kb(fuzz_server.proc.pid)
    yield t
    channel.close()


# --- calls ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    details: str


def _call(t: Target, method: str, payload: bytes | list[bytes]) -> Outcome:
    """One RPC with a raw request (or, for Session, raw request messages); streams are drained."""
    rpc = t.raw(method)
    try:
        if method == "Generate":
            list(rpc(payload, timeout=30))
        elif method == "Session":
            assert isinstance(payload, list)
            list(rpc(iter(payload), timeout=30))
        else:
            rpc(payload, timeout=30)
    except grpc.RpcError as exc:
        call: Any = exc
        return Outcome(call.code(), call.details() or "")
    return Outcome(C.OK, "")


def _check(outcome: Outcome, expected: set[grpc.StatusCode], case: object) -> None:
    assert outcome.code not in (C.INTERNAL, C.UNKNOWN), (outcome, case)
    assert outcome.code in expected, (outcome, expected, case)
    if outcome.code is not C.OK:
        assert outcome.details and not outcome.details.startswith("Unexpected"), (outcome, case)


# --- strategies ----------------------------------------------------------------------------------
float32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
texts = st.one_of(
    st.just(""),
    st.text(alphabet="abc xyz(){}:\n0123", max_size=MAX_PROMPT + 8),
    st.text(max_size=40),  # any code point, mostly outside the vocabulary
    st.integers(MAX_SCORE + 1, 5000).map(lambda n: "x" * n),  # far over the limits
)
stops = st.lists(
    st.one_of(st.just(""), st.text(alphabet="ab\n", max_size=MAX_STOP_CHARS + 2), st.text(max_size=12)),
    max_size=MAX_STOPS + 3,
)
sampling: st.SearchStrategy[dict[str, Any]] = st.builds(
    dict,
    temperature=st.one_of(st.none(), float32, st.floats(0, 2, width=32)),
    top_p=st.one_of(st.none(), float32, st.floats(0, 1, width=32)),
    top_k=st.one_of(st.just(0), st.integers(0, 2**32 - 1)),
    seed=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
)
starts = st.one_of(
    st.just(("none", None)),
    st.tuples(st.just("resume_token"), st.binary(max_size=120)),
    st.tuples(st.just("session_id"), st.text(max_size=40)),
)
max_chars = st.one_of(st.integers(0, MAX_CHARS + 2), st.integers(0, 2**32 - 1))


def _params(values: dict[str, Any]) -> pb.SamplingParams:
    return pb.SamplingParams(**{k: v for k, v in values.items() if v is not None})


def _sampling_ok(values: dict[str, Any]) -> bool:
    temp, top_p = values["temperature"], values["top_p"]
    temp_ok = temp is None or (math.isfinite(temp) and 0 <= temp <= 100)
    return temp_ok and (top_p is None or (math.isfinite(top_p) and 0 < top_p <= 1))


def _text_ok(t: Target, text: str, limit: int) -> bool:
    return 0 < len(text) <= limit and set(text) <= t.vocab


def _start_code(start: tuple[str, Any]) -> grpc.StatusCode | None:
    """Random tokens are refused as malformed/unsigned; random session ids are unknown."""
    kind, _ = start
    return {"none": None, "resume_token": C.INVALID_ARGUMENT, "session_id": C.NOT_FOUND}[kind]


def _with_start(msg: Any, start: tuple[str, Any]) -> Any:
    kind, value = start
    if kind != "none":
        setattr(msg, kind, value)
    return msg


@st.composite
def generate_cases(draw: st.DrawFn) -> tuple[str, Any, Callable[[Target], grpc.StatusCode]]:
    prompt, n, params, stop, start = draw(texts), draw(max_chars), draw(sampling), draw(stops), draw(starts)
    msg = _with_start(pb.GenerateRequest(prompt=prompt, max_chars=n, sampling=_params(params), stop=stop), start)
    msg.create_session = draw(st.booleans())

    def expect(t: Target) -> grpc.StatusCode:
        valid = (
            _text_ok(t, prompt, MAX_PROMPT)
            and _sampling_ok(params)
            and n <= MAX_CHARS
            and len(stop) <= MAX_STOPS
            and all(0 < len(s) <= MAX_STOP_CHARS for s in stop)
        )
        return _start_code(start) or (C.OK if valid else C.INVALID_ARGUMENT)

    return "Generate", msg, expect


@st.composite
def score_cases(draw: st.DrawFn) -> tuple[str, Any, Callable[[Target], grpc.StatusCode]]:
    text, start = draw(texts), draw(starts)
    msg = _with_start(pb.ScoreRequest(text=text), start)

    def expect(t: Target) -> grpc.StatusCode:
        return _start_code(start) or (C.OK if _text_ok(t, text, MAX_SCORE) else C.INVALID_ARGUMENT)

    return "Score", msg, expect


def _bad_utf8_field(field_number: int, junk: bytes) -> bytes:
    """A length-delimited field whose bytes are not UTF-8 (0xff never is)."""
    value = b"\xff" + junk
    return bytes([field_number << 3 | 2, len(value)]) + value


unparsable = st.one_of(
    st.tuples(st.sampled_from(["Generate", "Score"]), st.integers(1, 1), st.binary(max_size=20)),  # text/prompt
    st.tuples(st.just("Generate"), st.sampled_from([4, 6]), st.binary(max_size=20)),  # stop, session_id
    st.tuples(st.just("Score"), st.just(3), st.binary(max_size=20)),  # session_id
).map(lambda c: (c[0], _bad_utf8_field(c[1], c[2]), lambda t: C.INVALID_ARGUMENT))
random_bytes = st.tuples(st.sampled_from(["Generate", "Score", "GetModelInfo"]), st.binary(max_size=64)).map(
    lambda c: (c[0], c[1], None)  # may parse as anything: any deliberate code
)
info_cases = st.just(("GetModelInfo", pb.GetModelInfoRequest(), lambda t: C.OK))
request_cases = st.one_of(generate_cases(), score_cases(), info_cases, unparsable, random_bytes)
DELIBERATE = {C.OK, C.INVALID_ARGUMENT, C.NOT_FOUND, C.FAILED_PRECONDITION}


@settings(FUZZ, max_examples=examples(2000, PER_EXAMPLE))
@given(batch=st.lists(request_cases, min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
def test_requests_get_deliberate_statuses(target: Target, batch: list[tuple[str, Any, Any]]) -> None:
    for method, msg, expect in batch:
        payload = msg if isinstance(msg, bytes) else msg.SerializeToString()
        outcome = _call(target, method, payload)
        _check(outcome, DELIBERATE if expect is None else {expect(target)}, (method, msg))
        COUNTS["request cases"] += 1


# --- Session -------------------------------------------------------------------------------------
actions = st.one_of(
    texts.map(lambda s: pb.SessionRequest(feed=pb.FeedAction(text=s))),
    st.builds(
        lambda p, n, s, stop: pb.SessionRequest(
            generate=pb.GenerateAction(prompt=p, max_chars=n, sampling=_params(s), stop=stop)
        ),
        texts,
        max_chars,
        sampling,
        stops,
    ),
    st.just(pb.SessionRequest(token=pb.TokenAction())),
    st.just(pb.SessionRequest(reset=pb.ResetAction())),
    st.just(pb.SessionRequest(cancel=pb.CancelAction())),
    st.just(pb.SessionRequest()),  # no action
    st.binary(max_size=40).map(lambda b: pb.SessionRequest(load=pb.LoadAction(resume_token=b))),
    st.text(max_size=30).map(lambda s: pb.SessionRequest(load=pb.LoadAction(session_id=s))),
)
session_messages = st.lists(
    st.one_of(actions.map(lambda a: a.SerializeToString()), st.binary(max_size=16)), min_size=1, max_size=6
)


@settings(FUZZ, max_examples=examples(400, 1))
@given(messages=session_messages)
def test_session_actions_get_deliberate_statuses(target: Target, messages: list[bytes]) -> None:
    outcome = _call(target, "Session", messages)
    _check(outcome, DELIBERATE, messages)
    COUNTS["request cases"] += 1
    COUNTS["session actions"] += len(messages)


# --- resume tokens -------------------------------------------------------------------------------
def _sign(payload: bytes, key: bytes) -> bytes:
    return payload + hmac.new(key, payload, hashlib.sha256).digest()


@st.composite
def token_cases(draw: st.DrawFn, t_tokens: int = 4) -> tuple[str, Callable[[Target], tuple[bytes, set[Any]]]]:
    """(kind, build): build(target) gives the token and the codes it may get."""
    kind = draw(
        st.sampled_from(["random", "truncated", "bitflip", "extended", "wrong_key", "foreign", "forged", "valid"])
    )
    index = draw(st.integers(0, t_tokens - 1))
    cut, bit = draw(st.integers(0, 10**6)), draw(st.integers(0, 10**7))
    blob = draw(st.binary(min_size=1, max_size=64))
    header = draw(
        st.tuples(
            st.sampled_from([TOKEN_MAGIC, b"XRT"]),
            st.sampled_from([TOKEN_VERSION, TOKEN_VERSION + 1]),
            st.booleans(),  # own model hash
            st.integers(0, 1),
            st.integers(0, 2**64 - 1),
            st.integers(0, 2**64 - 1),
            st.sampled_from([0, None, 1, 10**6]),  # n_logits: None = the model's vocab
            st.sampled_from([0, None, 1, 255]),  # n_states: None = the model's
            st.sampled_from([None, 0, 65535]),  # layers
            st.sampled_from([None, 0, 2**32 - 1]),  # hidden
        )
    )
    values = draw(st.sampled_from(["normal", "nan", "inf", "huge", "zero"]))
    key = TEST_KEY.encode()

    def build(t: Target) -> tuple[bytes, set[Any]]:
        good = t.tokens[index]
        if kind == "random":
            return blob, {C.INVALID_ARGUMENT}
        if kind == "truncated":
            return good[: cut % len(good)], {C.INVALID_ARGUMENT}
        if kind == "bitflip":
            flipped = bytearray(good)
            flipped[(bit // 8) % len(good)] ^= 1 << (bit % 8)
            return bytes(flipped), {C.INVALID_ARGUMENT}
        if kind == "extended":
            return good + blob, {C.INVALID_ARGUMENT}
        if kind == "wrong_key":
            return _sign(good[:-_MAC_SIZE], key + blob), {C.INVALID_ARGUMENT}
        if kind == "foreign":
            return t.foreign[index], {C.FAILED_PRECONDITION}
        if kind == "valid":
            return good, {C.OK}
        return _forge(good, header, values, key), DELIBERATE

    return kind, build


def _forge(good: bytes, header: tuple[Any, ...], values: str, key: bytes) -> bytes:
    """A token signed with the right key (so only a key holder could make it): odd headers and values."""
    real = _HEADER.unpack_from(good)
    magic, version, own, has_seed, seed, position, n_logits, n_states, layers, hidden = header
    fields = [
        magic,
        version,
        real[2] if own else hashlib.sha256(b"elsewhere").digest(),
        has_seed,
        seed,
        position,
        real[6] if n_logits is None else n_logits,
        real[7] if n_states is None else n_states,
        real[8] if layers is None else layers,
        real[9] if hidden is None else hidden,
    ]
    count = min(fields[6] + fields[7] * fields[8] * fields[9], 20000)
    fill = {"normal": 0.5, "nan": math.nan, "inf": math.inf, "huge": 3e38, "zero": 0.0}[values]
    body = np.full(count, fill, "<f4")
    if count and values == "normal":
        body = np.asarray(
            np.frombuffer(good, "<f4", count=min(count, (len(good) - _HEADER.size - 32) // 4), offset=_HEADER.size),
            "<f4",
        )
    return _sign(_HEADER.pack(*fields) + body.tobytes(), key)


CARRIERS: dict[str, Callable[[bytes], tuple[str, bytes | list[bytes]]]] = {
    "Score": lambda tok: ("Score", pb.ScoreRequest(text="a", resume_token=tok).SerializeToString()),
    "Generate": lambda tok: (
        "Generate",
        pb.GenerateRequest(prompt="a", max_chars=2, resume_token=tok).SerializeToString(),
    ),
    "Session": lambda tok: ("Session", [pb.SessionRequest(load=pb.LoadAction(resume_token=tok)).SerializeToString()]),
}


@settings(FUZZ, max_examples=examples(1000, PER_EXAMPLE))
@given(
    batch=st.lists(
        st.tuples(token_cases(), st.sampled_from(sorted(CARRIERS))), min_size=PER_EXAMPLE, max_size=PER_EXAMPLE
    )
)
def test_resume_tokens_are_refused_deliberately(target: Target, batch: list[tuple[Any, str]]) -> None:
    for (kind, build), carrier in batch:
        token, expected = build(target)
        method, payload = CARRIERS[carrier](token)
        _check(_call(target, method, payload), expected, (kind, carrier, token[:80]))
        COUNTS["token cases"] += 1
        COUNTS[f"token cases: {kind}"] += 1


# --- afterwards ----------------------------------------------------------------------------------
def test_server_still_serving_with_flat_memory(target: Target) -> None:
    """Runs last in this module: health, a normal request, RSS within a generous bound, sessions bounded."""
    with Client(target.server.target, timeout=10) as client:
        assert client.health() == "SERVING"
        assert client.health("charrnn.v1.CharRNN") == "SERVING"
        assert client.generate("a", max_chars=5, seed=1).text()
    growth_mb = (_rss_kb(target.server.proc.pid) - target.rss_kb) / 1024
    COUNTS["server RSS growth (MB)"] = round(growth_mb)
    assert growth_mb < 64, f"server RSS grew by {growth_mb:.1f} MB during the fuzz run"
    assert _metric(target.server, "charrnn_sessions") <= FUZZ_LIMITS["--max-sessions"]
    assert _metric(target.server, "charrnn_live_streams") == 0
    assert "Traceback" not in target.server.output()
