"""Opening a channel: its target and balancing, plaintext or TLS (mutual with a client certificate), and a
bearer token on every call."""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import grpc

from charrnn.client.balancing import Balancing, grpc_target
from charrnn.v1 import charrnn_pb2 as pb

# The API's service: its calls are retried, and round_robin watches its health on each replica (the server
# reports NOT_SERVING while it loads, warms up or drains, so such a replica gets no new calls).
SERVICE = pb.DESCRIPTOR.services_by_name["CharRNN"].full_name
# gRPC retries a call that failed with UNAVAILABLE before any answer arrived (a replica that died or is
# draining, a connection that broke as the call left), after the server's `grpc-retry-pushback-ms` when it
# sent one, else after a jittered backoff. A call that has had an answer is never retried.
RETRY_POLICY = {
    "maxAttempts": 3,
    "initialBackoff": "0.1s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


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


def channel_options(balancing: Balancing) -> list[tuple[str, str | int]]:
    """gRPC channel arguments for `balancing`.

    Keepalive also bounds every other ping's wait (`ping_timeout_ms`): while a flow-control probe is
    unanswered no keepalive ping is sent, and that probe's own default wait is a minute. Pings continue
    on a stream where only the server sends (`max_pings_without_data` 0), so the servers must accept a
    ping every `keepalive_ms` (their `--min-ping-interval-seconds`).
    """
    config: dict[str, Any] = {
        "loadBalancingConfig": [{balancing.lb_policy: {}}],
        "methodConfig": [{"name": [{"service": SERVICE}], "retryPolicy": RETRY_POLICY}],
    }
    if balancing.lb_policy == "round_robin":
        config["healthCheckConfig"] = {"serviceName": SERVICE}
    options: list[tuple[str, str | int]] = [("grpc.service_config", json.dumps(config))]
    if balancing.keepalive_ms:
        options += [
            ("grpc.keepalive_time_ms", balancing.keepalive_ms),
            ("grpc.keepalive_timeout_ms", balancing.keepalive_timeout_ms),
            ("grpc.http2.ping_timeout_ms", balancing.keepalive_timeout_ms),
            ("grpc.http2.max_pings_without_data", 0),
        ]
    return options


def open_channel(
    target: str,
    *,
    tls: bool = False,
    tls_ca: bytes | None = None,
    tls_cert: bytes | None = None,
    tls_key: bytes | None = None,
    auth_token: str | None = None,
    balancing: Balancing | None = None,
) -> grpc.Channel:
    """`target`: HOST:PORT, a list IP:PORT,IP:PORT or dns:///NAME:PORT (`grpc_target`), balanced and kept
    alive as `balancing` says (default: round_robin). `tls` (implied by any PEM given): TLS with `tls_ca`
    (else the system's CAs); `tls_cert` and `tls_key`: a client certificate for mutual TLS. `auth_token`:
    sent as `authorization: Bearer`."""
    tls = bool(tls or tls_ca or tls_cert or tls_key)
    resolved = grpc_target(target, tls=tls)
    options = channel_options(balancing or Balancing())
    channel: grpc.Channel
    if tls:
        credentials = grpc.ssl_channel_credentials(tls_ca, tls_key, tls_cert)
        channel = grpc.secure_channel(resolved, credentials, options=options)
    else:
        channel = grpc.insecure_channel(resolved, options=options)
    if auth_token:
        channel = grpc.intercept_channel(channel, _BearerToken(auth_token))
    return channel
