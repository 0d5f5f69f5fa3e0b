"""The one exception the client raises for a failed call."""

from __future__ import annotations

import contextlib
from typing import Any

import grpc

from charrnn.protocol import RETRY_PUSHBACK_KEY


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
