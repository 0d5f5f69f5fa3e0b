"""Domain errors and the one table that maps them to gRPC status codes.

Service modules raise these (or the vocabulary's UnknownCharactersError); only the servicer
turns them into statuses, through `status_for`. Anything not in the table is a bug: it
becomes INTERNAL with a generic message, and the traceback is logged.
"""

from __future__ import annotations

import logging

import grpc

from charrnn.vocab import UnknownCharactersError

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """A request the service refuses; the message is shown to the client.

    `retry_pushback_ms` (refusals worth retrying: draining, full) goes to the client as the
    `grpc-retry-pushback-ms` trailer, the key gRPC's own retry policy reads.
    """

    def __init__(self, message: str, retry_pushback_ms: int | None = None):
        super().__init__(message)
        self.retry_pushback_ms = retry_pushback_ms


class InvalidRequest(ServiceError):
    """A parameter is missing, malformed or out of range."""


class InvalidToken(ServiceError):
    """A resume token is malformed, from another format version, or its signature does not match."""


class ForeignToken(ServiceError):
    """A correctly signed resume token that belongs to a different model."""


class SessionNotFound(ServiceError):
    """No live session has this id (never created, expired or evicted)."""


class SessionBusy(ServiceError):
    """Another call is using this session right now."""


class LimitExceeded(ServiceError):
    """A capacity limit (live streams, queue) is full; the message names it."""


class ShuttingDown(ServiceError):
    """The server is draining and takes no new streams."""


class Unauthenticated(ServiceError):
    """The call carries no bearer token, or one the server does not accept."""


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


RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"


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
