"""A small typed, synchronous client that hides the protobuf.

    with Client("localhost:50051") as client:
        gen = client.generate("def ", max_chars=200, temperature=0.8, seed=1)
        for chunk in gen:
            print(chunk, end="")
        token = gen.result.resume_token

With `watch=[("h", 1, 17)]` the server also streams each generated character's value of that
hidden unit: `gen.chunks()` yields (text, values per character) and `gen.activations` collects them.

With several replicas, `FailoverClient([a, b]).generate(...)` asks for mid-stream checkpoints and,
when a stream breaks (UNAVAILABLE: a crash, a reset connection, a draining server), continues from
the last checkpoint on the next replica; the caller sees one uninterrupted text.

gRPC failures surface as `CharRNNError` with the status code, the server's message and, when the
server sent one, its retry hint (`grpc-retry-pushback-ms`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NamedTuple

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from charrnn.v1 import charrnn_pb2 as pb
from charrnn.v1 import charrnn_pb2_grpc as pb_grpc

_STATE_KINDS = {"h": pb.STATE_KIND_H, "c": pb.STATE_KIND_C}
log = logging.getLogger(__name__)

RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"  # service/errors.py sends it (the client needs no server code)
# Codes a FailoverClient continues elsewhere: the replica went away or is draining.
FAILOVER_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})
_FINISH_NAMES = {
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_CANCELLED: "cancelled",
}


class CharRNNError(Exception):
    """A failed call: `code` is the gRPC status code, `details` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str, retry_pushback_ms: int | None = None):
        self.code = code
        self.details = details
        self.retry_pushback_ms = retry_pushback_ms  # the server's hint: retry (elsewhere) after this long
        super().__init__(f"{code.name}: {details}")

    @classmethod
    def wrap(cls, exc: grpc.RpcError) -> CharRNNError:
        call: Any = exc
        pushback = None
        with contextlib.suppress(Exception):  # no trailers on a connection that never opened
            for key, value in call.trailing_metadata() or ():
                if key == RETRY_PUSHBACK_KEY:
                    pushback = int(value)
        return cls(call.code(), call.details() or "", pushback)


@dataclass(frozen=True)
class GenerationResult:
    finish_reason: str  # "length", "stop" or "cancelled"
    prompt_chars: int
    generated_chars: int
    resume_token: bytes
    session_id: str
    seed: int
    stop: str

    @classmethod
    def from_proto(cls, done: pb.GenerateDone) -> GenerationResult:
        return cls(
            _FINISH_NAMES.get(done.finish_reason, "unspecified"),
            done.usage.prompt_chars,
            done.usage.generated_chars,
            done.resume_token,
            done.session_id,
            done.seed,
            done.stop,
        )


@dataclass(frozen=True)
class ScoreResult:
    logprobs: list[float]
    first_scored: int
    total_nats: float
    bits_per_char: float
    resume_token: bytes


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    cell: str
    layers: int
    hidden_size: int
    embedding_size: int
    vocab_size: int
    parameters: int
    vocabulary: list[str]
    unknown_policy: str
    unknown_char: str
    val_bits_per_char: float | None
    sha256: str
    limits: dict[str, float]


def _sampling(temperature: float | None, top_k: int, top_p: float | None, seed: int | None) -> pb.SamplingParams:
    params = pb.SamplingParams(top_k=top_k)
    if temperature is not None:
        params.temperature = temperature
    if top_p is not None:
        params.top_p = top_p
    if seed is not None:
        params.seed = seed
    return params


Unit = tuple[str, int, int]  # a hidden unit: ("h" or "c", layer, index)
_UNIT = re.compile(r"([hc]):?(\d+):(\d+)")


def parse_units(spec: str) -> list[Unit]:
    """ "h:1:17,c0:5" → [("h", 1, 17), ("c", 0, 5)] (also `charrnn analyze units`' c0:5 form); ValueError
    naming the bad item."""
    units = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        match = _UNIT.fullmatch(item)
        if match is None:
            raise ValueError(f"bad hidden unit {item!r}: expected KIND:LAYER:INDEX with KIND h or c, e.g. h:1:17")
        units.append((match[1], int(match[2]), int(match[3])))
    return units


