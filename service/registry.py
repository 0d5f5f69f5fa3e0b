"""The loaded models: the one served under each name, and older ones kept while streams and tokens still use them.

Each model has its own engines and scheduler, so rows of different models never share a model call and one
model's queue never holds another's streams. A rescan of the repository (SIGHUP, `--watch-repository`) loads
a new or changed folder into a new `LoadedModel`, warms it up and installs it under its name: new streams
go to it. The model it replaces (or a removed folder's) stops taking new work except continuations of its
own contexts (resume tokens, sessions, Session streams), and is retired once its scheduler is idle; after
that its tokens are refused as foreign (FAILED_PRECONDITION).

Contexts are bound to a model file's sha256 and to the name they were made under: a token minted on one
name is refused on another (FAILED_PRECONDITION) even when both names serve the same file, and a token
sent without a name continues on its own model.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from charrnn.artifact import Manifest
from charrnn.quoting import quote
from charrnn.vocab import Vocabulary
from service.config import Limits
from service.context import Context
from service.errors import ForeignToken, ModelNotFound
from service.repository import ModelServing
from service.scheduler import Scheduler
from service.tokens import TokenCodec, token_model

log = logging.getLogger(__name__)


@dataclass(eq=False)  # identity: two loads of one file are two models
class LoadedModel:
    """One loaded artifact and everything bound to it: its served name, vocabulary, token codec, scheduler, and
    what serving it takes (limits, engine count)."""

    name: str
    manifest: Manifest
    vocab: Vocabulary
    codec: TokenCodec
    scheduler: Scheduler
    serving: ModelServing

    @property
    def sha256(self) -> str:
        return self.manifest.onnx.sha256

    @property
    def limits(self) -> Limits:
        return self.serving.limits


class ModelRegistry:
    """The served model of each name plus retiring ones; `default` answers requests that name none."""

    def __init__(self, models: list[LoadedModel], default: str):
        self._served = {m.name: m for m in sorted(models, key=lambda m: m.name)}
        self._loaded = list(self._served.values())  # served and retiring, oldest first
        if default not in self._served:
            raise ValueError(f"the default model {default!r} is not among the loaded ones")
        self.default = default

    def __iter__(self) -> Iterator[LoadedModel]:
        """Every loaded model, retiring ones included."""
        return iter(list(self._loaded))

    def __len__(self) -> int:
        return len(self._loaded)

    @property
    def current(self) -> LoadedModel:
        """The default model."""
        return self._served[self.default]

    def names(self) -> list[str]:
        """The served names, sorted."""
        return sorted(self._served)

    def served(self) -> list[LoadedModel]:
        """The served models (one per name), sorted by name."""
        return [self._served[name] for name in self.names()]

    def is_served(self, model: LoadedModel) -> bool:
        return self._served.get(model.name) is model

    def get(self, name: str | None = None) -> LoadedModel:
        """The model served as `name` (None or "", protobuf's unset: the default); ModelNotFound listing the
        served names."""
        return self.named(name) if name else self.current

    def named(self, name: str) -> LoadedModel:
        """The model served as `name`, which must be one ("" too is refused); ModelNotFound listing them."""
        model = self._served.get(name)
        if model is None:
            raise ModelNotFound(f"model {quote(name)} is not served here; served: {', '.join(self.names())}")
        return model

    def for_context(self, ctx: Context, name: str | None = None) -> LoadedModel:
        """The model a context continues on: its own (the one it was made on, under `name` when one is
        given), or the model served as `name` for the start of a text."""
        if ctx.model_sha256 is None:
            return self.get(name)
        asked = self.get(name) if name else None  # an unknown name is NOT_FOUND, whatever the state
        mine = [m for m in reversed(self._loaded) if m.sha256 == ctx.model_sha256]
        if asked is not None:
            same = next((m for m in mine if m.name == asked.name), None)
            if same is None:
                owner = f"model {mine[0].name!r}" if mine else f"model {ctx.model_sha256[:12]}…"
                raise ForeignToken(f"the state belongs to {owner}, not to {asked.name!r}: send it without `model`")
            return same
        if not mine:
            raise ForeignToken(
                f"the state belongs to model {ctx.model_sha256[:12]}…, which this server no longer serves "
                f"(serving: {', '.join(self.names())})"
            )
        return next((m for m in mine if self.is_served(m)), mine[0])

    def decode(self, token: bytes) -> Context:
        """Verify a token with the codec of the model it names (the default's refuses unknown models)."""
        sha = token_model(token) or ""
        model = next((m for m in self._loaded if m.sha256 == sha), self.current)
        return model.codec.decode(token)

    def install(self, model: LoadedModel) -> LoadedModel | None:
        """Serve `model` under its name; returns the one it replaces (still loaded until `retire_when_idle`)."""
        old = self._served.get(model.name)
        self._served[model.name] = model
        if model not in self._loaded:
            self._loaded.append(model)
        return old

    def remove(self, name: str) -> LoadedModel:
        """Stop serving `name` (not the default); returns its model (still loaded until `retire_when_idle`)."""
        if name == self.default:
            raise ValueError("the default model cannot be removed")
        return self._served.pop(name)

    async def retire_when_idle(self, model: LoadedModel, poll_s: float = 0.05) -> None:
        """Wait until nothing runs on `model` (and it is not served again), then drop it."""
        sched = model.scheduler
        while not self.is_served(model) and (sched.live or sched.queued):
            await asyncio.sleep(poll_s)
        if self.is_served(model):
            return
        self._loaded.remove(model)  # no await between the idle check and this: nothing new can join
        await sched.close()
        log.info("retired model %s (%s…)", model.name, model.sha256[:12])
