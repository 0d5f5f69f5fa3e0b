"""The gRPC servicer: validate, convert protobuf to domain types at the edge, map errors.

Nothing here computes: jobs go to the scheduler, contexts to the state module, and every
refusal is a domain error turned into a status by `errors.status_for` (one table).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from charrnn.artifact import Manifest
from charrnn.protocol import CELL_TYPES, FINISH_REASONS, STATE_KINDS, UNKNOWN_POLICIES
from charrnn.v1 import charrnn_pb2 as pb
from charrnn.v1 import charrnn_pb2_grpc as pb_grpc
from service.config import Limits
from service.context import Context
from service.errors import InvalidRequest, ShuttingDown
from service.registry import LoadedModel, ModelRegistry
from service.sampling import SamplingParams
from service.scheduler import Chunk, Finished, Job, ResumePoint, Scheduler, Stream, WatchedUnit, run_text
from service.sessions import SessionStore
from service.status import abort

log = logging.getLogger(__name__)

MAX_TEMPERATURE = 100.0
# A watched unit's kind by its protobuf value (unspecified means h, the state every cell has).
_KIND_NAMES = {value: name for name, value in STATE_KINDS.items()} | {pb.STATE_KIND_UNSPECIFIED: "h"}


@dataclass
class Runtime:
    """Everything a request needs, built once by the server (the models change on a hot reload)."""

    models: ModelRegistry
    sessions: SessionStore
    limits: Limits

    @property
    def manifest(self) -> Manifest:
        return self.models.current.manifest

    @property
    def scheduler(self) -> Scheduler:
        return self.models.current.scheduler


class CharRNNServicer(pb_grpc.CharRNNServicer):
    def __init__(self, runtime: Runtime):
        self.rt = runtime

    # --- conversion and validation ----------------------------------------------------------
    def _encode(self, model: LoadedModel, text: str, limit: int, what: str) -> tuple[int, ...]:
        if len(text) > limit:
            raise InvalidRequest(f"{what} has {len(text)} characters; the limit is {limit} ({what} limit)")
        return tuple(model.vocab.encode(text).tolist())

    def _sampling(self, msg: pb.SamplingParams) -> tuple[SamplingParams, int | None]:
        temperature = msg.temperature if msg.HasField("temperature") else 1.0
        if not (math.isfinite(temperature) and 0.0 <= temperature <= MAX_TEMPERATURE):
            raise InvalidRequest(f"temperature must be in [0, {MAX_TEMPERATURE:g}], got {temperature}")
        top_p = msg.top_p if msg.HasField("top_p") else 1.0
        if not (math.isfinite(top_p) and 0.0 < top_p <= 1.0):
            raise InvalidRequest(f"top_p must be in (0, 1], got {top_p}")
        seed = msg.seed if msg.HasField("seed") else None  # uint64 on the wire: every value is a valid seed
        return SamplingParams(float(temperature), int(msg.top_k), float(top_p)), seed

    def _max_chars(self, requested: int) -> int:
        lim = self.rt.limits
        if requested > lim.max_request_chars:
            raise InvalidRequest(
                f"max_chars {requested} exceeds the limit of {lim.max_request_chars} (max_request_chars)"
            )
        return requested or lim.default_max_chars

    def _stops(self, stops: Sequence[str]) -> tuple[str, ...]:
        lim = self.rt.limits
        if len(stops) > lim.max_stop_strings:
            raise InvalidRequest(f"{len(stops)} stop strings; the limit is {lim.max_stop_strings} (max_stop_strings)")
        for stop in stops:
            if not stop or len(stop) > lim.max_stop_chars:
                raise InvalidRequest(f"stop strings must have 1 to {lim.max_stop_chars} characters (max_stop_chars)")
        return tuple(stops)

    def _watch(self, model: LoadedModel, request: pb.ActivationRequest) -> tuple[WatchedUnit, ...]:
        """The watched units as state/layer/index, refusing any the model lacks or more than the limit."""
        units = request.units
        limit = self.rt.limits.max_watched_units
        if len(units) > limit:
            raise InvalidRequest(f"{len(units)} watched units; the limit is {limit} (max_watched_units)")
        kinds = [s.kind for s in model.manifest.onnx.states]
        layers, hidden = model.manifest.state_shape
        out = []
        for i, unit in enumerate(units):
            kind = _KIND_NAMES.get(unit.kind, f"kind {unit.kind}")
            name = f"watched unit {i} ({kind}:{unit.layer}:{unit.index})"
            if kind not in kinds:
                cell, have = model.manifest.model.cell, "/".join(kinds)
                raise InvalidRequest(f"{name}: the {cell} model has no such state (it has {have})")
            if unit.layer >= layers or unit.index >= hidden:
                raise InvalidRequest(f"{name}: out of range (layers {layers}, hidden_size {hidden})")
            out.append(WatchedUnit(kinds.index(kind), unit.layer, unit.index))
        return tuple(out)

    def _checkpoint_every(self, every: int) -> int:
        minimum = self.rt.limits.min_checkpoint_chars
        if 0 < every < minimum:
            raise InvalidRequest(
                f"checkpoint_every_chars {every} is below the limit of {minimum} (min_checkpoint_chars)"
            )
        return every

    def _context(self, which: str | None, token: bytes, session_id: str) -> Context:
        """The context a request's token/session oneof names (`which`); sessions are read, not taken."""
        if which == "resume_token":
            return self.rt.models.decode(token)
        if which == "session_id":
            return self.rt.sessions.get(session_id)
        return Context()

    def _job(
        self,
        model: LoadedModel,
        ctx: Context,
        prompt: str,
        max_chars: int,
        sampling: pb.SamplingParams,
        stops: Sequence[str],
        watch: tuple[WatchedUnit, ...] = (),
        checkpoint_every: int = 0,
    ) -> Job:
        ids = self._encode(model, prompt, self.rt.limits.max_prompt_chars, "prompt")
        if not ids and ctx.logits is None:
            raise InvalidRequest("prompt is empty and there is no state to continue from")
        params, seed = self._sampling(sampling)
        return Job(ctx, ids, self._max_chars(max_chars), params, self._stops(stops), seed, watch, checkpoint_every)

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

    def _signed(self, model: LoadedModel, checkpoint: ResumePoint | None) -> pb.GenerateCheckpoint | None:
        if checkpoint is None:
            return None
        token = model.codec.encode(checkpoint.context)
        return pb.GenerateCheckpoint(resume_token=token, generated_chars=checkpoint.chars)

    # --- RPCs --------------------------------------------------------------------------------
    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        session_id = request.session_id if request.WhichOneof("start") == "session_id" else ""
        acquired = False
        final: Context | None = None
        try:
            if session_id:
                ctx = self.rt.sessions.acquire(session_id)
                acquired = True
            else:
                ctx = self._context(request.WhichOneof("start"), request.resume_token, "")
            model = self.rt.models.for_context(ctx)
            watch = self._watch(model, request.activations) if request.activations.units else ()
            every = self._checkpoint_every(request.checkpoint_every_chars)
            job = self._job(model, ctx, request.prompt, request.max_chars, request.sampling, request.stop, watch, every)
            stream = model.scheduler.submit(job)
        except Exception as exc:
            if acquired:
                self.rt.sessions.release(session_id, None)
            await abort(context, exc)
            return
        try:
            async for text, finished, values, checkpoint in _chunks(stream):
                if finished is None:
                    signed = self._signed(model, checkpoint)
                    yield pb.GenerateResponse(text=text, activations=values, checkpoint=signed)
                    continue
                final = finished.context
                if request.create_session and not session_id:
                    session_id = self.rt.sessions.create(finished.context)
                yield pb.GenerateResponse(text=text, done=self._done(model, finished, session_id), activations=values)
        except ShuttingDown as exc:
            await abort(context, exc)
        finally:
            if acquired:
                self.rt.sessions.release(session_id, final)

    async def Session(
        self, request_iterator: AsyncIterator[pb.SessionRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SessionResponse]:
        conversation = _Conversation(self)
        try:
            async for response in conversation.run(request_iterator):
                yield response
        except Exception as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            await abort(context, exc)

    async def Score(self, request: pb.ScoreRequest, context: grpc.aio.ServicerContext) -> pb.ScoreResponse:
        try:
            ctx = self._context(request.WhichOneof("start"), request.resume_token, request.session_id)
            if not request.text:
                raise InvalidRequest("text must not be empty")
            model = self.rt.models.for_context(ctx)
            ids = np.asarray(self._encode(model, request.text, self.rt.limits.max_score_chars, "text"), np.int64)
            engine = model.scheduler.engine
            logits, after = await model.scheduler.call(lambda: run_text(engine, ctx, ids))
        except Exception as exc:
            await abort(context, exc)
            raise AssertionError("unreachable") from exc
        predictors = logits[:-1]
        first = 1
        if ctx.logits is not None:
            predictors = np.concatenate([ctx.logits[None, :], predictors])
            first = 0
        targets = ids[first:]
        x = predictors.astype(np.float64)
        peak = x.max(axis=1, keepdims=True)
        log_z = peak[:, 0] + np.log(np.exp(x - peak).sum(axis=1))
        logprobs = x[np.arange(len(targets)), targets] - log_z
        nats = float(-logprobs.sum())
        bpc = nats / len(targets) / math.log(2) if len(targets) else 0.0
        return pb.ScoreResponse(
            logprobs=logprobs.tolist(),
            first_scored=first,
            total_nats=nats,
            bits_per_char=bpc,
            resume_token=model.codec.encode(after),
        )

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelInfoResponse:
        m = self.rt.models.current.manifest
        lim = self.rt.limits
        info = pb.GetModelInfoResponse(
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
            ),
        )
        value = m.training.get("val_bits_per_char")  # training/export.py writes it; absent for other artifacts
        if isinstance(value, int | float):
            info.val_bits_per_char = float(value)
        return info