class Checkpoint(NamedTuple):
    """A resume token covering exactly the first `chars` characters this call delivered."""

    chars: int
    resume_token: bytes


class Generation(Iterator[str]):
    """Iterate for text chunks (or `chunks()` for text with watched values); `result` is set once the
    stream ends. `cancel()` stops it. With checkpoints requested, `checkpoint` is the latest one
    received; it covers all the text returned so far."""

    def __init__(self, responses: Iterator[Any], call: grpc.Call | None = None, units: int = 0):
        self._responses = responses
        self._call = call
        self.units = units
        self.result: GenerationResult | None = None
        self.checkpoint: Checkpoint | None = None
        # One tuple per character received so far: the watched units' values after the model read it.
        self.activations: list[tuple[float, ...]] = []

    def __next__(self) -> str:
        return self._next()[0]

    def chunks(self) -> Iterator[tuple[str, list[tuple[float, ...]]]]:
        """The rest of the stream as (text, one tuple of watched values per character of text)."""
        while True:
            try:
                yield self._next()
            except StopIteration:
                return

    def _next(self) -> tuple[str, list[tuple[float, ...]]]:
        while True:
            try:
                response = next(self._responses)
            except grpc.RpcError as exc:
                raise CharRNNError.wrap(exc) from None
            if response.HasField("checkpoint"):
                cp = response.checkpoint
                self.checkpoint = Checkpoint(cp.generated_chars, cp.resume_token)
            if response.HasField("done"):
                self.result = GenerationResult.from_proto(response.done)
                if not response.text:
                    raise StopIteration
            if response.text:
                return str(response.text), self._rows(response.activations)

    def _rows(self, flat: Sequence[float]) -> list[tuple[float, ...]]:
        n = self.units
        rows = [tuple(flat[i : i + n]) for i in range(0, len(flat), n)] if n else []
        self.activations.extend(rows)
        return rows

    def text(self) -> str:
        """Consume the rest of the stream and return it joined."""
        return "".join(self)

    def cancel(self) -> None:
        if self._call is not None:
            self._call.cancel()


