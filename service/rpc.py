"""gRPC handler plumbing the interceptors share: an RPC's kind, rebuilding a handler, streaming through one.

grpc.aio gives interceptors the method handler only; wrapping it means knowing which of the four
behaviours it holds and rebuilding one of the same kind. Health's Watch writes with `context.write`
and returns an awaitable instead of an async iterator, so wrappers must accept both.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

HEALTH_SERVICE = "grpc.health.v1.Health"
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


@dataclass(frozen=True)
class RpcKind:
    label: str  # grpc_type as go-grpc-prometheus names it
    attr: str  # the handler attribute that holds the behaviour
    factory: Callable[..., grpc.RpcMethodHandler]  # builds a handler of this kind


_KINDS = {
    (False, False): RpcKind("unary", "unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): RpcKind("server_stream", "unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): RpcKind("client_stream", "stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): RpcKind("bidi_stream", "stream_stream", grpc.stream_stream_rpc_method_handler),
}


def kind_of(handler: grpc.RpcMethodHandler) -> RpcKind:
    return _KINDS[bool(handler.request_streaming), bool(handler.response_streaming)]


def behavior_of(handler: grpc.RpcMethodHandler) -> Callable[..., Any]:
    return getattr(handler, kind_of(handler).attr)


def rebuild(
    handler: grpc.RpcMethodHandler,
    behavior: Callable[..., Any],
    deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler:
    """A handler of `handler`'s kind with another behaviour (and request deserializer, if given)."""
    return kind_of(handler).factory(
        behavior,
        request_deserializer=deserializer or handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def service_and_method(details: grpc.HandlerCallDetails) -> tuple[str, str]:
    """("charrnn.v1.CharRNN", "Generate") from "/charrnn.v1.CharRNN/Generate"."""
    service, _, method = details.method.lstrip("/").rpartition("/")
    return service, method


async def responses_of(result: Any) -> AsyncIterator[Any]:
    """The responses of a streaming behaviour's result: an async iterator, or an awaitable that writes them."""
    if inspect.isawaitable(result):
        await result
        return
    async for response in result:
        yield response
