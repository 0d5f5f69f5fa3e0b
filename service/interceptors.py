"""Server interceptors in front of the servicers: RED metrics, bearer-token authentication and undecodable
requests.

The server installs them as `[metrics, auth, decode guard]`: the metrics interceptor is the outermost,
so refused calls (UNAUTHENTICATED, INVALID_ARGUMENT for unparsable messages) are counted like any other
status. Both refusals go through `service.status` (the one table); the tokens are the front's, which the
HTTP edge checks too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from prometheus_client import Counter

from service.errors import InvalidRequest, Unauthenticated
from service.front import BearerTokens
from service.metrics import Metrics
from service.rpc import HEALTH_SERVICE, Continuation, behavior_of, kind_of, rebuild, responses_of, service_and_method
from service.status import abort

log = logging.getLogger(__name__)


# --- metrics -----------------------------------------------------------------------------------
def grpc_code_name(code: grpc.StatusCode) -> str:
    """The code as grpc-go / go-grpc-prometheus spell it ("InvalidArgument", "Canceled")."""
    if code is grpc.StatusCode.OK:
        return "OK"
    if code is grpc.StatusCode.CANCELLED:
        return "Canceled"
    return "".join(part.capitalize() for part in code.name.split("_"))


class _Call:
    """The label children of one RPC kind, resolved once per call (not per message)."""

    __slots__ = ("labels", "metrics", "received", "sent", "start")

    def __init__(self, metrics: Metrics, labels: tuple[str, str, str]):
        self.metrics = metrics
        self.labels = labels
        self.received = metrics.grpc_received.labels(*labels)
        self.sent = metrics.grpc_sent.labels(*labels)
        metrics.grpc_started.labels(*labels).inc()
        self.start = time.perf_counter()

    def receiving(self, request: Any, streaming: bool) -> Any:
        """The request (or the client's stream of them) as the behaviour gets it, counted as received."""
        if streaming:
            return _counted(request, self.received)
        self.received.inc()
        return request

    def done(self, code: grpc.StatusCode) -> None:
        m = self.metrics
        m.grpc_handled.labels(*self.labels, grpc_code_name(code)).inc()
        m.grpc_seconds.labels(*self.labels).observe(time.perf_counter() - self.start)

    def fail(self, exc: BaseException, context: grpc.aio.ServicerContext) -> None:
        """Record how the call ended on an exception: an abort's code, a cancellation, or UNKNOWN.

        A client that goes away cancels the handler where it waits: inside an await (CancelledError) or at a
        `yield` while gRPC writes its last message (the response generator is closed: GeneratorExit)."""
        if isinstance(exc, asyncio.CancelledError | GeneratorExit):
            remaining = context.time_remaining()
            expired = remaining is not None and remaining <= 0
            self.done(grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED)
        else:
            self.done(_code(context) or grpc.StatusCode.UNKNOWN)


def _code(context: grpc.aio.ServicerContext) -> grpc.StatusCode | None:
    code: Any = context.code()
    if code is None or isinstance(code, grpc.StatusCode):
        return code
    return next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)


async def _counted(messages: AsyncIterator[Any], counter: Counter) -> AsyncIterator[Any]:
    async for message in messages:
        counter.inc()
        yield message


class GrpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    """RED metrics for every RPC, under go-grpc-prometheus' names and labels."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Continuation,
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None:
            return handler
        service, method = service_and_method(details)
        streaming_in, streaming_out = handler.request_streaming, handler.response_streaming
        labels = (service, method, kind_of(handler).label)
        metrics = self.metrics
        behavior = behavior_of(handler)

        if not streaming_out:

            async def unary_out(request: Any, context: grpc.aio.ServicerContext) -> Any:
                call = _Call(metrics, labels)
                try:
                    response = await behavior(call.receiving(request, streaming_in), context)
                except BaseException as exc:
                    call.fail(exc, context)
                    raise
                call.sent.inc()
                call.done(_code(context) or grpc.StatusCode.OK)
                return response

            return rebuild(handler, unary_out)

        async def stream_out(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            call = _Call(metrics, labels)
            try:
                async for response in responses_of(behavior(call.receiving(request, streaming_in), context)):
                    call.sent.inc()
                    yield response
            except BaseException as exc:
                call.fail(exc, context)
                raise
            call.done(_code(context) or grpc.StatusCode.OK)

        return rebuild(handler, stream_out)


# --- authentication --------------------------------------------------------------------------
class BearerAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuse calls without an accepted bearer token (UNAUTHENTICATED); `exempt` services stay open."""

    HOW = "metadata 'authorization: Bearer <token>'"  # how a gRPC client sends one (the refusal says it)

    def __init__(self, tokens: Iterable[str], exempt: Iterable[str] = (HEALTH_SERVICE,)):
        self._tokens = BearerTokens(tokens)
        self._exempt = frozenset(exempt)

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        service, _ = service_and_method(details)
        if handler is None or service in self._exempt:
            return handler
        try:
            self._tokens.check(details.invocation_metadata, self.HOW)
        except Unauthenticated as refusal:
            error = refusal

            async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
                await abort(context, error)

            return rebuild(handler, refuse)
        return handler


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