class _Details(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <token>` to every call's metadata."""

    def __init__(self, token: str):
        self._entry = ("authorization", f"Bearer {token}")

    def _with_token(self, d: Any) -> _Details:
        metadata = [*(d.metadata or ()), self._entry]
        return _Details(d.method, d.timeout, metadata, d.credentials, d.wait_for_ready, d.compression)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._with_token(details), request_iterator)

    def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._with_token(details), request_iterator)


class Client:
    """Synchronous client for charrnn.v1.CharRNN (thread-safe: one channel, many calls)."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = None,
        tls: bool = False,
        tls_ca: bytes | None = None,
        tls_cert: bytes | None = None,
        tls_key: bytes | None = None,
        auth_token: str | None = None,
    ):
        """`tls` (implied by any PEM given): TLS with `tls_ca` (else the system's CAs); `tls_cert` and
        `tls_key`: a client certificate for mutual TLS. `auth_token`: sent as `authorization: Bearer`."""
        self.target = target
        self.timeout = timeout
        if tls or tls_ca or tls_cert or tls_key:
            credentials = grpc.ssl_channel_credentials(tls_ca, tls_key, tls_cert)
            self._channel = grpc.secure_channel(target, credentials)
        else:
            self._channel = grpc.insecure_channel(target)
        if auth_token:
            self._channel = grpc.intercept_channel(self._channel, _BearerToken(auth_token))
        self._stub = pb_grpc.CharRNNStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def generate(
        self,
        prompt: str = "",
        *,
        max_chars: int = 0,
        temperature: float | None = None,
        top_k: int = 0,
        top_p: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] = (),
        resume_token: bytes | None = None,
        session_id: str | None = None,
        create_session: bool = False,
        watch: Sequence[Unit] = (),
        timeout: float | None = None,
        checkpoint_every_chars: int = 0,
    ) -> Generation:
        """Stream a generation; `watch` names hidden units whose per-character values to stream too;
        `checkpoint_every_chars` asks for mid-stream resume tokens (`Generation.checkpoint`)."""
        request = pb.GenerateRequest(
            prompt=prompt,
            max_chars=max_chars,
            sampling=_sampling(temperature, top_k, top_p, seed),
            stop=list(stop),
            create_session=create_session,
            checkpoint_every_chars=checkpoint_every_chars,
        )
        for kind, layer, index in watch:
            request.activations.units.add(kind=_STATE_KINDS[kind], layer=layer, index=index)
        if resume_token is not None:
            request.resume_token = resume_token
        elif session_id is not None:
            request.session_id = session_id
        call = self._stub.Generate(request, timeout=timeout if timeout is not None else self.timeout)
        return Generation(call, call, len(watch))

    def score(self, text: str, *, resume_token: bytes | None = None, session_id: str | None = None) -> ScoreResult:
        request = pb.ScoreRequest(text=text)
        if resume_token is not None:
            request.resume_token = resume_token
        elif session_id is not None:
            request.session_id = session_id
        try:
            r = self._stub.Score(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise CharRNNError.wrap(exc) from None
        return ScoreResult(list(r.logprobs), r.first_scored, r.total_nats, r.bits_per_char, r.resume_token)

    def info(self) -> ModelInfo:
        try:
            r = self._stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=self.timeout)
        except grpc.RpcError as exc:
            raise CharRNNError.wrap(exc) from None
        lim = r.limits
        return ModelInfo(
            name=r.name,
            version=r.version,
            cell=pb.CellType.Name(r.cell).removeprefix("CELL_TYPE_").lower(),
            layers=r.layers,
            hidden_size=r.hidden_size,
            embedding_size=r.embedding_size,
            vocab_size=r.vocab_size,
            parameters=r.parameters,
            vocabulary=list(r.vocabulary),
            unknown_policy=pb.UnknownPolicy.Name(r.unknown_policy).removeprefix("UNKNOWN_POLICY_").lower(),
            unknown_char=r.unknown_char,
            val_bits_per_char=r.val_bits_per_char if r.HasField("val_bits_per_char") else None,
            sha256=r.sha256,
            limits={f.name: v for f, v in lim.ListFields()},
        )

    def health(self, service: str = "") -> str:
        """The health status name ("SERVING", "NOT_SERVING", ...) of `service` ("" = the server)."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            r = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout or 5.0)
        except grpc.RpcError as exc:
            raise CharRNNError.wrap(exc) from None
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(r.status))

    def session(self) -> SessionClient:
        """Open a bidirectional Session: the server keeps the state while it is open."""
        return SessionClient(self._stub)


@dataclass(frozen=True)
class _Request:
    """What a resumable generation asks for; a continuation changes only the start and the length."""

    prompt: str
    max_chars: int
    temperature: float | None
    top_k: int
    top_p: float | None
    seed: int | None
    stop: tuple[str, ...]
    resume_token: bytes | None
    checkpoint_every_chars: int
    timeout: float | None

    @property
    def reproducible(self) -> bool:
        """Whether a restart from the beginning gives the same text (seeded or greedy)."""
        return self.seed is not None or self.temperature == 0


class ResumableGeneration(Iterator[str]):
    """One generation across replicas: on a failover code it continues from the last checkpoint on the
    next target, drops the characters the caller already has (checking they match) and goes on.

    Exact because sampling is counter-based (seed, position) and the checkpoint carries both.
    """

    def __init__(self, owner: FailoverClient, request: _Request):
        self._owner = owner
        self._request = request
        self._checkpoint: Checkpoint | None = None  # absolute: characters of the whole generation
        self._base = 0  # characters before the current attempt's start
        self._delivered: list[str] = []  # what the caller has (at most max_chars characters)
        self._expect = ""  # text the current attempt must repeat before new text
        self.delivered = 0
        self.failovers = 0
        self.result: GenerationResult | None = None
        self._gen = self._start()

    def _start(self) -> Generation:
        r, cp = self._request, self._checkpoint
        client = self._owner.current()
        if cp is None:
            return client.generate(
                r.prompt, max_chars=r.max_chars, temperature=r.temperature, top_k=r.top_k, top_p=r.top_p,
                seed=r.seed, stop=r.stop, resume_token=r.resume_token, timeout=r.timeout,
                checkpoint_every_chars=r.checkpoint_every_chars,
            )  # fmt: skip
        return client.generate(
            "", max_chars=r.max_chars - cp.chars, temperature=r.temperature, top_k=r.top_k, top_p=r.top_p,
            stop=r.stop, resume_token=cp.resume_token, timeout=r.timeout,
            checkpoint_every_chars=r.checkpoint_every_chars,
        )  # fmt: skip

    def _fail_over(self, exc: CharRNNError) -> None:
        if exc.code not in FAILOVER_CODES or self.failovers >= self._owner.max_failovers:
            raise exc
        if self._checkpoint is None and self.delivered and not self._request.reproducible:
            raise exc  # an unseeded stream cut before its first checkpoint cannot be continued exactly
        self.failovers += 1
        target = self._owner.advance()
        covered = self._checkpoint.chars if self._checkpoint is not None else 0
        log.warning("stream broke after %d chars (%s); resuming at %d on %s", self.delivered, exc, covered, target)
        self._base = covered
        self._expect = "".join(self._delivered)[covered:]
        self._gen = self._start()

    def __next__(self) -> str:
        while True:
            try:
                text = next(self._gen)
            except CharRNNError as exc:
                self._fail_over(exc)
                continue
            except StopIteration:
                self._finish()
                raise
            if self._expect:
                text = self._repeat(text)
            if self._gen.checkpoint is not None:
                chars = self._base + self._gen.checkpoint.chars
                if self._checkpoint is None or chars > self._checkpoint.chars:
                    self._checkpoint = Checkpoint(chars, self._gen.checkpoint.resume_token)
            if text:
                self.delivered += len(text)
                self._delivered.append(text)
                return text

    def _repeat(self, text: str) -> str:
        """Drop the start of `text` that repeats what the caller already has; it must match exactly."""
        n = min(len(text), len(self._expect))
        if text[:n] != self._expect[:n]:
            raise CharRNNError(grpc.StatusCode.DATA_LOSS, "the resumed stream diverged from the text delivered")
        self._expect = self._expect[n:]
        return text[n:]

    def _finish(self) -> None:
        result = self._gen.result
        if result is not None:
            self.result = dataclasses.replace(result, generated_chars=self._base + result.generated_chars)

    def text(self) -> str:
        return "".join(self)

    def cancel(self) -> None:
        self._gen.cancel()


class FailoverClient:
    """Clients for several replicas of the same model and HMAC key; generations survive losing one.

    `generate` requests checkpoints every `checkpoint_every_chars` and, when the stream breaks with
    UNAVAILABLE, resumes on the next target (round robin, at most `max_failovers` times per call).
    A generation that starts from a server-side session cannot move and is not offered here.
    """

    def __init__(self, targets: Sequence[str], *, max_failovers: int = 3, **options: Any):
        if not targets:
            raise ValueError("FailoverClient needs at least one target")
        self.targets = list(targets)
        self.max_failovers = max_failovers
        self._options = options
        self._clients: dict[str, Client] = {}
        self._index = 0

    def current(self) -> Client:
        target = self.targets[self._index]
        if target not in self._clients:
            self._clients[target] = Client(target, **self._options)
        return self._clients[target]

    def advance(self) -> str:
        """Move to the next target; returns it."""
        self._index = (self._index + 1) % len(self.targets)
        return self.targets[self._index]

    def generate(
        self,
        prompt: str = "",
        *,
        max_chars: int,
        temperature: float | None = None,
        top_k: int = 0,
        top_p: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] = (),
        resume_token: bytes | None = None,
        checkpoint_every_chars: int = 256,
        timeout: float | None = None,
    ) -> ResumableGeneration:
        """Like `Client.generate`; `max_chars` is required (the remainder after a checkpoint is sent)."""
        if max_chars <= 0:
            raise ValueError("max_chars must be set: a resumed stream asks for what is left of it")
        request = _Request(
            prompt, max_chars, temperature, top_k, top_p, seed, tuple(stop), resume_token, checkpoint_every_chars,
            timeout,
        )  # fmt: skip
        return ResumableGeneration(self, request)

    def close(self) -> None:
        for client in self._clients.values():
            client.close()

    def __enter__(self) -> FailoverClient:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class SessionClient:
    """A Session stream driven synchronously: each method sends one action and reads its answer."""

    def __init__(self, stub: pb_grpc.CharRNNStub):
        self._requests: queue.Queue[pb.SessionRequest | None] = queue.Queue()
        self._responses: Any = stub.Session(iter(self._requests.get, None))  # iterator and grpc.Call
        self._closed = False
        # True while a receive is outstanding: set before next() and cleared only when it returns. If the
        # caller is interrupted inside next() (GreenletExit, KeyboardInterrupt, a timeout), it stays set.
        self._receiving = False

    def _send(self, request: pb.SessionRequest) -> None:
        self._requests.put(request)

    def _receive(self) -> pb.SessionResponse:
        self._receiving = True
        try:
            response: pb.SessionResponse = next(self._responses)
        except grpc.RpcError as exc:
            self._receiving = False
            raise CharRNNError.wrap(exc) from None
        self._receiving = False
        return response

    def feed(self, text: str) -> int:
        self._send(pb.SessionRequest(feed=pb.FeedAction(text=text)))
        return int(self._receive().fed.chars)

    def generate(
        self,
        prompt: str = "",
        *,
        max_chars: int = 0,
        temperature: float | None = None,
        top_k: int = 0,
        top_p: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] = (),
    ) -> Generation:
        action = pb.GenerateAction(
            prompt=prompt, max_chars=max_chars, sampling=_sampling(temperature, top_k, top_p, seed), stop=list(stop)
        )
        self._send(pb.SessionRequest(generate=action))
        return Generation(self._generation_events())

    def _generation_events(self) -> Iterator[Any]:
        """Session events of one generation, shaped like GenerateResponse (text, then done)."""
        while True:
            event = self._receive()
            kind = event.WhichOneof("event")
            if kind == "text":
                yield pb.GenerateResponse(text=event.text)
            elif kind == "done":
                yield pb.GenerateResponse(done=event.done)
                return

    def cancel(self) -> None:
        """Stop the running generation; it ends with finish reason "cancelled"."""
        self._send(pb.SessionRequest(cancel=pb.CancelAction()))

    def token(self) -> bytes:
        self._send(pb.SessionRequest(token=pb.TokenAction()))
        return bytes(self._receive().token.resume_token)

    def load(self, *, resume_token: bytes | None = None, session_id: str | None = None) -> None:
        action = (
            pb.LoadAction(resume_token=resume_token)
            if resume_token is not None
            else pb.LoadAction(session_id=session_id or "")
        )
        self._send(pb.SessionRequest(load=action))
        self._receive()

    def reset(self) -> None:
        self._send(pb.SessionRequest(reset=pb.ResetAction()))
        self._receive()

    def close(self) -> None:
        """Half-close (the request iterator ends) and drain until the server ends the stream. Idempotent.

        After an interrupted receive the call is cancelled instead: grpc's iterator would post a second
        ReceiveMessage on the same call (GRPC_CALL_ERROR_TOO_MANY_OPERATIONS, "call error 8")."""
        if self._closed:
            return
        self._closed = True
        self._requests.put(None)  # ends the request iterator, so its consumer thread (greenlet) exits
        if self._receiving:
            self.abort()
            return
        with contextlib.suppress(grpc.RpcError):
            for _ in self._responses:
                pass

    def abort(self) -> None:
        """Cancel the stream without reading the rest (the server sees CANCELLED); from the caller's thread."""
        self._closed = True
        self._requests.put(None)
        self._responses.cancel()

    def __enter__(self) -> SessionClient:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        """A block left by an exception abandons the session (no draining of a generation nobody reads)."""
        if ev is not None and not self._closed:
            self.abort()
        else:
            self.close()
