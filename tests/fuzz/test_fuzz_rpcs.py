"""Property-based fuzzing of every RPC against a real `charrnn serve` process.

Each example sends a batch of requests (cheap unary calls and short streams under small limits) and
checks each status against an oracle written here from the API's rules (docs/api.md), not from the
server's code: every case gets exactly one expected code (OK, INVALID_ARGUMENT, NOT_FOUND or
FAILED_PRECONDITION), and a refusal's message is non-empty and short whatever the request held. Every
request field is drawn, `activations` and `checkpoint_every_chars` included; raw bytes are parsed here
first, so a message that parses gets the code its fields call for and one that does not gets
INVALID_ARGUMENT. A Session's code is the first failing action's. Resume tokens are fuzzed by random
bytes, truncation, bit flips, extra bytes, a wrong key, another model, and forgeries signed with the
right key (odd headers, NaN/infinite/huge values). Throughout, the bystanders (tests/fuzz/conftest.py:
seeded streams over gRPC and HTTP on the server's one engine) share the fuzz's batches and must end
every run with exactly their text alone. Afterwards the server is still SERVING, its RSS is flat and its
sessions stay within their bound. Counts (cases by RPC and expected code) land in the
terminal summary (conftest.COUNTS); CHARRNN_FUZZ_EXAMPLES=20000 scales the run up.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import math
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.bystanders import Bystanders
from charrnn.client import Client
from charrnn.v1 import charrnn_pb2 as pb
from tests.fuzz.conftest import (
    CHEAP_CHARS,
    COUNTS,
    FUZZ_LIMITS,
    FUZZ_MODEL,
    FUZZ_SPEC,
    check_bystanders,
    examples,
    metric,
    rss_kb,
    scored_tokens,
)
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
MAX_WATCHED = FUZZ_LIMITS["--max-watched-units"]
MIN_CHECKPOINT = FUZZ_LIMITS["--min-checkpoint-chars"]
MAX_DETAILS = 400  # a refusal's message, in characters, whatever the request held (docs/api.md: 32-char quotes)
# The token layout docs/api.md gives: magic, version, model sha256, has_seed, seed, position, n_logits,
# n_states, layers, hidden (64 bytes), then float32 logits and states, then HMAC-SHA256 (32 bytes).
TOKEN_HEADER = struct.Struct("<3sB32sBQQIBHI")
TOKEN_MAGIC, TOKEN_VERSION, MAC = b"CRT", 1, 32
HEADER_SIZE = TOKEN_HEADER.size
RAW = {"request_serializer": bytes, "response_deserializer": bytes}
METHODS = {
    "Generate": "unary_stream",
    "Score": "unary_unary",
    "GetModelInfo": "unary_unary",
    "Session": "stream_stream",
}
REQUESTS: dict[str, Any] = {
    "Generate": pb.GenerateRequest,
    "Score": pb.ScoreRequest,
    "GetModelInfo": pb.GetModelInfoRequest,
}


@dataclass
class Target:
    """A live fuzz server and what the oracle needs to know about it."""

    server: ServerProcess
    channel: grpc.Channel
    info: pb.GetModelInfoResponse
    tokens: list[bytes]  # valid resume tokens (with state and logits)
    foreign: list[bytes]  # valid tokens from another model
    bystanders: Bystanders  # seeded streams running beside every call
    rss_kb: int = 0
    rpcs: dict[str, Callable[..., Any]] = field(default_factory=dict)

    @property
    def vocab(self) -> frozenset[str]:
        return frozenset(self.info.vocabulary)

    @property
    def kinds(self) -> frozenset[int]:
        """The watchable state kinds: unspecified means h; an LSTM also has c."""
        lstm = self.info.cell == pb.CELL_TYPE_LSTM
        return frozenset({pb.STATE_KIND_UNSPECIFIED, pb.STATE_KIND_H} | ({pb.STATE_KIND_C} if lstm else set()))

    def raw(self, method: str) -> Callable[..., Any]:
        if method not in self.rpcs:
            kind = METHODS[method]
            self.rpcs[method] = getattr(self.channel, kind)(f"/charrnn.v1.CharRNN/{method}", **RAW)
        return self.rpcs[method]


@pytest.fixture(scope="module")
def target(fuzz_server: ServerProcess, other_server: ServerProcess, bystanders: Bystanders) -> Iterator[Target]:
    channel = grpc.insecure_channel(fuzz_server.target)
    info = pb.GetModelInfoResponse.FromString(
        channel.unary_unary("/charrnn.v1.CharRNN/GetModelInfo", **RAW)(b"", timeout=10)
    )
    texts = ["a", "def f(x):\n", "0123", "Zz ~"]
    t = Target(fuzz_server, channel, info, scored_tokens(fuzz_server.target, texts), [], bystanders)
    t.foreign = scored_tokens(other_server.target, texts)
    for _ in range(50):  # warm up allocator and caches before the RSS baseline
        _call(t, "Score", pb.ScoreRequest(text="warm up " * 4).SerializeToString())
    t.rss_kb = rss_kb(fuzz_server.proc.pid)
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
    t.bystanders.witness()
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


def _check(outcome: Outcome, expected: grpc.StatusCode, case: object) -> None:
    shown = repr(case)[:600]
    assert outcome.code == expected, (outcome.code, outcome.details[:300], expected, shown)
    if outcome.code is not C.OK:
        assert outcome.details and not outcome.details.startswith("Unexpected"), (outcome, shown)
        assert len(outcome.details) <= MAX_DETAILS and "\n" not in outcome.details, (outcome.details[:600], shown)


# --- the oracle: the API's rules, applied to a parsed request ------------------------------------
def _start(t: Target, msg: pb.GenerateRequest | pb.ScoreRequest) -> tuple[grpc.StatusCode | None, bool]:
    """(refusal code of the start, whether the start has state). No session id here names a live session."""
    which = msg.WhichOneof("start")
    if which is None:
        return None, False
    if which == "session_id":
        return C.NOT_FOUND, False
    if msg.resume_token in t.tokens:
        return None, True
    if msg.resume_token in t.foreign:
        return C.FAILED_PRECONDITION, False
    return C.INVALID_ARGUMENT, False  # any other bytes: not signed with the server's key


def _text_ok(t: Target, text: str, limit: int) -> bool:
    return len(text) <= limit and set(text) <= t.vocab


def _generation_ok(t: Target, msg: pb.GenerateRequest | pb.GenerateAction, has_state: bool) -> bool:
    """Every rule of a generation's parameters (Generate, or a Session's generate action)."""
    s = msg.sampling
    temperature_ok = not s.HasField("temperature") or (math.isfinite(s.temperature) and 0 <= s.temperature <= 100)
    top_p_ok = not s.HasField("top_p") or (math.isfinite(s.top_p) and 0 < s.top_p <= 1)
    stops_ok = len(msg.stop) <= MAX_STOPS and all(0 < len(x) <= MAX_STOP_CHARS for x in msg.stop)
    prompt_ok = _text_ok(t, msg.prompt, MAX_PROMPT) and (bool(msg.prompt) or has_state)
    ok = prompt_ok and temperature_ok and top_p_ok and stops_ok and msg.max_chars <= MAX_CHARS
    if isinstance(msg, pb.GenerateRequest):
        units = msg.activations.units
        info = t.info
        units_ok = all(u.kind in t.kinds and u.layer < info.layers and u.index < info.hidden_size for u in units)
        every = msg.checkpoint_every_chars
        ok = ok and len(units) <= MAX_WATCHED and units_ok and (every == 0 or every >= MIN_CHECKPOINT)
    return ok


def _model(t: Target, model: str) -> grpc.StatusCode | None:
    """An unknown model is NOT_FOUND (after the start's refusals); empty is the default, the only one here."""
    return None if model in ("", t.info.served_name) else C.NOT_FOUND


def expect_generate(t: Target, msg: pb.GenerateRequest) -> grpc.StatusCode:
    refused, has_state = _start(t, msg)
    refused = refused or _model(t, msg.model)
    return refused or (C.OK if _generation_ok(t, msg, has_state) else C.INVALID_ARGUMENT)


def expect_score(t: Target, msg: pb.ScoreRequest) -> grpc.StatusCode:
    refused, _ = _start(t, msg)
    refused = refused or _model(t, msg.model)
    return refused or (C.OK if msg.text and _text_ok(t, msg.text, MAX_SCORE) else C.INVALID_ARGUMENT)


def expect_session(t: Target, messages: list[bytes]) -> tuple[grpc.StatusCode, int]:
    """Actions run in order; the stream ends with the first failing one's code (OK if none fails).

    Returns the code and how many messages the server must read to decide it.
    """
    has_state = False
    bound: str | None = None  # the first message's model
    for read, raw in enumerate(messages, 1):
        try:
            request = pb.SessionRequest.FromString(raw)
        except DecodeError:
            return C.INVALID_ARGUMENT, read
        if bound is None:
            if _model(t, request.model) is not None:
                return C.NOT_FOUND, read
            bound = request.model
        elif request.model and request.model != bound:
            return C.INVALID_ARGUMENT, read  # a Session's model cannot change
        action = request.WhichOneof("action")
        if action is None:
            return C.INVALID_ARGUMENT, read
        if action == "feed" and request.feed.text:
            if not _text_ok(t, request.feed.text, MAX_PROMPT):
                return C.INVALID_ARGUMENT, read
            has_state = True
        elif action == "generate":
            if not _generation_ok(t, request.generate, has_state):
                return C.INVALID_ARGUMENT, read
            has_state = True
        elif action == "load":
            load = request.load
            source = load.WhichOneof("source")
            if source == "session_id":
                return C.NOT_FOUND, read
            if source == "resume_token":
                if load.resume_token in t.foreign:
                    return C.FAILED_PRECONDITION, read
                if load.resume_token not in t.tokens:
                    return C.INVALID_ARGUMENT, read
            has_state = source is not None
        elif action == "reset":
            has_state = False
    return C.OK, len(messages)


def _parses(raw: bytes) -> bool:
    try:
        pb.SessionRequest.FromString(raw)
    except DecodeError:
        return False
    return True


def _shown(method: str, payload: bytes) -> object:
    """The request as a failure report shows it: parsed when it parses."""
    try:
        return REQUESTS[method].FromString(payload)
    except DecodeError:
        return payload


def expect_raw(t: Target, method: str, payload: bytes) -> grpc.StatusCode:
    """Bytes that parse get the code their fields call for; bytes that don't, INVALID_ARGUMENT."""
    try:
        msg = REQUESTS[method].FromString(payload)
    except DecodeError:
        return C.INVALID_ARGUMENT
    if isinstance(msg, pb.GenerateRequest):
        return expect_generate(t, msg)
    if isinstance(msg, pb.ScoreRequest):
        return expect_score(t, msg)
    return C.OK


# --- strategies ----------------------------------------------------------------------------------
# Each field has a hostile strategy (anything its type holds, limits and their edges, odd code points,
# far-over-the-limit text) and a good one (within every rule). A request is drawn all good, all
# hostile, or good but for one field, so every rule is met both alone and in company, and valid
# requests (OK) are common. A case builds its request against the live target (tokens live there).
Case = Callable[[Target], tuple[str, bytes, grpc.StatusCode]]
float32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
long_text = st.sampled_from([5_000, 10_000, 30_000]).map(lambda n: "x" * n)  # far over every limit
in_vocab = "abc xyz(){}:\n0123"  # characters every test vocabulary has
texts = st.one_of(
    st.just(""),
    st.text(alphabet=in_vocab, max_size=MAX_PROMPT + 8),
    st.text(max_size=40),  # any code point, mostly outside the vocabulary
    st.integers(MAX_SCORE + 1, 5000).map(lambda n: "x" * n),
)
stops = st.lists(
    st.one_of(st.just(""), st.text(alphabet="ab\n", max_size=MAX_STOP_CHARS + 2), st.text(max_size=12), long_text),
    max_size=MAX_STOPS + 3,
)


def _sampling(temperature: Any, top_p: Any, top_k: Any, seed: Any) -> st.SearchStrategy[pb.SamplingParams]:
    return st.builds(
        lambda temperature, top_p, top_k, seed: pb.SamplingParams(
            **{k: v for k, v in {"temperature": temperature, "top_p": top_p, "seed": seed}.items() if v is not None},
            top_k=top_k,
        ),
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
    )


seeds = st.one_of(st.none(), st.integers(0, 2**64 - 1))
sampling = _sampling(
    temperature=st.one_of(st.none(), float32, st.floats(0, 2, width=32)),
    top_p=st.one_of(st.none(), float32, st.floats(0, 1, width=32)),
    top_k=st.one_of(st.just(0), st.integers(0, 2**32 - 1)),
    seed=seeds,
)
# The limit and its neighbours, and anything uint32 holds; valid requests stay cheap (CHEAP_CHARS).
max_chars = st.one_of(
    st.integers(0, CHEAP_CHARS), st.sampled_from([MAX_CHARS, MAX_CHARS + 1]), st.integers(MAX_CHARS, 2**32 - 1)
)


def _units(kinds: list[int], layers: st.SearchStrategy[int], indexes: st.SearchStrategy[int], most: int) -> Any:
    unit = st.builds(pb.HiddenUnit, kind=st.sampled_from(kinds), layer=layers, index=indexes)
    return st.lists(unit, max_size=most).map(lambda u: pb.ActivationRequest(units=u))


activations = _units(
    [pb.STATE_KIND_UNSPECIFIED, pb.STATE_KIND_H, pb.STATE_KIND_C, 3, 99],
    st.one_of(st.integers(0, FUZZ_SPEC.layers + 1), st.just(2**32 - 1)),
    st.one_of(st.integers(0, FUZZ_SPEC.hidden + 2), st.just(2**32 - 1)),
    MAX_WATCHED + 2,
)
# A model's name: the served one, the default (empty), another, or one far over any quoting bound.
models = st.one_of(st.sampled_from(["", FUZZ_MODEL, "other", FUZZ_MODEL.upper()]), st.text(max_size=20), long_text)
checkpoint_every = st.one_of(st.just(0), st.integers(1, 2 * MIN_CHECKPOINT), st.just(2**32 - 1))
# A start: none, random bytes, a session id (never a live one), or the target's valid / foreign token i.
starts = st.one_of(
    st.just(("none", None)),
    st.tuples(st.just("resume_token"), st.binary(max_size=120)),
    st.tuples(st.just("session_id"), st.one_of(st.text(max_size=40), long_text)),
    st.tuples(st.sampled_from(["valid", "foreign"]), st.integers(0, 3)),
)
good = {
    "prompt": st.text(alphabet=in_vocab, min_size=1, max_size=MAX_PROMPT),
    "max_chars": st.integers(0, CHEAP_CHARS),
    "sampling": _sampling(
        temperature=st.one_of(st.none(), st.floats(0, 2, width=32)),
        top_p=st.one_of(st.none(), st.floats(0, 1, exclude_min=True, width=32)),
        top_k=st.integers(0, 40),
        seed=seeds,
    ),
    "stop": st.lists(st.text(alphabet="ab\n", min_size=1, max_size=MAX_STOP_CHARS), max_size=MAX_STOPS),
    "create_session": st.booleans(),
    "activations": _units(
        [pb.STATE_KIND_UNSPECIFIED, pb.STATE_KIND_H, pb.STATE_KIND_C],
        st.integers(0, FUZZ_SPEC.layers - 1),
        st.integers(0, FUZZ_SPEC.hidden - 1),
        MAX_WATCHED,
    ),
    "checkpoint_every_chars": st.one_of(st.just(0), st.integers(MIN_CHECKPOINT, 4 * MIN_CHECKPOINT)),
    "start": st.one_of(st.just(("none", None)), st.tuples(st.just("valid"), st.integers(0, 3))),
    "text": st.text(alphabet=in_vocab, min_size=1, max_size=MAX_SCORE),
    "model": st.sampled_from(["", FUZZ_MODEL]),
}
hostile = {
    "prompt": texts,
    "max_chars": max_chars,
    "sampling": sampling,
    "stop": stops,
    "create_session": st.booleans(),
    "activations": activations,
    "checkpoint_every_chars": checkpoint_every,
    "start": starts,
    "text": texts,
    "model": models,
}


@st.composite
def request_fields(draw: st.DrawFn, names: tuple[str, ...]) -> dict[str, Any]:
    """The named fields, drawn all good, all hostile, or good but for one."""
    mode = draw(st.sampled_from(["good", "one hostile", "hostile"]))
    bad = draw(st.sampled_from(names)) if mode == "one hostile" else None
    return {n: draw(hostile[n] if mode == "hostile" or n == bad else good[n]) for n in names}


def _with_start(t: Target, msg: Any, start: tuple[str, Any]) -> Any:
    kind, value = start
    if kind in ("valid", "foreign"):
        msg.resume_token = (t.tokens if kind == "valid" else t.foreign)[value]
    elif kind != "none":
        setattr(msg, kind, value)
    return msg


GENERATE_FIELDS: tuple[str, ...] = ("prompt", "max_chars", "sampling", "stop", "create_session", "activations")
GENERATE_FIELDS += ("checkpoint_every_chars", "start", "model")


@st.composite
def generate_cases(draw: st.DrawFn) -> Case:
    fields = draw(request_fields(GENERATE_FIELDS))
    start = fields.pop("start")
    base = pb.GenerateRequest(**fields)

    def build(t: Target) -> tuple[str, bytes, grpc.StatusCode]:
        msg = pb.GenerateRequest()
        msg.CopyFrom(base)
        msg = _with_start(t, msg, start)
        return "Generate", msg.SerializeToString(), expect_generate(t, msg)

    return build


@st.composite
def score_cases(draw: st.DrawFn) -> Case:
    fields = draw(request_fields(("text", "start", "model")))

    def build(t: Target) -> tuple[str, bytes, grpc.StatusCode]:
        msg = _with_start(t, pb.ScoreRequest(text=fields["text"], model=fields["model"]), fields["start"])
        return "Score", msg.SerializeToString(), expect_score(t, msg)

    return build


def _bad_utf8_field(field_number: int, junk: bytes) -> bytes:
    """A length-delimited field whose bytes are not UTF-8 (0xff never is)."""
    value = b"\xff" + junk
    return bytes([field_number << 3 | 2, len(value)]) + value


def _raw_case(method: str, payload: bytes) -> Case:
    return lambda t: (method, payload, expect_raw(t, method, payload))


unparsable = st.one_of(
    st.tuples(st.sampled_from(["Generate", "Score"]), st.integers(1, 1), st.binary(max_size=20)),  # text/prompt
    st.tuples(st.just("Generate"), st.sampled_from([4, 6]), st.binary(max_size=20)),  # stop, session_id
    st.tuples(st.just("Score"), st.just(3), st.binary(max_size=20)),  # session_id
).map(lambda c: _raw_case(c[0], _bad_utf8_field(c[1], c[2])))
random_bytes = st.tuples(st.sampled_from(sorted(REQUESTS)), st.binary(max_size=64)).map(lambda c: _raw_case(*c))
info_cases = st.just(_raw_case("GetModelInfo", b""))
request_cases = st.one_of(generate_cases(), score_cases(), info_cases, unparsable, random_bytes)


@settings(FUZZ, max_examples=examples(2000, PER_EXAMPLE))
@given(batch=st.lists(request_cases, min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
def test_requests_get_the_code_the_rules_give(target: Target, batch: list[Case]) -> None:
    for case in batch:
        method, payload, expected = case(target)
        _check(_call(target, method, payload), expected, (method, _shown(method, payload)))
        COUNTS["request cases"] += 1
        COUNTS[f"request cases: {method} {expected.name}"] += 1


def test_the_strategies_set_every_field(target: Target) -> None:
    """Every field of every request message is drawn (so none goes unfuzzed)."""
    names: tuple[str, ...] = ("GenerateRequest", "SamplingParams", "ActivationRequest", "HiddenUnit")
    names += ("ScoreRequest", "SessionRequest", "FeedAction", "GenerateAction", "LoadAction")
    seen: dict[str, set[str]] = {name: set() for name in names}

    def note(msg: Any) -> None:
        for f, value in msg.ListFields():
            seen.setdefault(msg.DESCRIPTOR.name, set()).add(f.name)
            for item in value if f.is_repeated else [value]:
                if hasattr(item, "ListFields"):
                    note(item)

    @settings(FUZZ, max_examples=300)
    @given(generate=generate_cases(), score=score_cases(), session=session_messages)
    def collect(generate: Case, score: Case, session: list[bytes]) -> None:
        for case in (generate, score):
            method, payload, _ = case(target)
            note(REQUESTS[method].FromString(payload))
        for raw in session:
            with contextlib.suppress(DecodeError):
                note(pb.SessionRequest.FromString(raw))

    collect()
    for name in names:
        every = {f.name for f in getattr(pb, name).DESCRIPTOR.fields}
        assert seen[name] == every, (name, every - seen[name])


# --- Session -------------------------------------------------------------------------------------
actions = st.one_of(
    st.one_of(good["prompt"], texts).map(lambda s: pb.SessionRequest(feed=pb.FeedAction(text=s))),
    request_fields(("prompt", "max_chars", "sampling", "stop")).map(
        lambda f: pb.SessionRequest(generate=pb.GenerateAction(**f))
    ),
    st.just(pb.SessionRequest(token=pb.TokenAction())),
    st.just(pb.SessionRequest(reset=pb.ResetAction())),
    st.just(pb.SessionRequest(cancel=pb.CancelAction())),
    st.just(pb.SessionRequest()),  # no action
    st.just(pb.SessionRequest(load=pb.LoadAction())),  # no source: the start of a text
    st.binary(max_size=40).map(lambda b: pb.SessionRequest(load=pb.LoadAction(resume_token=b))),
    st.one_of(st.text(max_size=30), long_text).map(lambda s: pb.SessionRequest(load=pb.LoadAction(session_id=s))),
)


def _named(request: pb.SessionRequest, model: str) -> pb.SessionRequest:
    request.model = model
    return request


session_messages = st.lists(
    st.one_of(
        st.tuples(actions, st.one_of(good["model"], models)).map(lambda am: _named(*am).SerializeToString()),
        st.binary(max_size=16),
    ),
    min_size=1,
    max_size=6,
)
# Loads of the target's own tokens (valid or foreign), which random bytes never are.
token_loads = st.tuples(st.sampled_from(["valid", "foreign"]), st.integers(0, 3), st.integers(0, 5))


@settings(FUZZ, max_examples=examples(400, 1))
@given(messages=session_messages, load=st.one_of(st.none(), token_loads))
def test_session_actions_get_the_first_failing_actions_code(
    target: Target, messages: list[bytes], load: tuple[str, int, int] | None
) -> None:
    if load is not None:
        kind, index, where = load
        token = (target.tokens if kind == "valid" else target.foreign)[index]
        request = pb.SessionRequest(load=pb.LoadAction(resume_token=token)).SerializeToString()
        messages = [*messages[:where], request, *messages[where:]]
    expected, _ = expect_session(target, messages)
    outcome = _call(target, "Session", messages)
    _check(outcome, expected, messages)
    COUNTS["request cases"] += 1
    COUNTS[f"request cases: Session {expected.name}"] += 1
    COUNTS["session actions"] += len(messages)


# --- resume tokens -------------------------------------------------------------------------------
def _sign(payload: bytes, key: bytes) -> bytes:
    return payload + hmac.new(key, payload, hashlib.sha256).digest()


@st.composite
def token_cases(draw: st.DrawFn, t_tokens: int = 4) -> tuple[str, Callable[[Target], tuple[bytes, grpc.StatusCode]]]:
    """(kind, build): build(target) gives the token and the code it must get."""
    kinds = ["random", "truncated", "bitflip", "extended", "wrong_key", "foreign", "forged", "resigned", "valid"]
    kind = draw(st.sampled_from(kinds))  # resigned: the real header, odd values (NaN, infinity, 3e38, 0)
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

    def build(t: Target) -> tuple[bytes, grpc.StatusCode]:
        good = t.tokens[index]
        if kind == "random":
            return blob, C.INVALID_ARGUMENT
        if kind == "truncated":
            return good[: cut % len(good)], C.INVALID_ARGUMENT
        if kind == "bitflip":
            flipped = bytearray(good)
            flipped[(bit // 8) % len(good)] ^= 1 << (bit % 8)
            return bytes(flipped), C.INVALID_ARGUMENT
        if kind == "extended":
            return good + blob, C.INVALID_ARGUMENT
        if kind == "wrong_key":  # not key + zero bytes: HMAC pads keys with zeros, so that is the same key
            return _sign(good[:-MAC], b"other-" + key + blob), C.INVALID_ARGUMENT
        if kind == "foreign":
            return t.foreign[index], C.FAILED_PRECONDITION
        if kind == "valid":
            return good, C.OK
        if kind == "resigned":
            real = (TOKEN_MAGIC, TOKEN_VERSION, True, *header[3:6], None, None, None, None)
            return _forge(good, real, values, key)
        return _forge(good, header, values, key)

    return kind, build


def _forge(good: bytes, header: tuple[Any, ...], values: str, key: bytes) -> tuple[bytes, grpc.StatusCode]:
    """A token signed with the right key (so only a key holder could make it): odd headers and values.

    Its code follows the checks in the order a signed token meets them: format and version
    (INVALID_ARGUMENT), the model it names (FAILED_PRECONDITION: another model's shapes are not this
    server's to judge), shape and length, finite values (INVALID_ARGUMENT); past them all it continues (OK).
    """
    real = TOKEN_HEADER.unpack_from(good)
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
    want = fields[6] + fields[7] * fields[8] * fields[9]
    fill = {"normal": 0.5, "nan": math.nan, "inf": math.inf, "huge": 3e38, "zero": 0.0}[values]
    body = np.full(min(want, 20000), fill, "<f4")
    if body.size and values == "normal":
        available = (len(good) - HEADER_SIZE - MAC) // 4
        body = np.asarray(np.frombuffer(good, "<f4", count=min(body.size, available), offset=HEADER_SIZE), "<f4")
    token = _sign(TOKEN_HEADER.pack(*fields) + body.tobytes(), key)
    if magic != TOKEN_MAGIC or version != TOKEN_VERSION:
        return token, C.INVALID_ARGUMENT
    if not own:
        return token, C.FAILED_PRECONDITION
    shape_ok = fields[7] in (0, real[7]) and fields[6] in (0, real[6]) and (fields[8], fields[9]) == real[8:10]
    if not shape_ok or body.size != want or not np.isfinite(body).all():
        return token, C.INVALID_ARGUMENT
    return token, C.OK


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
def test_resume_tokens_get_the_code_the_rules_give(target: Target, batch: list[tuple[Any, str]]) -> None:
    for (kind, build), carrier in batch:
        token, expected = build(target)
        method, payload = CARRIERS[carrier](token)
        _check(_call(target, method, payload), expected, (kind, carrier, token[:80]))
        COUNTS["token cases"] += 1
        COUNTS[f"token cases: {kind} {expected.name}"] += 1


# --- afterwards ----------------------------------------------------------------------------------
def test_the_bystanders_kept_their_text(target: Target) -> None:
    """Stops the bystanders (so it runs after the fuzz): each run was exactly its text alone, beside the fuzz."""
    check_bystanders(target.bystanders, "gRPC")


def test_server_still_serving_with_flat_memory(target: Target) -> None:
    """Runs last in this module: health, a normal request, RSS within a generous bound, sessions bounded."""
    with Client(target.server.target, timeout=10) as client:
        assert client.health() == "SERVING"
        assert client.health("charrnn.v1.CharRNN") == "SERVING"
        assert client.generate("a", max_chars=5, seed=1).text()
    growth_mb = (rss_kb(target.server.proc.pid) - target.rss_kb) / 1024
    COUNTS["server RSS growth (MB)"] = round(growth_mb)
    assert growth_mb < 64, f"server RSS grew by {growth_mb:.1f} MB during the fuzz run"
    assert metric(target.server, "charrnn_sessions") <= FUZZ_LIMITS["--max-sessions"]
    assert metric(target.server, "charrnn_live_streams") == 0
    assert "Traceback" not in target.server.output()