async def _chunks(stream: Stream) -> AsyncGenerator[Chunk, None]:
    """A stream's flushed chunks until it ends; a caller that goes away cancels the stream."""
    try:
        while True:
            chunk = await stream.next_chunk()
            yield chunk
            if chunk.finished is not None:
                return
    finally:
        if stream.finished is None:
            stream.cancel()


class _Conversation:
    """One Session RPC: a context that lives as long as the stream, and the actions on it."""

    def __init__(self, servicer: CharRNNServicer):
        self.servicer = servicer
        self.rt = servicer.rt
        self.ctx = Context()
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
                action = request.WhichOneof("action")
                if action == "feed":
                    await self._feed(request.feed.text)
                    yield pb.SessionResponse(fed=pb.Fed(chars=len(request.feed.text)))
                elif action == "generate":
                    async for response in self._generate(request.generate):
                        yield response
                elif action == "token":
                    token = self.rt.models.for_context(self.ctx).codec.encode(self.ctx)
                    yield pb.SessionResponse(token=pb.ResumeToken(resume_token=token))
                elif action == "load":
                    load = request.load
                    self.ctx = self.servicer._context(load.WhichOneof("source"), load.resume_token, load.session_id)
                    yield pb.SessionResponse(loaded=pb.Loaded())
                elif action == "reset":
                    self.ctx = Context()
                    yield pb.SessionResponse(loaded=pb.Loaded())
                elif action == "cancel":
                    continue  # nothing running: nothing to cancel
                else:
                    raise InvalidRequest("session request has no action")
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _feed(self, text: str) -> None:
        if not text:
            return
        model = self.rt.models.for_context(self.ctx)
        ids = np.asarray(self.servicer._encode(model, text, self.rt.limits.max_prompt_chars, "fed text"), np.int64)
        engine, ctx = model.scheduler.engine, self.ctx
        _, self.ctx = await model.scheduler.call(lambda: run_text(engine, ctx, ids))

    async def _generate(self, action: pb.GenerateAction) -> AsyncIterator[pb.SessionResponse]:
        s = self.servicer
        model = self.rt.models.for_context(self.ctx)
        job = s._job(model, self.ctx, action.prompt, action.max_chars, action.sampling, action.stop)
        stream = model.scheduler.submit(job)
        chunks = _chunks(stream)
        incoming: asyncio.Task[pb.SessionRequest | None] | None = None
        try:
            pending_chunk = asyncio.ensure_future(anext(chunks))
            while True:
                if incoming is None and not (self.backlog and self.backlog[-1] is None):
                    incoming = asyncio.ensure_future(self.inbox.get())
                waiting = {pending_chunk} if incoming is None else {pending_chunk, incoming}
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if incoming is not None and incoming.done():
                    request = incoming.result()
                    incoming = None
                    if request is not None and request.WhichOneof("action") == "cancel":
                        stream.cancel()
                    else:
                        self.backlog.append(request)  # runs after this generation
                if pending_chunk.done():
                    text, finished, _, _ = pending_chunk.result()
                    if finished is not None:
                        self.ctx = finished.context
                        if text:
                            yield pb.SessionResponse(text=text)
                        yield pb.SessionResponse(done=s._done(model, finished))
                        return
                    if text:
                        yield pb.SessionResponse(text=text)
                    pending_chunk = asyncio.ensure_future(anext(chunks))
        finally:
            if incoming is not None:
                if incoming.done():
                    self.backlog.append(incoming.result())
                else:
                    incoming.cancel()
            await chunks.aclose()
