"""Refusals at the HTTP edge: the shared status table (service/status.py) rendered in OpenAI's error shape.

    {"error": {"message": "...", "type": "invalid_request_error", "param": "temperature", "code": "invalid_argument"}}

`code` is the gRPC status the same refusal gets on the gRPC edge, so logs and clients of both edges match.
Refusals worth retrying (draining, queue full) carry `Retry-After` (whole seconds, HTTP's unit) and
`retry-after-ms` (the exact hint; the OpenAI SDKs read it first).
"""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from charrnn.quoting import quote
from service.errors import ServiceError
from service.http import sse
from service.status import edge_status, retry_after_ms

# OpenAI's error `type` for each HTTP status the service answers with.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable_error",
}


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _rendered(exc: BaseException) -> tuple[int, dict[str, Any]]:
    status, message = edge_status(exc)
    param = exc.param if isinstance(exc, ServiceError) else None
    return status.http, error_body(status.http, message, param, status.grpc.name.lower())


def error_response(exc: BaseException) -> web.Response:
    """The JSON error response for a domain error (anything else: 500, logged by the table)."""
    status, body = _rendered(exc)
    headers = {}
    pushback = retry_after_ms(exc)
    if pushback is not None:
        headers = {"Retry-After": str(math.ceil(pushback / 1000)), "retry-after-ms": str(pushback)}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return web.json_response(body, status=status, headers=headers)


def error_event(exc: BaseException) -> bytes:
    """A refusal after the stream's 200 went out (the server shut down mid-stream): an event, then the end."""
    return sse.event(_rendered(exc)[1])


def routing_error_response(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's own refusals (no such route, method not allowed) in the same shape."""
    if exc.status == 404:
        message = f"no route {request.method} {quote(request.path)}; the API is POST /v1/completions and GET /v1/models"
    elif exc.status == 405:
        message = f"{request.method} is not allowed on {quote(request.path)} (allowed: {exc.headers.get('Allow', '')})"
    else:
        message = exc.reason
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
    return web.json_response(error_body(exc.status, message), status=exc.status, headers=headers)
