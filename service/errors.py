"""Domain errors: what the service refuses, in its own terms (no transport: the scheduler raises them too).

The edge turns them into statuses through one table (service/status.py).
"""

from __future__ import annotations


class ServiceError(Exception):
    """A request the service refuses; the message is shown to the client.

    `retry_pushback_ms` (refusals worth retrying: draining, full) goes to the client as the
    `grpc-retry-pushback-ms` trailer at the gRPC edge, the key gRPC's own retry policy reads.
    `param` is the request parameter the refusal is about, in the edge's spelling (HTTP error bodies name it).
    """

    def __init__(self, message: str, retry_pushback_ms: int | None = None, *, param: str | None = None):
        super().__init__(message)
        self.retry_pushback_ms = retry_pushback_ms
        self.param = param


class InvalidRequest(ServiceError):
    """A parameter is missing, malformed or out of range."""


class InvalidToken(ServiceError):
    """A resume token is malformed, from another format version, or its signature does not match."""


class ForeignToken(ServiceError):
    """A correctly signed resume token that belongs to a different model."""


class ModelNotFound(ServiceError):
    """The request names a model this server does not serve; the message lists the ones it does."""


class SessionNotFound(ServiceError):
    """No live session has this id (never created, expired or evicted)."""


class SessionBusy(ServiceError):
    """Another call is using this session right now."""


class LimitExceeded(ServiceError):
    """A capacity limit (live streams, queue) is full; the message names it."""


class ShuttingDown(ServiceError):
    """The server is draining and takes no new streams."""


class EngineFailed(ServiceError):
    """The engine running a stream died or wedged; the stream can resume from its last checkpoint."""


class Unauthenticated(ServiceError):
    """The call carries no bearer token, or one the server does not accept."""
