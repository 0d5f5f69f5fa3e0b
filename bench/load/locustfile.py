"""Locust load test for charrnn over gRPC (no HTTP): streaming, session and scoring users.

    locust -f bench/load/locustfile.py --headless --host 127.0.0.1:50051 -u 4 -r 4 -t 10s

Request events (type "grpc"), so Locust's tables and charts keep them apart:
- "Generate ttfc": time to the first character; "Generate stream": the whole stream (its length
  is the characters received); "Generate chars/s": the stream's characters per second, reported
  in the response-time column (a rate, not milliseconds).
- "Session feed" / "Session generate" / "Session token" / "Session resume": one bidirectional
  stream: feed text, generate, take a resume token, load it back and generate again.
- "Score": a unary Score call.

Options (also environment variables, e.g. CHARRNN_LOAD_MAX_CHARS=50,400): user weights, the mix
of generation lengths, prompts, sampling parameters and think time; see `--help`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Importing locust monkey-patches the standard library for gevent; grpc must then be switched to gevent
# (Locust's concurrency) before any channel exists, i.e. before charrnn.client creates one.
from locust import User, events, task
from locust.env import Environment

import grpc.experimental.gevent as grpc_gevent  # isort: skip

grpc_gevent.init_gevent()

from charrnn.client import CharRNNError, Client  # noqa: E402

DEFAULT_PROMPTS = (
    "def fib(n):\n",
    "import os\n",
    "class Stack:\n    def __init__(self):\n",
    "for i in range(10):\n",
    "    return ",
    "# Utility functions for parsing\n",
    'if __name__ == "__main__":\n',
)


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    def add(flag: str, default: Any, help: str, type: Any = str) -> None:
        env = "CHARRNN_LOAD_" + flag.lstrip("-").upper().replace("-", "_")
        parser.add_argument(flag, type=type, default=default, env_var=env, help=f"{help} [env {env}]")

    add("--stream-weight", 3, "weight of the streaming (Generate) user", int)
    add("--session-weight", 1, "weight of the Session (feed/generate/resume) user", int)
    add("--score-weight", 1, "weight of the Score user", int)
    add("--max-chars", "50,200,800", "generation lengths, picked uniformly per request (comma-separated)")
    add("--prompts-file", "", "prompts, one per line (default: a few code-like prompts)")
    add("--temperature", 0.8, "sampling temperature (0 = greedy)", float)
    add("--top-k", 0, "top-k (0 = off)", int)
    add("--top-p", 1.0, "nucleus mass (1 = off)", float)
    add("--wait-max", 0.5, "think time between a user's tasks: uniform in [0, wait-max] seconds", float)
    add("--rpc-timeout", 60.0, "deadline per call, seconds", float)


class _Mix:
    """The parsed options, shared by every user."""

    def __init__(self, options: Any):
        self.lengths = [int(x) for x in str(options.max_chars).split(",") if x.strip()]
        prompts = Path(options.prompts_file).read_text().splitlines() if options.prompts_file else []
        self.prompts = [p.replace("\\n", "\n") for p in prompts if p] or list(DEFAULT_PROMPTS)
        self.sampling = {"temperature": options.temperature, "top_k": options.top_k, "top_p": options.top_p}
        self.timeout = float(options.rpc_timeout)
        self.wait_max = float(options.wait_max)


MIX: _Mix | None = None


@events.init.add_listener
def _configure(environment: Environment, **_: Any) -> None:
    global MIX
    options = environment.parsed_options
    if options is None:  # used as a library, not from the locust CLI
        return
    MIX = _Mix(options)
    weights: dict[type[User], int] = {
        StreamUser: options.stream_weight,
        SessionUser: options.session_weight,
        ScoreUser: options.score_weight,
    }
    for cls, weight in weights.items():
        cls.weight = weight
    # Locust cannot spawn a class of weight 0: leave those out.
    environment.user_classes[:] = [c for c in environment.user_classes if weights.get(c, 1) > 0]


class CharRNNUser(User):
    """A gRPC client per user; `timed` turns a call into a Locust request event."""

    abstract = True

    def on_start(self) -> None:
        assert self.host, "give the server as --host HOST:PORT"
        self.mix = MIX or _Mix(self.environment.parsed_options)
        target = self.host.removeprefix("grpc://").removeprefix("http://").rstrip("/")
        self.client = Client(target, timeout=self.mix.timeout)

    def on_stop(self) -> None:
        self.client.close()

    def wait_time(self) -> float:
        return random.uniform(0.0, self.mix.wait_max)

    def fire(self, name: str, response_time: float, length: int = 0, exception: Exception | None = None) -> None:
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=response_time,
            response_length=length,
            exception=exception,
            context={},
        )

    @contextmanager
    def timed(self, name: str) -> Iterator[dict[str, int]]:
        """Time the block as one request; set out["length"]; a CharRNNError is a failure, not a crash."""
        out = {"length": 0}
        start = time.perf_counter()
        try:
            yield out
        except CharRNNError as exc:
            self.fire(name, (time.perf_counter() - start) * 1000, exception=exc)
        else:
            self.fire(name, (time.perf_counter() - start) * 1000, out["length"])

    def prompt(self) -> str:
        return random.choice(self.mix.prompts)

    def max_chars(self) -> int:
        return random.choice(self.mix.lengths)


class StreamUser(CharRNNUser):
    """Generate streams: time to first character, whole-stream time and chars/s as separate events."""

    weight = 3

    @task
    def generate(self) -> None:
        start = time.perf_counter()
        chars = 0
        gen = self.client.generate(self.prompt(), max_chars=self.max_chars(), **self.mix.sampling)
        try:
            for chunk in gen:
                if chars == 0 and chunk:
                    self.fire("Generate ttfc", (time.perf_counter() - start) * 1000, len(chunk))
                chars += len(chunk)
        except CharRNNError as exc:
            self.fire("Generate stream", (time.perf_counter() - start) * 1000, chars, exc)
            return
        finally:
            gen.cancel()  # a no-op once the stream ended; frees the server's slot if Locust killed us mid-stream
        elapsed = time.perf_counter() - start
        self.fire("Generate stream", elapsed * 1000, chars)
        self.fire("Generate chars/s", chars / elapsed if elapsed > 0 else 0.0, chars)


class SessionUser(CharRNNUser):
    """One bidirectional Session: feed, generate, take a token, load it back, generate again."""

    weight = 1

    @task
    def converse(self) -> None:
        with self.client.session() as s:
            with self.timed("Session feed") as fed:
                fed["length"] = s.feed(self.prompt())
            with self.timed("Session generate") as gen:
                gen["length"] = len(s.generate(max_chars=self.max_chars(), **self.mix.sampling).text())
            token = b""
            with self.timed("Session token") as tok:
                token = s.token()
                tok["length"] = len(token)
            with self.timed("Session resume") as resumed:
                s.load(resume_token=token)
                resumed["length"] = len(s.generate(max_chars=self.max_chars(), **self.mix.sampling).text())


class ScoreUser(CharRNNUser):
    """Score a prompt plus a short continuation-like text."""

    weight = 1

    @task
    def score(self) -> None:
        text = self.prompt() * random.randint(1, 4)
        with self.timed("Score") as out:
            self.client.score(text)
            out["length"] = len(text)
