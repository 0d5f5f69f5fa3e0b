"""The one table from domain errors to each edge's status: a gRPC code and an HTTP status per error class.

The gRPC edge (servicer, interceptors) and the HTTP edge (service/http/) both read it, so the two cannot
disagree about what a refusal means. Anything not in the table is a bug: it becomes INTERNAL (HTTP 500)
with a generic message, and the traceback is logged.
"""

from __future__ import annotations

import logging
from typing import NamedTuple, NoReturn

import grpc

from charrnn.protocol import RETRY_PUSHBACK_KEY
from charrnn.vocab import UnknownCharactersError
from service.errors import (
    EngineFailed,
    ForeignToken,
    InvalidRequest,
    InvalidToken,
    LimitExceeded,
    ModelNotFound,
    ServiceError,
    SessionBusy,
    SessionNotFound,
    ShuttingDown,
    Unauthenticated,
)

log = logging.getLogger(__name__)


class EdgeStatus(NamedTuple):
    """How one refusal reads on each edge."""

    grpc: grpc.StatusCode
    http: int


class RequestTooLarge(InvalidRequest):
    """A request body over the edge's size limit (HTTP; gRPC enforces its own message limit the same way)."""


INTERNAL = EdgeStatus(grpc.StatusCode.INTERNAL, 500)
INTERNAL_MESSAGE = "internal error (logged on the server)"

STATUSES: dict[type[Exception], EdgeStatus] = {
    InvalidRequest: EdgeStatus(grpc.StatusCode.INVALID_ARGUMENT, 400),
    UnknownCharactersError: EdgeStatus(grpc.StatusCode.INVALID_ARGUMENT, 400),
    InvalidToken: EdgeStatus(grpc.StatusCode.INVALID_ARGUMENT, 400),
    RequestTooLarge: EdgeStatus(grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
    ForeignToken: EdgeStatus(grpc.StatusCode.FAILED_PRECONDITION, 409),
    ModelNotFound: EdgeStatus(grpc.StatusCode.NOT_FOUND, 404),
    SessionNotFound: EdgeStatus(grpc.StatusCode.NOT_FOUND, 404),
    SessionBusy: EdgeStatus(grpc.StatusCode.FAILED_PRECONDITION, 409),
    LimitExceeded: EdgeStatus(grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    ShuttingDown: EdgeStatus(grpc.StatusCode.UNAVAILABLE, 503),
    EngineFailed: EdgeStatus(grpc.StatusCode.UNAVAILABLE, 503),
    Unauthenticated: EdgeStatus(grpc.StatusCode.UNAUTHENTICATED, 401),
}


def edge_status(exc: BaseException) -> tuple[EdgeStatus, str]:
    """Both edges' statuses and the client-facing message for `exc` (INTERNAL for anything unexpected)."""
    for cls in type(exc).__mro__:
        status = STATUSES.get(cls)
        if status is not None:
            return status, str(exc)
    log.error("internal error", exc_info=exc)
    return INTERNAL, INTERNAL_MESSAGE


def retry_after_ms(exc: BaseException) -> int | None:
    """The retry hint of a refusal worth retrying (draining, full), or None."""
    return exc.retry_pushback_ms if isinstance(exc, ServiceError) else None


def trailers_for(exc: BaseException) -> tuple[tuple[str, str], ...]:
    """Trailing metadata that goes with `exc`'s gRPC status: the retry hint, when it has one."""
    pushback = retry_after_ms(exc)
    return () if pushback is None else ((RETRY_PUSHBACK_KEY, str(pushback)),)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and client-facing message for `exc` (INTERNAL for anything unexpected)."""
    status, message = edge_status(exc)
    return status.grpc, message


async def abort(context: grpc.aio.ServicerContext, exc: BaseException) -> NoReturn:
    """End the call with `exc`'s status, message and trailers (grpc.aio's abort raises, always)."""
    code, message = status_for(exc)
    await context.abort(code, message, trailing_metadata=trailers_for(exc))
    raise AssertionError("grpc.aio's ServicerContext.abort returned")  # its stubs don't say it never returns
