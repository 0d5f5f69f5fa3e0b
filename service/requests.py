"""Requests in the service's own terms, validated against the limits: the one place every edge (gRPC, HTTP)
turns what a client asked for into a `Job`.

An edge converts its wire format into `GenerationRequest` (plain values; None where the client left a
field unset) and calls `Validator.job`; every refusal is an `InvalidRequest` whose message names the
parameter and the limit, so all edges refuse the same requests with the same words.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from service.config import Limits
from service.context import Context
from service.errors import InvalidRequest
from service.registry import LoadedModel
from service.sampling import SamplingParams
from service.stream import Job, WatchedUnit

MAX_TEMPERATURE = 100.0


@dataclass(frozen=True)
class GenerationRequest:
    """What a client asked for, before validation."""

    prompt: str = ""
    max_chars: int = 0  # 0: the server's default
    temperature: float | None = None  # None: 1.0
    top_k: int = 0
    top_p: float | None = None  # None: off
    seed: int | None = None  # None: continue the context's generator, or pick one
    stop: Sequence[str] = ()
    watch: Sequence[tuple[str, int, int]] = ()  # hidden units (kind "h"/"c", layer, index)
    checkpoint_every: int = 0


class Validator:
    """Checks requests against the limits and encodes their text with the model's vocabulary."""

    def __init__(self, limits: Limits):
        self.limits = limits

    def encode(self, model: LoadedModel, text: str, limit: int, what: str) -> tuple[int, ...]:
        if len(text) > limit:
            raise InvalidRequest(f"{what} has {len(text)} characters; the limit is {limit} ({what} limit)")
        return tuple(model.vocab.encode(text).tolist())

    def job(self, model: LoadedModel, ctx: Context, r: GenerationRequest) -> Job:
        """A validated Job continuing `ctx` on `model`; InvalidRequest naming the first bad parameter."""
        ids = self.encode(model, r.prompt, self.limits.max_prompt_chars, "prompt")
        if not ids and ctx.logits is None:
            raise InvalidRequest("prompt is empty and there is no state to continue from")
        return Job(
            ctx,
            ids,
            self.max_chars(r.max_chars),
            self.sampling(r.temperature, r.top_k, r.top_p),
            self.stops(r.stop),
            self.seed(r.seed),
            self.watch(model, r.watch),
            self.checkpoint_every(r.checkpoint_every),
        )

    def sampling(self, temperature: float | None, top_k: int, top_p: float | None) -> SamplingParams:
        temperature = 1.0 if temperature is None else temperature
        if not (math.isfinite(temperature) and 0.0 <= temperature <= MAX_TEMPERATURE):
            raise InvalidRequest(f"temperature must be in [0, {MAX_TEMPERATURE:g}], got {temperature}")
        top_p = 1.0 if top_p is None else top_p
        if not (math.isfinite(top_p) and 0.0 < top_p <= 1.0):
            raise InvalidRequest(f"top_p must be in (0, 1], got {top_p}")
        if top_k < 0:
            raise InvalidRequest(f"top_k must be 0 (off) or more, got {top_k}")
        return SamplingParams(float(temperature), int(top_k), float(top_p))

    @staticmethod
    def seed(seed: int | None) -> int | None:
        if seed is not None and not 0 <= seed < 2**64:
            raise InvalidRequest(f"seed must be in [0, 2**64 - 1], got {seed}")
        return seed

    def max_chars(self, requested: int) -> int:
        lim = self.limits
        if requested < 0:
            raise InvalidRequest(f"max_chars must be 0 (the default) or more, got {requested}")
        if requested > lim.max_request_chars:
            raise InvalidRequest(
                f"max_chars {requested} exceeds the limit of {lim.max_request_chars} (max_request_chars)"
            )
        return requested or lim.default_max_chars

    def stops(self, stops: Sequence[str]) -> tuple[str, ...]:
        lim = self.limits
        if len(stops) > lim.max_stop_strings:
            raise InvalidRequest(f"{len(stops)} stop strings; the limit is {lim.max_stop_strings} (max_stop_strings)")
        for stop in stops:
            if not stop or len(stop) > lim.max_stop_chars:
                raise InvalidRequest(f"stop strings must have 1 to {lim.max_stop_chars} characters (max_stop_chars)")
        return tuple(stops)

    def watch(self, model: LoadedModel, units: Sequence[tuple[str, int, int]]) -> tuple[WatchedUnit, ...]:
        """The watched units as state/layer/index, refusing any the model lacks or more than the limit."""
        limit = self.limits.max_watched_units
        if len(units) > limit:
            raise InvalidRequest(f"{len(units)} watched units; the limit is {limit} (max_watched_units)")
        kinds = [s.kind for s in model.manifest.onnx.states]
        layers, hidden = model.manifest.state_shape
        out = []
        for i, (kind, layer, index) in enumerate(units):
            name = f"watched unit {i} ({kind}:{layer}:{index})"
            if kind not in kinds:
                cell, have = model.manifest.model.cell, "/".join(kinds)
                raise InvalidRequest(f"{name}: the {cell} model has no such state (it has {have})")
            if not (0 <= layer < layers and 0 <= index < hidden):
                raise InvalidRequest(f"{name}: out of range (layers {layers}, hidden_size {hidden})")
            out.append(WatchedUnit(kinds.index(kind), layer, index))
        return tuple(out)

    def checkpoint_every(self, every: int) -> int:
        minimum = self.limits.min_checkpoint_chars
        if every < 0 or 0 < every < minimum:
            raise InvalidRequest(
                f"checkpoint_every_chars {every} is below the limit of {minimum} (min_checkpoint_chars)"
            )
        return every
