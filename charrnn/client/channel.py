"""Opening a channel: plaintext or TLS (mutual with a client certificate), and a bearer token on every call."""

from __future__ import annotations

from typing import Any, NamedTuple

import grpc


class _Details(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <token>` to every call's metadata."""

    def __init__(self, token: str):
        self._entry = ("authorization", f"Bearer {token}")

    def _with_token(self, d: Any) -> _Details:
        metadata = [*(d.metadata or ()), self._entry]
        return _Details(d.method, d.timeout, metadata, d.credentials, d.wait_for_ready, d.compression)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._with_token(details), request_iterator)

    def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._with_token(details), request_iterator)


def open_channel(
    target: str,
    *,
    tls: bool = False,
    tls_ca: bytes | None = None,
    tls_cert: bytes | None = None,
    tls_key: bytes | None = None,
    auth_token: str | None = None,
) -> grpc.Channel:
    """`tls` (implied by any PEM given): TLS with `tls_ca` (else the system's CAs); `tls_cert` and `tls_key`:
    a client certificate for mutual TLS. `auth_token`: sent as `authorization: Bearer`."""
    channel: grpc.Channel
    if tls or tls_ca or tls_cert or tls_key:
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(tls_ca, tls_key, tls_cert))
    else:
        channel = grpc.insecure_channel(target)
    if auth_token:
        channel = grpc.intercept_channel(channel, _BearerToken(auth_token))
    return channel
