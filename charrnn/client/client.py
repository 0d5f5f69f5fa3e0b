"""`Client`: one channel to one server (or one balanced target), typed calls, streamed generations."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Unpack

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from charrnn.client.balancing import Balancing
from charrnn.client.channel import open_channel
from charrnn.client.errors import CharRNNError
from charrnn.client.options import GenerationOptions, Unit, add_units, sampling_message
from charrnn.client.results import GenerationResult, ModelInfo, ResumePoint, ScoreResult
from charrnn.protocol import CELL_TYPES, PRECISION_TYPES, UNKNOWN_POLICIES, name_of
from charrnn.v1 import charrnn_pb2 as pb
from charrnn.v1 import charrnn_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from charrnn.client.session import SessionClient


class Generation(Iterator[str]):
    """Iterate for text chunks (or `chunks()` for text with watched values); `result` is set once the
    stream ends. `cancel()` stops it. With checkpoints requested, `checkpoint` is the latest resume point
    received; it covers all the text returned so far."""

    def __init__(self, responses: Iterator[Any], call: grpc.Call | None = None, units: int = 0):
        self._responses = responses
        self._call = call
        self.units = units
        self.result: GenerationResult | None = None
        self.checkpoint: ResumePoint | None = None
        # One tuple per character received so far: the watched units' values after the model read it.
        self.activations: list[tuple[float, ...]] = []

    def __next__(self) -> str:
        return self._next()[0]

    def chunks(self) -> Iterator[tuple[str, list[tuple[float, ...]]]]:
        """The rest of the stream as (text, one tuple of watched values per character of text)."""
        while True:
            try:
                yield self._next()
            except StopIteration:
                return

    def _next(self) -> tuple[str, list[tuple[float, ...]]]:
        while True:
            try:
                response = next(self._responses)
            except grpc.RpcError as exc:
                raise CharRNNError.wrap(exc) from None
            if response.HasField("checkpoint"):
                cp = response.checkpoint
                self.checkpoint = ResumePoint(cp.generated_chars, cp.resume_token)
            if response.HasField("done"):
                self.result = GenerationResult.from_proto(response.done)
                if not response.text:
                    raise StopIteration
            if response.text:
                return str(response.text), self._rows(response.activations)

    def _rows(self, flat: Sequence[float]) -> list[tuple[float, ...]]:
        n = self.units
        rows = [tuple(flat[i : i + n]) for i in range(0, len(flat), n)] if n else []
        self.activations.extend(rows)
        return rows

    def text(self) -> str:
        """Consume the rest of the stream and return it joined."""
        return "".join(self)

    def cancel(self) -> None:
        if self._call is not None:
            self._call.cancel()


class Client:
    """Synchronous client for charrnn.v1.CharRNN (thread-safe: one channel, many calls).

    A target with several replicas (`"10.0.0.1:50051,10.0.0.2:50051"`, `"dns:///name:50051"`) spreads the
    calls over them (round robin); each stream stays on the replica that started it.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = None,
        tls: bool = False,
        tls_ca: bytes | None = None,
        tls_cert: bytes | None = None,
        tls_key: bytes | None = None,
        auth_token: str | None = None,
        balancing: Balancing | None = None,
    ):
        """Target forms, balancing, TLS and authentication: see `charrnn.client.channel.open_channel`."""
        self.target = target
        self.timeout = timeout
        balancing = balancing or Balancing()
        self._open = functools.partial(
            open_channel, target, tls=tls, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, auth_token=auth_token
        )
        self._channel = self._open(balancing=balancing)
        # Health is read on a pick_first channel: round_robin keeps a server that is not SERVING out of its
        # rotation, so through it a draining server could not say so.
        self._health_balancing = dataclasses.replace(balancing, lb_policy="pick_first")
        self._health_channel: grpc.Channel | None = None
        self._stub = pb_grpc.CharRNNStub(self._channel)

    def close(self) -> None:
        self._channel.close()
        if self._health_channel is not None:
            self._health_channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def generate(
        self,
        prompt: str = "",
        *,
        max_chars: int = 0,
        resume_token: bytes | None = None,
        session_id: str | None = None,
        create_session: bool = False,
        watch: Sequence[Unit] = (),
        timeout: float | None = None,
        checkpoint_every_chars: int = 0,
        model: str | None = None,
        **options: Unpack[GenerationOptions],
    ) -> Generation:
        """Stream a generation; `watch` names hidden units whose per-character values to stream too;
        `checkpoint_every_chars` asks for mid-stream resume tokens (`Generation.checkpoint`); `model` a served
        model by name (`list_models`; None: the server's default, or the resume token's or session's own)."""
        request = pb.GenerateRequest(
            model=model or "",
            prompt=prompt,
            max_chars=max_chars,
            sampling=sampling_message(options),
            stop=list(options.get("stop", ())),
            create_session=create_session,
            checkpoint_every_chars=checkpoint_every_chars,
        )
        add_units(request.activations, watch)
        if resume_token is not None:
            request.resume_token = resume_token
        elif session_id is not None:
            request.session_id = session_id
        call = self._stub.Generate(request, timeout=timeout if timeout is not None else self.timeout)
        return Generation(call, call, len(watch))

    def score(
        self,
        text: str,
        *,
        resume_token: bytes | None = None,
        session_id: str | None = None,
        model: str | None = None,
    ) -> ScoreResult:
        request = pb.ScoreRequest(text=text, model=model or "")
        if resume_token is not None:
            request.resume_token = resume_token
        elif session_id is not None:
            request.session_id = session_id
        try:
            r = self._stub.Score(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise CharRNNError.wrap(exc) from None
        return ScoreResult(list(r.logprobs), r.first_scored, r.total_nats, r.bits_per_char, r.resume_token)

    def info(self, model: str | None = None) -> ModelInfo:
        """What the served model `model` is (None: the default)."""
        try:
            r = self._stub.GetModelInfo(pb.GetModelInfoRequest(model=model or ""), timeout=self.timeout)
        except grpc.RpcError as exc:
            raise CharRNNError.wrap(exc) from None
        return _model_info(r)

    def list_models(self) -> list[ModelInfo]:
        """Every served model, sorted by `served_name`; `default` marks the one requests without `model` get."""
        try:
            r = self._stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout)
        except grpc.RpcError as exc:
            raise CharRNNError.wrap(exc) from None
        return [_model_info(m) for m in r.models]

    def health(self, service: str = "") -> str:
        """The health status name ("SERVING", "NOT_SERVING", ...) of `service` ("" = the server), as the
        server (the first address of a list that answers) reports it, whatever the balancing policy."""
        if self._health_channel is None:
            self._health_channel = self._open(balancing=self._health_balancing)
        stub = health_pb2_grpc.HealthStub(self._health_channel)
        try:
            r = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout or 5.0)
        except grpc.RpcError as exc:
            raise CharRNNError.wrap(exc) from None
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(r.status))

    def session(self, model: str | None = None) -> SessionClient:
        """Open a bidirectional Session on the served model `model` (None: the default): the server keeps the
        state while it is open."""
        from charrnn.client.session import SessionClient

        return SessionClient(self._stub, model)


def _model_info(r: pb.GetModelInfoResponse) -> ModelInfo:
    """A GetModelInfo answer (alone or in ListModels) as a ModelInfo."""
    return ModelInfo(
        name=r.name,
        version=r.version,
        cell=name_of(CELL_TYPES, r.cell),
        layers=r.layers,
        hidden_size=r.hidden_size,
        embedding_size=r.embedding_size,
        vocab_size=r.vocab_size,
        parameters=r.parameters,
        vocabulary=list(r.vocabulary),
        unknown_policy=name_of(UNKNOWN_POLICIES, r.unknown_policy),
        unknown_char=r.unknown_char,
        val_bits_per_char=r.val_bits_per_char if r.HasField("val_bits_per_char") else None,
        sha256=r.sha256,
        limits={f.name: v for f, v in r.limits.ListFields()},
        precision=name_of(PRECISION_TYPES, r.precision),
        served_name=r.served_name,
        default=r.default,
    )
