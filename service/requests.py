"""Requests in the service's own terms, validated against the limits: the one place every edge (gRPC, HTTP)
turns what a client asked for into a `Job`.

An edge converts its wire format into `GenerationRequest` (plain values; None where the client left a
field unset) and calls `Validator.job`; every refusal is an `InvalidRequest` whose message names the
parameter and the limit, so all edges refuse the same requests with the same words. An edge whose wire
names differ (HTTP's `max_tokens`) gives the Validator its names: messages and `param` use them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from charrnn.protocol import MAX_SEED, STATE_KINDS
from charrnn.quoting import quote
from charrnn.vocab import UnknownCharactersError
from service.config import Limits
from service.context import Context
from service.errors import InvalidRequest
from service.registry import LoadedModel
from service.sampling import SamplingParams
from service.stream import Job, WatchedUnit

# Every number a request carries is range-checked here, against the type the engine stores it in, before it
# reaches a scheduler: both edges share these bounds (gRPC's wire types could not carry more; JSON can).
MAX_TEMPERATURE = 100.0
# Below this (the smallest normal float32; subnormal temperatures make a row's logits overflow when divided by
# them) a temperature samples greedily, as 0 does.
MIN_TEMPERATURE = float(np.finfo(np.float32).tiny)
MAX_UINT32 = 2**32 - 1  # top_k and checkpoint_every_chars: gRPC's uint32, held in the engine's int64 columns


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

    def __init__(self, limits: Limits, names: Mapping[str, str] | None = None):
        self.limits = limits
        self._names = dict(names or {})  # GenerationRequest field -> the edge's parameter name, where they differ

    def name(self, field: str) -> str:
        """The edge's name for a request field (or for a text, like "prompt")."""
        return self._names.get(field, field)

    def _refuse(self, field: str, message: str) -> InvalidRequest:
        return InvalidRequest(message, param=self.name(field))

    def encode(self, model: LoadedModel, text: str, limit: int, what: str) -> tuple[int, ...]:
        if len(text) > limit:
            n = self.name(what)
            raise self._refuse(what, f"{n} has {len(text)} characters; the limit is {limit} ({n} limit)")
        try:
            return tuple(model.vocab.encode(text).tolist())
        except UnknownCharactersError as exc:
            raise self._refuse(what, f"{self.name(what)}: {exc}") from exc

    def job(self, model: LoadedModel, ctx: Context, r: GenerationRequest) -> Job:
        """A validated Job continuing `ctx` on `model`; InvalidRequest naming the first bad parameter."""
        ids = self.encode(model, r.prompt, self.limits.max_prompt_chars, "prompt")
        if not ids and ctx.logits is None:
            raise self._refuse("prompt", f"{self.name('prompt')} is empty and there is no state to continue from")
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
        t = self._float("temperature", 1.0 if temperature is None else temperature)
        if not (math.isfinite(t) and 0.0 <= t <= MAX_TEMPERATURE):
            n = self.name("temperature")
            raise self._refuse("temperature", f"{n} must be in [0, {MAX_TEMPERATURE:g}], got {t}")
        p = self._float("top_p", 1.0 if top_p is None else top_p)
        if not (math.isfinite(p) and 0.0 < p <= 1.0):
            raise self._refuse("top_p", f"{self.name('top_p')} must be in (0, 1], got {p}")
        if not 0 <= top_k <= MAX_UINT32:
            raise self._refuse("top_k", f"{self.name('top_k')} must be in [0, {MAX_UINT32}] (0 = off), got {top_k}")
        return SamplingParams(t if t >= MIN_TEMPERATURE else 0.0, int(top_k), p)

    def _float(self, field: str, value: float) -> float:
        """`value` as a float; an integer too large for one is refused (never an OverflowError)."""
        try:
            return float(value)
        except OverflowError:
            raise self._refuse(field, f"{self.name(field)} is too large") from None

    def seed(self, seed: int | None) -> int | None:
        if seed is not None and not 0 <= seed <= MAX_SEED:
            raise self._refuse("seed", f"{self.name('seed')} must be in [0, 2**64 - 1], got {seed}")
        return seed

    def max_chars(self, requested: int) -> int:
        lim, n = self.limits, self.name("max_chars")
        if requested < 0:
            raise self._refuse("max_chars", f"{n} must be 0 (the default) or more, got {requested}")
        if requested > lim.max_request_chars:
            raise self._refuse(
                "max_chars", f"{n} {requested} exceeds the limit of {lim.max_request_chars} (max_request_chars)"
            )
        return requested or lim.default_max_chars

    def stops(self, stops: Sequence[str]) -> tuple[str, ...]:
        lim = self.limits
        if len(stops) > lim.max_stop_strings:
            raise self._refuse(
                "stop", f"{len(stops)} stop strings; the limit is {lim.max_stop_strings} (max_stop_strings)"
            )
        for stop in stops:
            if not stop or len(stop) > lim.max_stop_chars:
                raise self._refuse(
                    "stop", f"stop strings must have 1 to {lim.max_stop_chars} characters (max_stop_chars)"
                )
        return tuple(stops)

    def watch(self, model: LoadedModel, units: Sequence[tuple[str, int, int]]) -> tuple[WatchedUnit, ...]:
        """The watched units as state/layer/index, refusing any the model lacks or more than the limit."""
        limit = self.limits.max_watched_units
        if len(units) > limit:
            raise self._refuse("watch", f"{len(units)} watched units; the limit is {limit} (max_watched_units)")
        kinds = [s.kind for s in model.manifest.onnx.states]
        layers, hidden = model.manifest.state_shape
        out = []
        for i, (kind, layer, index) in enumerate(units):
            shown = kind if kind in STATE_KINDS else quote(kind)  # a name of the protocol's, or client text
            name = f"watched unit {i} ({shown}:{layer}:{index})"
            if kind not in kinds:
                cell, have = model.manifest.model.cell, "/".join(kinds)
                raise self._refuse("watch", f"{name}: the {cell} model has no such state (it has {have})")
            if not (0 <= layer < layers and 0 <= index < hidden):
                raise self._refuse("watch", f"{name}: out of range (layers {layers}, hidden_size {hidden})")
            out.append(WatchedUnit(kinds.index(kind), layer, index))
        return tuple(out)

    def checkpoint_every(self, every: int) -> int:
        minimum = self.limits.min_checkpoint_chars
        if every < 0 or 0 < every < minimum:
            message = f"checkpoint_every_chars {every} is below the limit of {minimum} (min_checkpoint_chars)"
            raise self._refuse("checkpoint_every", message)
        if every > MAX_UINT32:
            raise self._refuse("checkpoint_every", f"checkpoint_every_chars must be at most {MAX_UINT32}, got {every}")
        return every
