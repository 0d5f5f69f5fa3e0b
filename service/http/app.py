"""The HTTP listener of a CharRNNServer: aiohttp on the server's own event loop, over the same runtime.

Same loop and same schedulers as gRPC, so HTTP and gRPC streams share batches; the same TLS files and bearer
tokens; refusals from the same status table. Middlewares, outermost first: metrics (so every status is
counted, refusals included), errors (everything becomes an OpenAI-shaped JSON error), bearer auth (the
playground's page and its static files stay open: they hold no data; the API does not).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler

from charrnn.quoting import quote
from service.config import ConfigError, ServerConfig
from service.front import BearerTokens, Runtime
from service.http import errors
from service.http.body import Bodies
from service.http.routes import CLIENT_CLOSED, CLIENT_GONE, HEALTH, Routes

if TYPE_CHECKING:
    from service.metrics import Metrics

log = logging.getLogger(__name__)

OPEN_ROUTES = ("/", "/static", HEALTH)  # route templates that need no bearer token
HOW_TO_AUTHENTICATE = "the header 'Authorization: Bearer <token>'"  # what a refusal tells the client to send
# How long stop() lets handlers finish once the schedulers have closed (their streams have ended by then).
SHUTDOWN_TIMEOUT_S = 1.0


def _route(request: web.Request) -> str:
    """The matched route's template (a bounded label), never the raw path."""
    resource = request.match_info.route.resource
    return "unmatched" if resource is None else resource.canonical


def build_app(config: ServerConfig, runtime: Runtime, metrics: Metrics) -> web.Application:
    tokens = config.bearer_tokens()
    auth = BearerTokens(tokens) if tokens else None

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        start, code = time.perf_counter(), 500
        try:
            response = await handler(request)
            code = CLIENT_CLOSED if request.get(CLIENT_GONE) else response.status
            return response
        except web.HTTPException as exc:
            code = exc.status
            raise
        except asyncio.CancelledError:  # the client closed the connection (handler cancellation)
            code = CLIENT_CLOSED
            raise
        finally:
            metrics.on_http_request(request.method, _route(request), code, time.perf_counter() - start)

    @web.middleware
    async def refusals(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return errors.routing_error_response(request, exc)
        except Exception as exc:  # domain errors by the table; anything else is a logged 500
            return errors.error_response(exc)

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if auth is not None and _route(request) not in OPEN_ROUTES:
            auth.check(request.headers.items(), HOW_TO_AUTHENTICATE)
        return await handler(request)

    app = web.Application(middlewares=[count, refusals, authenticate], client_max_size=config.http_max_body_kb * 1024)
    Routes(runtime, metrics, Bodies(config.http_max_body_kb, config.http_max_string_chars)).add_to(app)
    return app


def _ssl_context(config: ServerConfig) -> ssl.SSLContext | None:
    """The gRPC edge's TLS settings as an SSLContext (mutual TLS when a client CA is set), or None."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
        if config.tls_client_ca is not None:
            context.load_verify_locations(cafile=config.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot use the TLS files for HTTP: {exc}") from exc
    return context


class ProtocolLog(logging.LoggerAdapter):
    """aiohttp's connection-level log, where requests it cannot parse end up (aiohttp answers them with a 4xx).

    Those are a client's mistake: one line at INFO, not an ERROR with a traceback. Anything else is logged as
    aiohttp logs it.
    """

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        error = exc_info.__cause__ if isinstance(exc_info, web.RequestPayloadError) else exc_info
        if isinstance(error, HttpProcessingError) and error.code < 500:
            lines = [line for line in error.message.splitlines() if line.strip()] or [type(error).__name__]
            self.info("refused a malformed HTTP request (%d): %s", error.code, quote(lines[0].strip(), 120))
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)


class HttpFace:
    """Started by the server once the model is warm, stopped after its schedulers have drained.

    Off (start and stop do nothing) unless `config.http_port` >= 0.
    """

    def __init__(self, config: ServerConfig, runtime: Runtime, metrics: Metrics):
        self.config = config
        self.runtime = runtime
        self.metrics = metrics
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, write_port: Callable[[Path, int], None]) -> None:
        """Bind and serve; `write_port` writes the bound port to `http_port_file` (the server's atomic writer)."""
        config = self.config
        if config.http_port < 0:
            return
        app = build_app(config, self.runtime, self.metrics)
        self.runner = web.AppRunner(
            app,
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
            logger=ProtocolLog(logging.getLogger("aiohttp.server")),
        )
        await self.runner.setup()
        site = web.TCPSite(self.runner, config.host, config.http_port, ssl_context=_ssl_context(config))
        await site.start()
        self.port = int(self.runner.addresses[0][1])
        scheme = "http" if config.tls_cert is None else "https"
        log.info("HTTP API on %s://%s:%d/v1 and the playground on /", scheme, config.host, self.port)
        if config.http_port_file is not None:
            write_port(config.http_port_file, self.port)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
