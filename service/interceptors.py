"""Server interceptors in front of the servicers: bearer-token authentication and undecodable requests.

The server installs them as `[metrics, auth, decode guard]`: the metrics interceptor is the
outermost, so refused calls (UNAUTHENTICATED, INVALID_ARGUMENT for unparsable messages) are
counted like any other status. Both refusals go through `service.status` (the one table).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from service.errors import InvalidRequest, Unauthenticated
from service.rpc import HEALTH_SERVICE, Continuation, behavior_of, rebuild, responses_of, service_and_method
from service.status import abort

log = logging.getLogger(__name__)


# --- authentication --------------------------------------------------------------------------
def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> bytes | None:
    """The token of an `authorization: Bearer <token>` metadata entry, or None."""
    for key, value in metadata or ():
        if key.lower() != "authorization" or not isinstance(value, str):
            continue
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip().encode("utf-8")
    return None


class BearerAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuse calls without an accepted bearer token (UNAUTHENTICATED); `exempt` services stay open.

    Tokens are compared with `hmac.compare_digest`, against every configured token (no early exit),
    so timing reveals neither a token's prefix nor which token matched.
    """

    def __init__(self, tokens: Iterable[str], exempt: Iterable[str] = (HEALTH_SERVICE,)):
        self._tokens = tuple(t.encode("utf-8") for t in tokens)
        if not self._tokens or not all(self._tokens):
            raise ValueError("bearer authentication needs at least one non-empty token")
        self._exempt = frozenset(exempt)

    def accepts(self, token: bytes | None) -> bool:
        if token is None:
            return False
        matches = [hmac.compare_digest(token, known) for known in self._tokens]
        return any(matches)

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        service, _ = service_and_method(details)
        if handler is None or service in self._exempt:
            return handler
        token = bearer_token(details.invocation_metadata)
        if self.accepts(token):
            return handler
        why = "no bearer token" if token is None else "the bearer token is not accepted"
        refusal = Unauthenticated(f"{why}: send metadata 'authorization: Bearer <token>' with a configured token")

        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
            await abort(context, refusal)

        return rebuild(handler, refuse)


# --- undecodable messages ---------------------------------------------------------------------
class MalformedMessage(InvalidRequest):
    """A request message that does not parse (bad wire format, invalid UTF-8 in a string field)."""


class _Undecodable:
    """Stands in for a request message that failed to parse."""

    __slots__ = ("error",)

    def __init__(self, error: str):
        self.error = error

    def refusal(self) -> MalformedMessage:
        return MalformedMessage(f"request message could not be parsed ({self.error}); strings must be valid UTF-8")


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as exc:
            return _Undecodable(str(exc))

    return deserialize


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A client stream that raises MalformedMessage at an unparsable message (the servicer maps it,
    or the guard aborts with it if it escapes)."""
    async for request in requests:
        if isinstance(request, _Undecodable):
            raise request.refusal()
        yield request


def _guarded(behavior: Callable[..., Any], streaming_in: bool, streaming_out: bool) -> Callable[..., Any]:
    """`behavior` behind a check of its request(s): an unparsable one aborts with INVALID_ARGUMENT."""

    def checked(request: Any) -> Any:
        if streaming_in:
            return _checked(request)
        if isinstance(request, _Undecodable):
            raise request.refusal()
        return request

    if not streaming_out:

        async def unary_out(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await behavior(checked(request), context)
            except MalformedMessage as exc:
                await abort(context, exc)

        return unary_out

    async def stream_out(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for response in responses_of(behavior(checked(request), context)):
                yield response
        except MalformedMessage as exc:
            await abort(context, exc)

    return stream_out


class DecodeGuardInterceptor(grpc.aio.ServerInterceptor):
    """Unparsable request messages → INVALID_ARGUMENT naming the parse error.

    Without it grpcio answers UNKNOWN with the exception's repr for unary requests (the handler
    never runs, so metrics never see the call), and a bad message in a client stream surfaces as
    an exception inside the servicer's reader.
    """

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        streaming = bool(handler.request_streaming), bool(handler.response_streaming)
        behavior = _guarded(behavior_of(handler), *streaming)
        return rebuild(handler, behavior, _tolerant(handler.request_deserializer))
