"""`FailoverClient`: generations spread over replicas, each continued from its last resume point on another
replica when its own fails."""

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
    model: str | None

    @property
    def reproducible(self) -> bool:
        """Whether a restart from the beginning gives the same text (seeded or greedy)."""
        return self.options.get("seed") is not None or self.options.get("temperature") == 0


class ResumableGeneration(Iterator[str]):
    """One generation across replicas: on a failover code it continues from the last resume point on
    another replica, drops the characters the caller already has (checking they match) and goes on.

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
        client = self._owner.client
        common: dict[str, Any] = {"timeout": r.timeout, "checkpoint_every_chars": r.checkpoint_every_chars,
                                  "model": r.model}  # fmt: skip
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
        covered = self._checkpoint.chars if self._checkpoint is not None else 0
        log.warning("stream broke after %d chars (%s); resuming at %d", self.delivered, exc, covered)
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
    """Generations over several replicas of the same model and HMAC key that survive losing one.

    `targets`: one target that names several replicas (`"IP:PORT,IP:PORT"`, `"dns:///NAME:PORT"`) or a
    sequence of IP:PORT addresses, which are joined into that list. All calls share one channel that
    balances over the replicas (round robin unless `balancing` says otherwise), so generations spread over
    them. `generate` requests resume points every `checkpoint_every_chars`; when a stream breaks with
    UNAVAILABLE it continues from the last one through the same channel, which by then has taken the
    broken replica out of its rotation (at most `max_failovers` times per call); under pick_first the
    continuation reaches another replica only once the failed one's connection is gone (a crash, not a
    drain). `options` are `Client`'s.
    A generation that starts from a server-side session cannot move and is not offered here.
    """

    def __init__(self, targets: str | Sequence[str], *, max_failovers: int = 3, **options: Any):
        target = targets if isinstance(targets, str) else ",".join(targets)
        if not target:
            raise ValueError("FailoverClient needs at least one target")
        self.target = target
        self.max_failovers = max_failovers
        self.client = Client(target, **options)

    def generate(
        self,
        prompt: str = "",
        *,
        max_chars: int,
        resume_token: bytes | None = None,
        checkpoint_every_chars: int = 256,
        timeout: float | None = None,
        model: str | None = None,
        **options: Unpack[GenerationOptions],
    ) -> ResumableGeneration:
        """Like `Client.generate`; `max_chars` is required (the remainder after a resume point is sent)."""
        if max_chars <= 0:
            raise ValueError("max_chars must be set: a resumed stream asks for what is left of it")
        options["stop"] = tuple(options.get("stop", ()))
        request = _Request(prompt, max_chars, options, resume_token, checkpoint_every_chars, timeout, model)
        return ResumableGeneration(self, request)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> FailoverClient:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
