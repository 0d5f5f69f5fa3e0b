"""What the gRPC edge and the HTTP edge share, so that neither imports the other: the runtime a request needs,
the bearer tokens, and the one path from a request to a stream.

An edge turns its wire format into a start `Context` and a `GenerationRequest`, calls `Front.generate`, and
renders the `Generation`'s chunks as its own messages. Validation, submission to the scheduler of the model
the context belongs to, cancelling the stream when the edge stops reading (its client went away), and timing
what the client sees (`Delivery`) happen here, the same for every edge.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from charrnn.artifact import Manifest
from service.config import Limits
from service.context import Context
from service.errors import Unauthenticated
from service.registry import LoadedModel, ModelRegistry
from service.requests import GenerationRequest, Validator
from service.scheduler import Scheduler
from service.sessions import SessionStore
from service.stream import Chunk, Delivery, DeliveryObserver, Finished, Stream
from service.wire import FedText

Message = TypeVar("Message")


@dataclass
class Runtime:
    """Everything a request needs, built once by the server (the models change on a hot reload)."""

    models: ModelRegistry
    sessions: SessionStore
    limits: Limits
    # Times what a model's clients see (metrics: each model's series); by served name.
    delivery: Callable[[str], DeliveryObserver] = field(default=lambda name: DeliveryObserver())
    session_streams: int = 0  # open Session RPCs (the event loop's count; a gauge reads it)
    # Warm and accepting: set by the server once the models are warmed up, cleared when draining starts. The
    # charrnn_serving gauge and the HTTP edge's /health read it (gRPC health is set at the same two points).
    serving: bool = False

    @property
    def manifest(self) -> Manifest:
        """The default model's."""
        return self.models.current.manifest

    @property
    def scheduler(self) -> Scheduler:
        """The default model's."""
        return self.models.current.scheduler


# --- authentication ------------------------------------------------------------------------------
def bearer_token(headers: Iterable[tuple[str, str | bytes]] | None) -> bytes | None:
    """The token of an `authorization: Bearer <token>` entry among gRPC metadata or HTTP headers, or None."""
    for key, value in headers or ():
        if key.lower() != "authorization" or not isinstance(value, str):
            continue
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip().encode("utf-8")
    return None


class BearerTokens:
    """The configured bearer tokens, and the refusal of a request that carries none of them.

    Tokens are compared with `hmac.compare_digest`, against every configured token (no early exit),
    so timing reveals neither a token's prefix nor which token matched.
    """

    def __init__(self, tokens: Iterable[str]):
        self._tokens = tuple(t.encode("utf-8") for t in tokens)
        if not self._tokens or not all(self._tokens):
            raise ValueError("bearer authentication needs at least one non-empty token")

    def accepts(self, token: bytes | None) -> bool:
        if token is None:
            return False
        matches = [hmac.compare_digest(token, known) for known in self._tokens]
        return any(matches)

    def check(self, headers: Iterable[tuple[str, str | bytes]] | None, how: str) -> None:
        """Unauthenticated unless `headers` carry an accepted token; `how` says how this edge sends one."""
        token = bearer_token(headers)
        if not self.accepts(token):
            why = "no bearer token" if token is None else "the bearer token is not accepted"
            raise Unauthenticated(f"{why}: send {how} with a configured token")


# --- generations ---------------------------------------------------------------------------------
class Generation:
    """One generation as an edge runs it: its model, its stream, and the timing of what its client sees.

    `messages` or `whole` reads the stream (once). Both time each text as the edge is about to hand it to
    its transport, and cancel the stream if the edge stops reading before the end.
    """

    def __init__(self, model: LoadedModel, stream: Stream, delivery: Delivery):
        self.model = model
        self.stream = stream
        self._delivery = delivery

    def cancel(self) -> None:
        """Drop the stream at its scheduler's next step (a no-op once it has finished)."""
        self.stream.cancel()

    async def messages(self, render: Callable[[Chunk], Sequence[Message]]) -> AsyncGenerator[Message, None]:
        """Each chunk as the edge's messages (`render` gives none, one or several), the last chunk's included."""
        try:
            async for chunk in self.stream.chunks():
                messages = render(chunk)
                if messages:
                    self._delivery.sending(chunk.text)
                for message in messages:
                    yield message
        finally:
            self.cancel()

    async def whole(self, render: Callable[[list[Chunk], Finished], Message]) -> Message:
        """Every chunk as one message (`render` gets them and the result), its text timed as it goes out."""
        try:
            chunks = [chunk async for chunk in self.stream.chunks()]
        finally:
            self.cancel()
        finished = chunks[-1].finished
        assert finished is not None, "a stream's last chunk holds its result"
        message = render(chunks, finished)
        self._delivery.sending("".join(chunk.text for chunk in chunks))
        return message


class Front:
    """An edge's way in: a generation or a text run, from a context and a request in the service's terms."""

    def __init__(self, runtime: Runtime, names: Mapping[str, str] | None = None):
        self.runtime = runtime
        self._names = names  # the edge's parameter names, where they differ

    def validator(self, model: LoadedModel) -> Validator:
        """Checks requests against `model`'s limits (the server's, with its serving.json's overrides)."""
        return Validator(model.limits, self._names)

    def model(self, ctx: Context, name: str | None = None) -> LoadedModel:
        """The model `ctx` continues on, or the one served as `name` (None: the default) for a text's start;
        ModelNotFound for a name not served, ForeignToken for a state made on another model or name."""
        return self.runtime.models.for_context(ctx, name)

    def generate(self, ctx: Context, request: GenerationRequest, arrived: float, name: str | None = None) -> Generation:
        """Validate `request` and queue it on the scheduler of its model (`model`). `arrived`
        (time.monotonic()) is where the client's clock starts."""
        model = self.model(ctx, name)
        stream = model.scheduler.submit(self.validator(model).job(model, ctx, request))
        return Generation(model, stream, Delivery(self.runtime.delivery(model.name), arrived))

    async def feed(
        self,
        ctx: Context,
        text: str,
        limit: Callable[[Limits], int],
        what: str,
        logprobs: bool = False,
        name: str | None = None,
    ) -> tuple[LoadedModel, FedText]:
        """Run `text` (at most `limit(its model's limits)` characters; `what` names it in a refusal) from `ctx`
        on its model (`model`)."""
        model = self.model(ctx, name)
        ids = self.validator(model).encode(model, text, limit(model.limits), what)
        return model, await model.scheduler.feed(ctx, np.asarray(ids, np.int64), logprobs=logprobs)
