"""The HTTP routes: POST /v1/completions (JSON or server-sent events), GET /v1/models, GET /health (for
probes and load balancers) and the playground.

A completion runs exactly as a gRPC Generate does: the shared Validator makes the Job, the model's scheduler
batches it with every other stream (gRPC or HTTP), and a client that goes away cancels its stream, so the
scheduler drops its row at the next step (aiohttp cancels the handler when the connection closes).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from aiohttp import web

from charrnn.quoting import quote
from service.context import Context
from service.errors import InvalidRequest, ServiceError
from service.http import errors, openai, sse
from service.http.body import Bodies
from service.registry import LoadedModel
from service.requests import Validator
from service.stream import Chunk, Delivery, Stream

if TYPE_CHECKING:
    from service.metrics import Metrics
    from service.servicer import Runtime

STATIC_DIR = Path(__file__).resolve().parent / "static"
COMPLETIONS = "/v1/completions"
HEALTH = "/health"
# Set on a request whose client went away mid-response (counted as status 499, nginx's "client closed").
CLIENT_GONE = web.RequestKey("charrnn_client_gone", bool)
CLIENT_CLOSED = 499


class Routes:
    def __init__(self, runtime: Runtime, metrics: Metrics, bodies: Bodies):
        self.rt = runtime
        self.validator = Validator(runtime.limits, openai.PARAMETERS)
        self.bodies = bodies
        self.events = metrics.http_events.labels(COMPLETIONS)

    def add_to(self, app: web.Application) -> None:
        app.router.add_post(COMPLETIONS, self.completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get(HEALTH, self.health)
        app.router.add_get("/", self.playground)
        app.router.add_static("/static/", STATIC_DIR, append_version=False)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        completion = openai.parse(await self.bodies.read(request))
        ctx = Context()
        if completion.resume_token is not None:
            try:
                ctx = self.rt.models.decode(completion.resume_token)
            except ServiceError as exc:
                exc.param = f"{openai.OWNER}.resume_token"
                raise
        model = self.rt.models.for_context(ctx)
        name = model.manifest.model.name
        if completion.model not in (None, name):
            served = f"GET /v1/models: {name!r}"
            raise InvalidRequest(f"model {quote(completion.model)} is not served here ({served})", param="model")
        stream = model.scheduler.submit(self.validator.job(model, ctx, completion.request))
        delivery = Delivery(self.rt.delivery, arrived)
        try:
            if completion.stream:
                return await self._events(request, completion, model, stream, delivery)
            return await self._whole(completion, model, stream, delivery)
        finally:  # a client that went away (the handler is cancelled, or a write failed) frees its row
            stream.cancel()  # a no-op once the stream has finished

    async def _whole(
        self, completion: openai.Completion, model: LoadedModel, stream: Stream, delivery: Delivery
    ) -> web.Response:
        parts: list[str] = []
        values: list[np.ndarray] = []
        async for chunk in stream.chunks():
            parts.append(chunk.text)
            values.append(chunk.values)
        finished = stream.finished
        assert finished is not None
        extension = openai.final_extension(model, finished)
        if completion.request.watch:
            extension["values"] = openai.rounded(np.concatenate(values))
        text = "".join(parts)
        delivery.sending(text)  # one message: its text goes out now
        choice = openai.choice(text, finished.reason.value)
        name = model.manifest.model.name
        body = openai.body(openai.completion_id(), openai.now(), name, [choice], usage=openai.usage(finished))
        return web.json_response({**body, openai.OWNER: extension})

    async def _events(
        self,
        request: web.Request,
        completion: openai.Completion,
        model: LoadedModel,
        stream: Stream,
        delivery: Delivery,
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": sse.CONTENT_TYPE, **sse.HEADERS})
        cid, created, name = openai.completion_id(), openai.now(), model.manifest.model.name
        watching = bool(completion.request.watch)
        try:
            await response.prepare(request)
            async for chunk in stream.chunks():
                await self._write_chunk(response, chunk, model, cid, created, watching, delivery)
            finished = stream.finished
            if completion.include_usage and finished is not None:
                await response.write(sse.event(openai.body(cid, created, name, [], usage=openai.usage(finished))))
            await response.write(sse.DONE)
        except ConnectionResetError:  # the client went away between two writes
            request[CLIENT_GONE] = True
            return response
        except Exception as exc:  # the server shut down mid-stream (or a bug): the 200 is gone, say it in the body
            await response.write(errors.error_event(exc))
        await response.write_eof()
        return response

    async def _write_chunk(
        self,
        response: web.StreamResponse,
        chunk: Chunk,
        model: LoadedModel,
        cid: str,
        created: int,
        watching: bool,
        delivery: Delivery,
    ) -> None:
        finished = chunk.finished
        if not chunk.text and finished is None:
            return
        extension: dict[str, Any] = {}
        if watching:
            extension["values"] = openai.rounded(chunk.values)
        if finished is not None:
            extension |= openai.final_extension(model, finished)
        reason = None if finished is None else finished.reason.value
        extra = {openai.OWNER: extension} if extension else {}
        choices = [openai.choice(chunk.text, reason)]
        event = sse.event(openai.body(cid, created, model.manifest.model.name, choices, **extra))
        delivery.sending(chunk.text)
        await response.write(event)
        self.events.inc()

    async def models(self, request: web.Request) -> web.Response:
        card = openai.model_card(self.rt.models.current.manifest, self.rt.limits)
        return web.json_response({"object": "list", "data": [card]})

    async def health(self, request: web.Request) -> web.Response:
        """The gRPC health service's overall status for HTTP probes: 200 SERVING once the model is warm, 503
        NOT_SERVING from the start of a drain (new completions are refused from then on)."""
        serving = self.rt.serving
        status = "SERVING" if serving else "NOT_SERVING"
        return web.json_response({"status": status}, status=200 if serving else 503)

    async def playground(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "index.html")
