"""`FailoverClient`: one generation across replicas, continued from its last resume point when one fails."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Unpack

import grpc

from charrnn.client.client import Client, Generation
from charrnn.client.errors import CharRNNError
from charrnn.client.options import GenerationOptions
from charrnn.client.results import GenerationResult, ResumePoint

log = logging.getLogger(__name__)

# Codes a FailoverClient continues elsewhere: the replica went away or is draining.
FAILOVER_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})


@dataclass(frozen=True)
class _Request:
    """What a resumable generation asks for; a continuation changes only the start and the length."""

    prompt: str
    max_chars: int
    options: GenerationOptions
    resume_token: bytes | None
    checkpoint_every_chars: int
    timeout: float | None

    @property
    def reproducible(self) -> bool:
        """Whether a restart from the beginning gives the same text (seeded or greedy)."""
        return self.options.get("seed") is not None or self.options.get("temperature") == 0


class ResumableGeneration(Iterator[str]):
    """One generation across replicas: on a failover code it continues from the last resume point on the
    next target, drops the characters the caller already has (checking they match) and goes on.

    Exact because sampling is counter-based (seed, position) and the resume point carries both.
    """

    def __init__(self, owner: FailoverClient, request: _Request):
        self._owner = owner
        self._request = request
        self._checkpoint: ResumePoint | None = None  # absolute: characters of the whole generation
        self._base = 0  # characters before the current attempt's start
        self._delivered: list[str] = []  # what the caller has (at most max_chars characters)
        self._expect = ""  # text the current attempt must repeat before new text
        self.delivered = 0
        self.failovers = 0
        self.resumed_at: list[int] = []  # per failover: the characters its resume point covered
        self.result: GenerationResult | None = None
        self._gen = self._start()

    def _start(self) -> Generation:
        r, cp = self._request, self._checkpoint
        client = self._owner.current()
        common: dict[str, Any] = {"timeout": r.timeout, "checkpoint_every_chars": r.checkpoint_every_chars}
        if cp is None:
            return client.generate(r.prompt, max_chars=r.max_chars, resume_token=r.resume_token, **common, **r.options)
        # The token carries the generator (seed and position): a seed sent again would restart it.
        options: GenerationOptions = {**r.options, "seed": None}
        return client.generate("", max_chars=r.max_chars - cp.chars, resume_token=cp.resume_token, **common, **options)

    def _fail_over(self, exc: CharRNNError) -> None:
        if exc.code not in FAILOVER_CODES or self.failovers >= self._owner.max_failovers:
            raise exc
        if self._checkpoint is None and self.delivered and not self._request.reproducible:
            raise exc  # an unseeded stream cut before its first resume point cannot be continued exactly
        self.failovers += 1
        target = self._owner.advance()
        covered = self._checkpoint.chars if self._checkpoint is not None else 0
        log.warning("stream broke after %d chars (%s); resuming at %d on %s", self.delivered, exc, covered, target)
        self.resumed_at.append(covered)
        self._base = covered
        self._expect = "".join(self._delivered)[covered:]
        self._gen = self._start()

    def __next__(self) -> str:
        while True:
            try:
                text = next(self._gen)
            except CharRNNError as exc:
                self._fail_over(exc)
                continue
            except StopIteration:
                self._finish()
                raise
            if self._expect:
                text = self._repeat(text)
            if self._gen.checkpoint is not None:
                chars = self._base + self._gen.checkpoint.chars
                if self._checkpoint is None or chars > self._checkpoint.chars:
                    self._checkpoint = ResumePoint(chars, self._gen.checkpoint.resume_token)
            if text:
                self.delivered += len(text)
                self._delivered.append(text)
                return text

    def _repeat(self, text: str) -> str:
        """Drop the start of `text` that repeats what the caller already has; it must match exactly."""
        n = min(len(text), len(self._expect))
        if text[:n] != self._expect[:n]:
            raise CharRNNError(grpc.StatusCode.DATA_LOSS, "the resumed stream diverged from the text delivered")
        self._expect = self._expect[n:]
        return text[n:]

    def _finish(self) -> None:
        result = self._gen.result
        if result is not None:
            self.result = dataclasses.replace(result, generated_chars=self._base + result.generated_chars)

    def text(self) -> str:
        return "".join(self)

    def cancel(self) -> None:
        self._gen.cancel()


class FailoverClient:
    """Clients for several replicas of the same model and HMAC key; generations survive losing one.

    `generate` requests resume points every `checkpoint_every_chars` and, when the stream breaks with
    UNAVAILABLE, resumes on the next target (round robin, at most `max_failovers` times per call).
    A generation that starts from a server-side session cannot move and is not offered here.
    """

    def __init__(self, targets: Sequence[str], *, max_failovers: int = 3, **options: Any):
        if not targets:
            raise ValueError("FailoverClient needs at least one target")
        self.targets = list(targets)
        self.max_failovers = max_failovers
        self._options = options
        self._clients: dict[str, Client] = {}
        self._index = 0

    def current(self) -> Client:
        target = self.targets[self._index]
        if target not in self._clients:
            self._clients[target] = Client(target, **self._options)
        return self._clients[target]

    def advance(self) -> str:
        """Move to the next target; returns it."""
        self._index = (self._index + 1) % len(self.targets)
        return self.targets[self._index]

    def generate(
        self,
        prompt: str = "",
        *,
        max_chars: int,
        resume_token: bytes | None = None,
        checkpoint_every_chars: int = 256,
        timeout: float | None = None,
        **options: Unpack[GenerationOptions],
    ) -> ResumableGeneration:
        """Like `Client.generate`; `max_chars` is required (the remainder after a resume point is sent)."""
        if max_chars <= 0:
            raise ValueError("max_chars must be set: a resumed stream asks for what is left of it")
        options["stop"] = tuple(options.get("stop", ()))
        request = _Request(prompt, max_chars, options, resume_token, checkpoint_every_chars, timeout)
        return ResumableGeneration(self, request)

    def close(self) -> None:
        for client in self._clients.values():
            client.close()

    def __enter__(self) -> FailoverClient:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
