"""The loaded models: the current one, and older ones kept while streams and tokens still use them.

A hot reload (SIGHUP) loads the artifact directory again into a new `LoadedModel` with its own engine and
scheduler (its rows advance in their own ONNX Runtime calls), warms it up and makes it current: new
streams go to it. The previous model stops taking new work except continuations of its own contexts
(resume tokens, sessions, Session streams), and is retired once its scheduler is idle; after that its
tokens are refused as foreign (FAILED_PRECONDITION).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from charrnn.artifact import Manifest
from charrnn.vocab import Vocabulary
from service.context import Context
from service.errors import ForeignToken
from service.scheduler import Scheduler
from service.tokens import TokenCodec, token_model

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """One loaded artifact and everything bound to it: its vocabulary, token codec and scheduler."""

    manifest: Manifest
    vocab: Vocabulary
    codec: TokenCodec
    scheduler: Scheduler

    @property
    def sha256(self) -> str:
        return self.manifest.onnx.sha256


class ModelRegistry:
    """The current model plus retiring ones, by sha256 of the model file."""

    def __init__(self, current: LoadedModel):
        self.current = current
        self._by_sha = {current.sha256: current}

    def __iter__(self) -> Iterator[LoadedModel]:
        return iter(list(self._by_sha.values()))

    def __len__(self) -> int:
        return len(self._by_sha)

    def for_context(self, ctx: Context) -> LoadedModel:
        """The model a context continues on (the current one for the start of a text)."""
        if ctx.model_sha256 is None:
            return self.current
        model = self._by_sha.get(ctx.model_sha256)
        if model is None:
            raise ForeignToken(
                f"the state belongs to model {ctx.model_sha256[:12]}…, which this server no longer serves "
                f"(now {self.current.sha256[:12]}…)"
            )
        return model

    def decode(self, token: bytes) -> Context:
        """Verify a token with the codec of the model it names (the current one's refuses unknown models)."""
        model = self._by_sha.get(token_model(token) or "", self.current)
        return model.codec.decode(token)

    def switch(self, model: LoadedModel) -> LoadedModel:
        """Make `model` current; returns the previous one (still loaded until `retire_when_idle`)."""
        old, self.current = self.current, model
        self._by_sha[model.sha256] = model
        return old

    async def retire_when_idle(self, model: LoadedModel, poll_s: float = 0.05) -> None:
        """Wait until nothing runs on `model` (and it is not current again), then drop it."""
        sched = model.scheduler
        while model is not self.current and (sched.live or sched.queued):
            await asyncio.sleep(poll_s)
        if model is self.current:
            return
        del self._by_sha[model.sha256]  # no await between the idle check and this: nothing new can join
        await sched.close()
        log.info("retired model %s…", model.sha256[:12])
