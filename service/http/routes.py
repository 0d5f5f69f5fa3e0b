"""The HTTP routes: POST /v1/completions (JSON or server-sent events), GET /v1/models, GET /health (for
probes and load balancers) and the playground.

A completion takes the same path as a gRPC Generate (service/front.py): the shared Validator makes the Job,
the model's scheduler batches it with every other stream (gRPC or HTTP), and a client that goes away cancels
its stream, so the scheduler drops its row at the next step (aiohttp cancels the handler when the connection
closes).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from aiohttp import web

from service.context import Context
from service.errors import ForeignToken, ModelNotFound, ServiceError
from service.front import Front, Generation, Runtime
from service.http import errors, openai, sse
from service.http.body import Bodies
from service.registry import LoadedModel
from service.stream import Chunk, Finished

if TYPE_CHECKING:
    from service.metrics import Metrics

STATIC_DIR = Path(__file__).resolve().parent / "static"
COMPLETIONS = "/v1/completions"
MODEL = "/v1/models/{model}"
HEALTH = "/health"
# Set on a request whose client went away mid-response (counted as status 499, nginx's "client closed").
CLIENT_GONE = web.RequestKey("charrnn_client_gone", bool)
CLIENT_CLOSED = 499


class Routes:
    def __init__(self, runtime: Runtime, metrics: Metrics, bodies: Bodies):
        self.rt = runtime
        self.front = Front(runtime, openai.PARAMETERS)
        self.bodies = bodies
        self.events = metrics.http_events.labels(COMPLETIONS)

    def add_to(self, app: web.Application) -> None:
        app.router.add_post(COMPLETIONS, self.completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get(MODEL, self.model)
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
        try:
            if completion.model is not None:
                self.rt.models.named(completion.model)  # JSON's "" is a name, not protobuf's unset
            generation = self.front.generate(ctx, completion.request, arrived, completion.model)
        except (ModelNotFound, ForeignToken) as exc:
            named = isinstance(exc, ModelNotFound) or completion.model is not None
            exc.param = "model" if named else f"{openai.OWNER}.resume_token"
            raise
        try:
            if completion.stream:
                return await self._events(request, completion, generation)
            return await self._whole(completion, generation)
        finally:  # a client that went away before its stream was read (the handler is cancelled) frees its row
            generation.cancel()  # a no-op once the stream has finished

    async def _whole(self, completion: openai.Completion, generation: Generation) -> web.Response:
        model = generation.model

        def render(chunks: list[Chunk], finished: Finished) -> web.Response:
            extension = openai.final_extension(model, finished)
            if completion.request.watch:
                extension["values"] = openai.rounded(np.concatenate([chunk.values for chunk in chunks]))
            choice = openai.choice("".join(chunk.text for chunk in chunks), finished.reason.value)
            body = openai.body(openai.completion_id(), openai.now(), model.name, [choice], usage=openai.usage(finished))
            return web.json_response({**body, openai.OWNER: extension})

        return await generation.whole(render)

    async def _events(
        self, request: web.Request, completion: openai.Completion, generation: Generation
    ) -> web.StreamResponse:
        model = generation.model
        response = web.StreamResponse(headers={"Content-Type": sse.CONTENT_TYPE, **sse.HEADERS})
        cid, created, name = openai.completion_id(), openai.now(), model.name
        watching = bool(completion.request.watch)

        def render(chunk: Chunk) -> list[bytes]:
            """The chunk's event; none for a chunk with neither text nor the result (a resume point's)."""
            finished = chunk.finished
            if not chunk.text and finished is None:
                return []
            extension: dict[str, Any] = {}
            if watching:
                extension["values"] = openai.rounded(chunk.values)
            if finished is not None:
                extension |= openai.final_extension(model, finished)
            reason = None if finished is None else finished.reason.value
            extra = {openai.OWNER: extension} if extension else {}
            choices = [openai.choice(chunk.text, reason)]
            return [sse.event(openai.body(cid, created, name, choices, **extra))]

        try:
            await response.prepare(request)
            async for event in generation.messages(render):
                await response.write(event)
                self.events.inc()
            finished = generation.stream.finished
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

    async def models(self, request: web.Request) -> web.Response:
        """Every served model's card, the default first (clients that take the first one get the default)."""
        models = self.rt.models
        ordered = sorted(models.served(), key=lambda m: m is not models.current)
        return web.json_response({"object": "list", "data": [self._card(m) for m in ordered]})

    async def model(self, request: web.Request) -> web.Response:
        """One served model's card (its units for the playground's picker); 404 listing the served names."""
        try:
            return web.json_response(self._card(self.rt.models.named(request.match_info["model"])))
        except ModelNotFound as exc:
            exc.param = "model"
            raise

    def _card(self, model: LoadedModel) -> dict[str, Any]:
        return openai.model_card(model, default=model is self.rt.models.current)

    async def health(self, request: web.Request) -> web.Response:
        """The gRPC health service's overall status for HTTP probes: 200 SERVING once the model is warm, 503
        NOT_SERVING from the start of a drain (new completions are refused from then on)."""
        serving = self.rt.serving
        status = "SERVING" if serving else "NOT_SERVING"
        return web.json_response({"status": status}, status=200 if serving else 503)

    async def playground(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "index.html")
