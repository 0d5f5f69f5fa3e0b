"""The gRPC servicer: protobuf to the service's terms and back; everything else is the front's.

Nothing here computes: generations and text runs start through `service.front` (the same path as the
HTTP edge's), and every refusal is a domain error turned into a status by `service.status` (one table).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import grpc

from charrnn.protocol import CELL_TYPES, FINISH_REASONS, PRECISION_TYPES, STATE_KINDS, UNKNOWN_POLICIES
from charrnn.v1 import charrnn_pb2 as pb
from charrnn.v1 import charrnn_pb2_grpc as pb_grpc
from service.config import Limits
from service.context import Context
from service.errors import InvalidRequest, LimitExceeded
from service.front import Front, Runtime
from service.registry import LoadedModel
from service.requests import GenerationRequest
from service.status import abort
from service.stream import Checkpoint, Chunk, Finished

# A watched unit's kind by its protobuf value (unspecified means h, the state every cell has).
_KIND_NAMES = {value: name for name, value in STATE_KINDS.items()} | {pb.STATE_KIND_UNSPECIFIED: "h"}


class CharRNNServicer(pb_grpc.CharRNNServicer):
    def __init__(self, runtime: Runtime):
        self.rt = runtime
        self.front = Front(runtime)

    # --- conversion: protobuf → domain types ------------------------------------------------
    def _request(self, msg: pb.GenerateRequest | pb.GenerateAction) -> GenerationRequest:
        sampling = msg.sampling
        request = GenerationRequest(
            prompt=msg.prompt,
            max_chars=msg.max_chars,
            temperature=sampling.temperature if sampling.HasField("temperature") else None,
            top_k=sampling.top_k,
            top_p=sampling.top_p if sampling.HasField("top_p") else None,
            seed=sampling.seed if sampling.HasField("seed") else None,
            stop=tuple(msg.stop),
        )
        if not isinstance(msg, pb.GenerateRequest):
            return request
        watch = tuple((_KIND_NAMES.get(u.kind, f"kind {u.kind}"), u.layer, u.index) for u in msg.activations.units)
        return replace(request, watch=watch, checkpoint_every=msg.checkpoint_every_chars)

    def _context(self, which: str | None, token: bytes, session_id: str, model: str = "") -> Context:
        """The context a request's token/session oneof names (`which`), checked against the `model` the
        request names (ForeignToken if it was made on another); sessions are read, not taken."""
        if which == "resume_token":
            ctx = self.rt.models.decode(token)
        elif which == "session_id":
            ctx = self.rt.sessions.get(session_id)
        else:
            ctx = Context()
        self.front.model(ctx, model)
        return ctx

    def _done(self, model: LoadedModel, finished: Finished, session_id: str = "") -> pb.GenerateDone:
        """The final message; signed by the stream's own model (it may have been retired meanwhile)."""
        return pb.GenerateDone(
            finish_reason=FINISH_REASONS[finished.reason.value],
            usage=pb.Usage(prompt_chars=finished.prompt_chars, generated_chars=finished.generated_chars),
            resume_token=model.codec.encode(finished.context),
            session_id=session_id,
            seed=finished.seed,
            stop=finished.stop,
        )

    def _signed(self, model: LoadedModel, checkpoint: Checkpoint | None) -> pb.GenerateCheckpoint | None:
        if checkpoint is None:
            return None
        token = model.codec.encode(checkpoint.context)
        return pb.GenerateCheckpoint(resume_token=token, generated_chars=checkpoint.chars)

    # --- RPCs --------------------------------------------------------------------------------
    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        arrived = time.monotonic()
        start = request.WhichOneof("start")
        session_id = request.session_id if start == "session_id" else ""
        acquired = False
        final: Context | None = None  # the session continues from here once the last message is built
        try:
            if session_id:
                ctx = self.rt.sessions.acquire(session_id)
                acquired = True
            else:
                ctx = self._context(start, request.resume_token, "", request.model)
            generation = self.front.generate(ctx, self._request(request), arrived, request.model)
        except Exception as exc:
            if acquired:
                self.rt.sessions.release(session_id, None)
            await abort(context, exc)
        model = generation.model

        def render(chunk: Chunk) -> list[pb.GenerateResponse]:
            nonlocal final, session_id
            values = chunk.values.tolist()
            if chunk.finished is None:
                signed = self._signed(model, chunk.checkpoint)
                return [pb.GenerateResponse(text=chunk.text, activations=values, checkpoint=signed)]
            final = chunk.finished.context
            if request.create_session and not session_id:
                session_id = self.rt.sessions.create(final)
            done = self._done(model, chunk.finished, session_id)
            return [pb.GenerateResponse(text=chunk.text, done=done, activations=values)]

        try:
            async for response in generation.messages(render):
                yield response
        except Exception as exc:  # mid-stream: a draining server's ShuttingDown, or a bug (INTERNAL)
            await abort(context, exc)
        finally:
            generation.cancel()  # a client gone mid-stream frees its row now, not when `messages` is collected
            if acquired:
                self.rt.sessions.release(session_id, final)

    async def Session(
        self, request_iterator: AsyncIterator[pb.SessionRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SessionResponse]:
        lim = self.rt.limits
        if self.rt.session_streams >= lim.max_session_streams:
            refusal = LimitExceeded(
                f"all {lim.max_session_streams} Session streams (max_session_streams) are open; retry later",
                lim.retry_pushback_ms,
            )
            await abort(context, refusal)
        self.rt.session_streams += 1
        conversation = _Conversation(self)
        try:
            async for response in conversation.run(request_iterator):
                yield response
        except Exception as exc:
            await abort(context, exc)
        finally:
            self.rt.session_streams -= 1

    async def Score(self, request: pb.ScoreRequest, context: grpc.aio.ServicerContext) -> pb.ScoreResponse:
        try:
            ctx = self._context(request.WhichOneof("start"), request.resume_token, request.session_id, request.model)
            if not request.text:
                raise InvalidRequest("text must not be empty")
            model, run = await self.front.feed(ctx, request.text, _score_limit, "text", True, request.model)
        except Exception as exc:
            await abort(context, exc)
        assert run.logprobs is not None
        nats = float(-run.logprobs.sum())
        bpc = nats / len(run.logprobs) / math.log(2) if len(run.logprobs) else 0.0
        return pb.ScoreResponse(
            logprobs=run.logprobs.tolist(),
            first_scored=run.first_scored,
            total_nats=nats,
            bits_per_char=bpc,
            resume_token=model.codec.encode(run.after()),
        )

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelInfoResponse:
        try:
            model = self.rt.models.get(request.model)
        except Exception as exc:
            await abort(context, exc)
        return _info(model, model is self.rt.models.current)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        models = self.rt.models
        return pb.ListModelsResponse(models=[_info(m, m is models.current) for m in models.served()])


def _score_limit(limits: Limits) -> int:
    return limits.max_score_chars


def _feed_limit(limits: Limits) -> int:
    return limits.max_prompt_chars


def _info(model: LoadedModel, default: bool) -> pb.GetModelInfoResponse:
    """GetModelInfo's answer for one served model: its manifest and the limits its requests are held to."""
    m, lim = model.manifest, model.limits
    info = pb.GetModelInfoResponse(
        served_name=model.name,
        default=default,
        name=m.model.name,
        version=m.model.version,
        cell=CELL_TYPES[m.model.cell],
        layers=m.model.layers,
        hidden_size=m.model.hidden_size,
        embedding_size=m.model.embedding_size,
        vocab_size=m.model.vocab_size,
        parameters=m.model.parameters,
        vocabulary=list(m.vocabulary.chars),
        unknown_policy=UNKNOWN_POLICIES[m.vocabulary.unknown_policy],
        unknown_char=m.vocabulary.unknown_char or "",
        sha256=m.onnx.sha256,
        precision=PRECISION_TYPES[m.precision],
        limits=pb.Limits(
            max_live_streams=lim.max_live_streams,
            max_queued_streams=lim.max_queued_streams,
            max_prompt_chars=lim.max_prompt_chars,
            max_chars=lim.max_request_chars,
            default_max_chars=lim.default_max_chars,
            max_stop_strings=lim.max_stop_strings,
            max_stop_chars=lim.max_stop_chars,
            max_score_chars=lim.max_score_chars,
            max_sessions=lim.max_sessions,
            session_ttl_seconds=lim.session_ttl_seconds,
            max_watched_units=lim.max_watched_units,
            min_checkpoint_chars=lim.min_checkpoint_chars,
            max_session_streams=lim.max_session_streams,
        ),
    )
    value = m.training.get("val_bits_per_char")  # training/export.py writes it; absent for other artifacts
    if isinstance(value, int | float):
        info.val_bits_per_char = float(value)
    return info


class _Conversation:
    """One Session RPC: a context that lives as long as the stream, and the actions on it."""

    def __init__(self, servicer: CharRNNServicer):
        self.servicer = servicer
        self.rt = servicer.rt
        self.ctx = Context()
        self.model: str | None = None  # the served name the first message named ("" for the default)
        self.inbox: asyncio.Queue[pb.SessionRequest | None] = asyncio.Queue()
        self.backlog: deque[pb.SessionRequest | None] = deque()

    async def _read(self, requests: AsyncIterator[pb.SessionRequest]) -> None:
        try:
            async for request in requests:
                await self.inbox.put(request)
        finally:
            await self.inbox.put(None)

    async def _next(self) -> pb.SessionRequest | None:
        return self.backlog.popleft() if self.backlog else await self.inbox.get()

    async def run(self, requests: AsyncIterator[pb.SessionRequest]) -> AsyncIterator[pb.SessionResponse]:
        reader = asyncio.get_running_loop().create_task(self._read(requests))
        try:
            while (request := await self._next()) is not None:
                self._bind(request.model)
                action = request.WhichOneof("action")
                if action == "feed":
                    await self._feed(request.feed.text)
                    yield pb.SessionResponse(fed=pb.Fed(chars=len(request.feed.text)))
                elif action == "generate":
                    async for response in self._generate(request.generate):
                        yield response
                elif action == "token":
                    token = self.servicer.front.model(self.ctx, self.model).codec.encode(self.ctx)
                    yield pb.SessionResponse(token=pb.ResumeToken(resume_token=token))
                elif action == "load":
                    load = request.load
                    source = load.WhichOneof("source")
                    self.ctx = self.servicer._context(source, load.resume_token, load.session_id, self.model or "")
                    yield pb.SessionResponse(loaded=pb.Loaded())
                elif action == "reset":
                    self.ctx = Context()
                    yield pb.SessionResponse(loaded=pb.Loaded())
                elif action == "cancel":
                    continue  # nothing running: nothing to cancel
                else:
                    raise InvalidRequest("session request has no action")
        except BaseException:
            # The action's own error is the stream's status: whatever the reader failed with since (an
            # unparsable later message, say) must not replace it.
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
            raise
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader

    def _bind(self, model: str) -> None:
        """The first message names the stream's model (NOT_FOUND if not served); later ones repeat it or not."""
        if self.model is None:
            self.rt.models.get(model)
            self.model = model
        elif model and model != self.model:
            shown = f"model {self.model!r}" if self.model else "the default model"
            raise InvalidRequest(f"this Session runs on {shown} (its first message's): `model` cannot change")

    async def _feed(self, text: str) -> None:
        if not text:
            return
        _, run = await self.servicer.front.feed(self.ctx, text, _feed_limit, "fed text", name=self.model)
        self.ctx = run.after()

    async def _generate(self, action: pb.GenerateAction) -> AsyncIterator[pb.SessionResponse]:
        """One generation; a `cancel` that arrives meanwhile stops it, any other action waits until it ends."""
        s = self.servicer
        generation = s.front.generate(self.ctx, s._request(action), time.monotonic(), self.model)

        def render(chunk: Chunk) -> list[pb.SessionResponse]:
            out = [pb.SessionResponse(text=chunk.text)] if chunk.text else []
            if chunk.finished is not None:
                self.ctx = chunk.finished.context
                out.append(pb.SessionResponse(done=s._done(generation.model, chunk.finished)))
            return out

        messages = generation.messages(render)
        next_message = asyncio.ensure_future(anext(messages, None))
        incoming: asyncio.Future[pb.SessionRequest | None] | None = None
        try:
            while True:
                if incoming is None and not (self.backlog and self.backlog[-1] is None):
                    incoming = asyncio.ensure_future(self.inbox.get())
                either: set[asyncio.Future[Any]] = {next_message} if incoming is None else {next_message, incoming}
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                if incoming is not None and incoming.done():
                    request = incoming.result()
                    incoming = None
                    if request is not None and request.WhichOneof("action") == "cancel":
                        generation.cancel()
                    else:
                        self.backlog.append(request)  # runs after this generation
                if next_message.done():
                    message = next_message.result()
                    if message is None:
                        return
                    yield message
                    next_message = asyncio.ensure_future(anext(messages, None))
        finally:
            if incoming is not None:
                if incoming.done():
                    self.backlog.append(incoming.result())
                else:
                    incoming.cancel()
            if not next_message.done():  # the RPC went away mid-generation
                next_message.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await next_message
            await messages.aclose()
            generation.cancel()  # a no-op once it has finished
