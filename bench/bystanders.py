"""Bystanders: seeded streams that run beside other traffic (a fuzz run, a soak) and must end with exactly the
text they produce alone.

Each bystander repeats one seeded request, over gRPC or HTTP (whole or streamed), until it is stopped. Its
reference is the same request run alone on the same server before the other traffic starts. A row's text
depends only on its own parameters and seed (batch invariance, docs/api.md), so any difference means another
request reached a bystander's row: a failure that was not isolated to its own row, a shared column
corrupted, an engine that died. The traffic beside them calls `witness()` per request it sends, which
counts how many went out while a bystander was in flight: the evidence that they shared batches.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from bench.completions import CompletionsClient, HttpRefusal
from charrnn.client import CharRNNError, Client

PROMPT = "def f(x):\n    return "
SHOWN = 300  # characters of an error's text kept in a report
KEPT = 20  # problems reported in full (the rest are counted)
ERROR_PAUSE_S = 0.2


@dataclass(frozen=True)
class Bystander:
    """One seeded request, repeated: `edge` is "grpc", "http" (one JSON body) or "sse" (server-sent events)."""

    name: str
    edge: str
    chars: int
    temperature: float
    seed: int
    top_k: int = 0
    top_p: float | None = None
    prompt: str = PROMPT

    def body(self) -> dict[str, Any]:
        """The HTTP request body (OpenAI's completions, `charrnn.top_k`)."""
        body: dict[str, Any] = {"prompt": self.prompt, "max_tokens": self.chars, "temperature": self.temperature}
        body |= {"seed": self.seed, "stream": self.edge == "sse", "charrnn": {"top_k": self.top_k}}
        return body if self.top_p is None else body | {"top_p": self.top_p}

    def options(self) -> dict[str, Any]:
        """The gRPC client's sampling options."""
        options: dict[str, Any] = {"temperature": self.temperature, "seed": self.seed, "top_k": self.top_k}
        return options if self.top_p is None else options | {"top_p": self.top_p}


def standard(chars: int) -> tuple[Bystander, ...]:
    """Four bystanders, one per edge and sampling path: plain, top-k, top-p and greedy."""
    return (
        Bystander("grpc-plain", "grpc", chars, temperature=0.9, seed=11),
        Bystander("grpc-top-k", "grpc", chars, temperature=1.3, seed=12, top_k=5),
        Bystander("sse-top-p", "sse", chars, temperature=1.0, seed=13, top_p=0.8),
        Bystander("http-greedy", "http", chars, temperature=0.0, seed=14),
    )


@dataclass
class Report:
    """What the bystanders saw: runs by name, every mismatch and error, and the witnessed overlap."""

    runs: Counter[str] = field(default_factory=Counter)
    mismatches: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    witnessed: int = 0  # requests the other traffic sent
    beside: int = 0  # ... while a bystander was in flight

    @property
    def exact(self) -> bool:
        return not self.mismatches and not self.errors

    def summary(self) -> dict[str, Any]:
        return {
            "runs": dict(self.runs),
            "mismatches": len(self.mismatches),
            "errors": len(self.errors),
            "first_problems": [p for p in self.mismatches + self.errors if p][:5],
            "requests_witnessed": self.witnessed,
            "requests_beside_a_bystander": self.beside,
            "exact": self.exact,
        }


def _parting(expected: str, got: str) -> str:
    """Where two texts part, for a report."""
    at = next((i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b), min(len(expected), len(got)))
    return f"at character {at} of {len(expected)}: expected {expected[at : at + 20]!r}, got {got[at : at + 20]!r}"


class Bystanders:
    """`start()` runs each bystander alone once (its reference), then all of them in loops until `stop()`."""

    def __init__(self, grpc_target: str, http_url: str, cast: tuple[Bystander, ...], timeout: float = 60.0):
        self.grpc_target, self.http_url, self.cast, self.timeout = grpc_target, http_url, cast, timeout
        self.references: dict[str, str] = {}
        self.report = Report()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> Bystanders:
        for b in self.cast:  # alone: nothing else runs on the server yet
            with self._connected(b) as run:
                self.references[b.name] = run()
        for b in self.cast:
            thread = threading.Thread(target=self._loop, args=(b,), name=f"bystander-{b.name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def witness(self) -> None:
        """The other traffic is sending a request now."""
        with self._lock:
            self.report.witnessed += 1
            self.report.beside += self._in_flight > 0

    def stop(self) -> Report:
        """Stop the loops, letting each finish (and check) the run it is in; the report."""
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 10)
        return self.report

    @contextlib.contextmanager
    def _connected(self, b: Bystander) -> Iterator[Callable[[], str]]:
        """A function that runs `b` once and returns its text, over a connection of its own."""
        if b.edge == "grpc":
            with Client(self.grpc_target, timeout=self.timeout) as client:
                yield lambda: client.generate(b.prompt, max_chars=b.chars, **b.options()).text()
            return
        http = CompletionsClient(self.http_url, self.timeout)
        try:
            yield lambda: http.complete(b.body()).text
        finally:
            http.close()

    def _loop(self, b: Bystander) -> None:
        reference = self.references[b.name]
        with self._connected(b) as run:
            while not self._stop.is_set():
                with self._lock:
                    self._in_flight += 1
                try:
                    text = run()
                except (CharRNNError, HttpRefusal, OSError, ValueError, KeyError) as exc:
                    self._failed(f"{b.name}: {type(exc).__name__}: {str(exc)[:SHOWN]}")
                    continue
                finally:
                    with self._lock:
                        self._in_flight -= 1
                with self._lock:
                    self.report.runs[b.name] += 1
                if text != reference:
                    self._failed(f"{b.name}: {_parting(reference, text)}", mismatch=True)

    def _failed(self, what: str, mismatch: bool = False) -> None:
        """Record a problem (the first few in full) and pause, so a dead server is not asked in a busy loop."""
        with self._lock:
            problems = self.report.mismatches if mismatch else self.report.errors
            problems.append(what if len(problems) < KEPT else "")
        self._stop.wait(ERROR_PAUSE_S)
