"""The one table from domain errors to gRPC status codes, and the trailers that go with them.

Only the gRPC edge (servicer, interceptors) uses it. Anything not in the table is a bug: it becomes
INTERNAL with a generic message, and the traceback is logged.
"""

from __future__ import annotations

import logging

import grpc

from charrnn.protocol import RETRY_PUSHBACK_KEY
from charrnn.vocab import UnknownCharactersError
from service.errors import (
    ForeignToken,
    InvalidRequest,
    InvalidToken,
    LimitExceeded,
    ServiceError,
    SessionBusy,
    SessionNotFound,
    ShuttingDown,
    Unauthenticated,
)

log = logging.getLogger(__name__)

STATUS_CODES: dict[type[Exception], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    UnknownCharactersError: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidToken: grpc.StatusCode.INVALID_ARGUMENT,
    ForeignToken: grpc.StatusCode.FAILED_PRECONDITION,
    SessionNotFound: grpc.StatusCode.NOT_FOUND,
    SessionBusy: grpc.StatusCode.FAILED_PRECONDITION,
    LimitExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ShuttingDown: grpc.StatusCode.UNAVAILABLE,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
}


def trailers_for(exc: BaseException) -> tuple[tuple[str, str], ...]:
    """Trailing metadata that goes with `exc`'s status: the retry hint, when it has one."""
    pushback = getattr(exc, "retry_pushback_ms", None) if isinstance(exc, ServiceError) else None
    return () if pushback is None else ((RETRY_PUSHBACK_KEY, str(pushback)),)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-facing message for `exc` (INTERNAL for anything unexpected)."""
    for cls in type(exc).__mro__:
        code = STATUS_CODES.get(cls)
        if code is not None:
            return code, str(exc)
    log.error("internal error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error (logged on the server)"


async def abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """End the call with `exc`'s status, message and trailers."""
    code, message = status_for(exc)
    await context.abort(code, message, trailing_metadata=trailers_for(exc))
