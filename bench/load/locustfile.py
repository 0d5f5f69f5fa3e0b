"""Locust load test for charrnn: streaming, session and scoring users over gRPC, and a streaming user over
the OpenAI-compatible HTTP API (server-sent events).

    locust -f bench/load/locustfile.py --headless --host 127.0.0.1:50051 -u 4 -r 4 -t 10s
    locust -f bench/load/locustfile.py --headless --host 127.0.0.1:50051 --http-host http://127.0.0.1:8000 \
        --model-weights default=3,shakespeare=1 -u 8 -r 8 -t 30s

`--host` is the gRPC target. It may name several replicas: `10.0.0.1:50051,10.0.0.2:50051` or
`dns:///NAME:PORT` (every address of NAME). Each user's channel then balances its calls over all of them
(round robin, health-checked). `--http-host` is the HTTP API root (the server's `--http-port`); the HTTP
user runs only when it is given.

`--model-weights NAME=WEIGHT,...` mixes models: each request picks one by weight and names it in its
`model` field (HTTP; gRPC Generate, Score and Session where their request messages have a `model` field:
the locustfile reads the protobuf descriptor). Without it no request names a model: the server's default.

Request events, one per call, so Locust's tables hold calls and nothing else:
- "Generate stream" (grpc): a whole Generate stream (its length is the characters received).
- "Session feed" / "Session generate" / "Session token" / "Session resume" (grpc): one bidirectional
  stream: feed text, generate, take a resume token, load it back and generate again.
- "Score" (grpc): a unary Score call.
- "Completion stream" (http): a whole streamed POST /v1/completions, up to its `data: [DONE]`.

What a stream feels like is kept apart (`StreamStats`): the time to its first character (TTFC) and
the gaps between its chunks (gRPC and HTTP streams alike), the characters received by every streaming
call, and failed calls by gRPC status code (HTTP: "HTTP 503", "HTTP error event unavailable", ...).
They are not requests, so they stay out of Locust's Aggregated row; they are merged across worker
processes (`--processes`) like Locust's own statistics. `--results FILE` writes them as JSON at the
end, with Locust's final statistics per call (bench/load/run.py reads it for its report; Locust's own
CSV can miss the last second's calls).

Options (also environment variables, e.g. CHARRNN_LOAD_MAX_CHARS=50,400): user weights, the HTTP root,
the model mix, the mix of generation lengths, prompts, sampling parameters and think time; see `--help`.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Importing locust monkey-patches the standard library for gevent; grpc must then be switched to gevent
# (Locust's concurrency) before any channel exists, i.e. before charrnn.client creates one.
import gevent
from locust import User, events, task
from locust.env import Environment
from locust.runners import WorkerRunner
from locust.stats import RequestStats, StatsEntry, calculate_response_time_percentile, diff_response_time_dicts

import grpc.experimental.gevent as grpc_gevent  # isort: skip

grpc_gevent.init_gevent()

import requests  # noqa: E402  (after locust's monkey-patching: ssl imported before it recurses)

from charrnn.client import CharRNNError, Client  # noqa: E402
from charrnn.v1 import charrnn_pb2 as pb  # noqa: E402

DEFAULT_PROMPTS = (
    "def fib(n):\n",
    "import os\n",
    "class Stack:\n    def __init__(self):\n",
    "for i in range(10):\n",
    "    return ",
    "# Utility functions for parsing\n",
    'if __name__ == "__main__":\n',
)


COMPLETIONS = "/v1/completions"
# gRPC requests name a model only where the message has the field (older protos do not).
GENERATE_HAS_MODEL = "model" in pb.GenerateRequest.DESCRIPTOR.fields_by_name
SCORE_HAS_MODEL = "model" in pb.ScoreRequest.DESCRIPTOR.fields_by_name
SESSION_HAS_MODEL = "model" in pb.SessionRequest.DESCRIPTOR.fields_by_name


def parse_model_weights(text: str) -> list[tuple[str, float]]:
    """`default=3,shakespeare=1` as [("default", 3.0), ("shakespeare", 1.0)]; "" as [] (name no model).

    A weight is a number >= 0 (0 leaves the model out, like a user weight of 0); at least one is above 0."""
    mix: list[tuple[str, float]] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, weight = (x.strip() for x in item.partition("="))
        if not sep or not name:
            raise ValueError(f"{item!r} is not NAME=WEIGHT (e.g. default=3,shakespeare=1)")
        try:
            value = float(weight)
        except ValueError:
            raise ValueError(f"the weight of {name!r} is not a number: {weight!r}") from None
        if not value >= 0 or value == float("inf"):
            raise ValueError(f"the weight of {name!r} must be a finite number >= 0, got {weight!r}")
        if name in (n for n, _ in mix):
            raise ValueError(f"model {name!r} is given twice")
        mix.append((name, value))
    if mix and not any(w > 0 for _, w in mix):
        raise ValueError("every weight is 0: give one model a weight above 0, or leave the option out")
    return mix


def checked(parse: Callable[[str], object]) -> Callable[[str], str]:
    """An argparse `type` that checks the text with `parse` and keeps it (Locust's web UI edits it as text);
    argparse names the option in its one-line error and exits with status 2."""

    def check(text: str) -> str:
        try:
            parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    return check


def http_root(text: str) -> str:
    """--http-host: "" (no HTTP user) or an http(s) URL, without a trailing slash."""
    root = text.strip().rstrip("/")
    if root and not root.startswith(("http://", "https://")):
        raise ValueError(f"{text!r} is not an http:// or https:// URL (e.g. http://127.0.0.1:8000)")
    return root


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    def add(flag: str, default: Any, help: str, type: Any = str) -> None:
        env = "CHARRNN_LOAD_" + flag.lstrip("-").upper().replace("-", "_")
        parser.add_argument(flag, type=type, default=default, env_var=env, help=f"{help} [env {env}]")

    add("--stream-weight", 3, "weight of the streaming (Generate) user", int)
    add("--session-weight", 1, "weight of the Session (feed/generate/resume) user", int)
    add("--score-weight", 1, "weight of the Score user", int)
    add("--http-weight", 1, "weight of the HTTP user (streamed /v1/completions); it runs only with --http-host", int)
    add("--http-host", "", "HTTP API root, e.g. http://127.0.0.1:8000 (empty: no HTTP user)", checked(http_root))
    mix = "models by weight, NAME=WEIGHT,... e.g. default=3,shakespeare=1 (empty: name none, the server's default)"
    add("--model-weights", "", mix, checked(parse_model_weights))
    add("--max-chars", "50,200,800", "generation lengths, picked uniformly per request (comma-separated)")
    add("--prompts-file", "", "prompts, one per line (default: a few code-like prompts)")
    add("--temperature", 0.8, "sampling temperature (0 = greedy)", float)
    add("--top-k", 0, "top-k (0 = off)", int)
    add("--top-p", 1.0, "nucleus mass (1 = off)", float)
    add("--wait-max", 0.5, "think time between a user's tasks: uniform in [0, wait-max] seconds", float)
    add("--rpc-timeout", 60.0, "deadline per gRPC call; for HTTP the longest wait for the next bytes (s)", float)
    add("--results", "", "write calls, TTFC, chunk gaps, characters and errors by code to this JSON file at the end")


class _Mix:
    """The parsed options, shared by every user."""

    def __init__(self, options: Any):
        self.lengths = [int(x) for x in str(options.max_chars).split(",") if x.strip()]
        prompts = Path(options.prompts_file).read_text().splitlines() if options.prompts_file else []
        self.prompts = [p.replace("\\n", "\n") for p in prompts if p] or list(DEFAULT_PROMPTS)
        self.sampling = {"temperature": options.temperature, "top_k": options.top_k, "top_p": options.top_p}
        self.timeout = float(options.rpc_timeout)
        self.wait_max = float(options.wait_max)
        self.http_root = http_root(options.http_host)
        self.models = parse_model_weights(options.model_weights)

    def model(self, rng: random.Random | None = None) -> str | None:
        """A model name drawn by weight, or None (name none) without --model-weights."""
        if not self.models:
            return None
        names, weights = zip(*self.models, strict=True)
        return (rng or random).choices(names, weights)[0]

    def completion(self, prompt: str, max_chars: int, model: str | None) -> dict[str, Any]:
        """A streamed /v1/completions body with the mix's sampling (top_k is an extension there)."""
        body: dict[str, Any] = {
            "prompt": prompt,
            "max_tokens": max_chars,
            "temperature": self.sampling["temperature"],
            "top_p": self.sampling["top_p"],
            "stream": True,
            "charrnn": {"top_k": self.sampling["top_k"]},
        }
        return body if model is None else {**body, "model": model}


MIX: _Mix | None = None
WINDOW_S = 10  # the sliding window of the percentiles over time, as Locust's "current" percentiles
SAMPLE_EVERY_S = 2.0


class StreamStats:
    """TTFC and chunk gaps in Locust's histograms (2 significant digits), characters, errors by code.

    On a worker process everything is sent to the master with Locust's periodic report and cleared; the
    master (or a single process) holds the totals and samples windowed percentiles over time.
    """

    NAMES = ("ttfc", "gap")

    def __init__(self) -> None:
        self.stats = RequestStats(use_response_times_cache=False)
        self.chars = 0
        self.errors: Counter[str] = Counter()
        self.started = self.stopped = self.started_at = 0.0
        self.history: list[dict[str, float | None]] = []
        self._snapshots: list[tuple[float, dict[str, tuple[dict[int, int], int]]]] = []
        self._sampler: gevent.Greenlet | None = None

    def log(self, name: str, ms: float) -> None:
        self.stats.log_request("stream", name, round(ms), 0)

    def entry(self, name: str) -> StatsEntry:
        return self.stats.get(name, "stream")

    # Worker → master, with Locust's own periodic report.
    def report(self, data: dict[str, Any]) -> None:
        data["charrnn_streams"] = {
            "entries": self.stats.serialize_stats(),  # serialising resets each entry, as Locust's stats do
            "chars": self.chars,
            "errors": dict(self.errors),
        }
        self.chars = 0
        self.errors.clear()

    def merge(self, data: dict[str, Any]) -> None:
        part = data.get("charrnn_streams")
        if not part:
            return
        for serialized in part["entries"]:
            self.entry(serialized["name"]).extend(StatsEntry.unserialize(serialized, self.stats))
        self.chars += part["chars"]
        self.errors.update(part["errors"])

    def start(self) -> None:
        """The test began (master or single process): sample the windowed percentiles from now on."""
        self.started = time.monotonic()
        self.started_at = time.time()  # the origin of the history's times, as epoch seconds (Locust's CSVs use them)
        self._snapshots = [(self.started, {n: ({}, 0) for n in self.NAMES})]
        self._sampler = gevent.spawn(self._sample_forever)

    def stop(self) -> None:
        self.stopped = time.monotonic()
        if self._sampler is not None:
            self._sampler.kill(block=False)

    def _sample_forever(self) -> None:
        while True:
            gevent.sleep(SAMPLE_EVERY_S)
            self.sample()

    def sample(self) -> None:
        """One point of the p50/p99 of TTFC and gaps over the last WINDOW_S: the histograms now minus then."""
        now = time.monotonic()
        current = {n: (dict(self.entry(n).response_times), self.entry(n).num_requests) for n in self.NAMES}
        self._snapshots.append((now, current))
        while self._snapshots[1][0] <= now - WINDOW_S:  # keep the newest snapshot at least WINDOW_S old
            self._snapshots.pop(0)
        then = self._snapshots[0][1]
        point: dict[str, float | None] = {"t": round(now - self.started, 1)}
        for name in self.NAMES:
            times = diff_response_time_dicts(current[name][0], then[name][0])
            count = current[name][1] - then[name][1]
            for pct in (50, 99):
                point[f"{name}_p{pct}"] = calculate_response_time_percentile(times, count, pct / 100) if count else None
        self.history.append(point)

    def summary(self) -> dict[str, Any]:
        def distribution(name: str) -> dict[str, Any]:
            e = self.entry(name)
            if not e.num_requests:
                return {"count": 0}
            return {
                "count": e.num_requests,
                "p50_ms": e.get_response_time_percentile(0.5),
                "p90_ms": e.get_response_time_percentile(0.9),
                "p99_ms": e.get_response_time_percentile(0.99),
                "max_ms": round(e.max_response_time, 1),
                "mean_ms": round(e.avg_response_time, 2),
                "histogram_ms": {str(k): v for k, v in sorted(e.response_times.items())},
            }

        return {
            "started_at": self.started_at,
            "seconds": round(self.stopped - self.started, 2),
            "chars": self.chars,
            "ttfc": distribution("ttfc"),
            "gap": distribution("gap"),
            "errors_by_code": dict(sorted(self.errors.items())),
            "window_s": WINDOW_S,
            "history": self.history,
        }


STREAMS = StreamStats()


@events.report_to_master.add_listener
def _report(client_id: str, data: dict[str, Any], **_: Any) -> None:
    STREAMS.report(data)


@events.worker_report.add_listener
def _merge(client_id: str, data: dict[str, Any], **_: Any) -> None:
    STREAMS.merge(data)


@events.test_start.add_listener
def _started(environment: Environment, **_: Any) -> None:
    if not isinstance(environment.runner, WorkerRunner):
        STREAMS.start()


@events.test_stop.add_listener
def _stopped(environment: Environment, **_: Any) -> None:
    if not isinstance(environment.runner, WorkerRunner):
        STREAMS.stop()


def calls(stats: RequestStats) -> dict[str, dict[str, Any]]:
    """Locust's statistics per call name and Aggregated, read (not reset) at the end of the run."""
    entries = {e.name: e for e in stats.entries.values()} | {"Aggregated": stats.total}

    def pct(e: StatsEntry, p: float) -> int | None:
        return e.get_response_time_percentile(p) if e.num_requests else None

    return {
        name: {
            "requests": e.num_requests,
            "failures": e.num_failures,
            "mean_chars": e.avg_content_length,
            "requests_per_s": round(e.total_rps, 3),
            "p50_ms": pct(e, 0.5),
            "p95_ms": pct(e, 0.95),
            "p99_ms": pct(e, 0.99),
        }
        for name, e in entries.items()
    }


@events.quitting.add_listener
def _write(environment: Environment, **_: Any) -> None:
    """At the end (after the workers' last reports), on the master or the single process only."""
    options = environment.parsed_options
    path = getattr(options, "results", "") if options is not None else ""
    if path and not isinstance(environment.runner, WorkerRunner):
        results = {"calls": calls(environment.stats), "streams": STREAMS.summary()}
        Path(path).write_text(json.dumps(results, indent=1) + "\n")


class LoadUser(User):
    """What every user shares: the mix, the think time, the prompts and lengths, and `fire`/`timed`, which
    turn a call into one Locust request event of type `request_type`."""

    abstract = True
    request_type = "grpc"

    def on_start(self) -> None:
        self.mix = MIX or _Mix(self.environment.parsed_options)

    def wait_time(self) -> float:
        return random.uniform(0.0, self.mix.wait_max)

    def fire(self, name: str, response_time: float, length: int = 0, exception: Exception | None = None) -> None:
        self.environment.events.request.fire(
            request_type=self.request_type,
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
            STREAMS.errors[exc.code.name] += 1
            self.fire(name, (time.perf_counter() - start) * 1000, exception=exc)
        else:
            self.fire(name, (time.perf_counter() - start) * 1000, out["length"])

    def prompt(self) -> str:
        return random.choice(self.mix.prompts)

    def max_chars(self) -> int:
        return random.choice(self.mix.lengths)


class CharRNNUser(LoadUser):
    """A gRPC client per user."""

    abstract = True

    def on_start(self) -> None:
        super().on_start()
        assert self.host, "give the server as --host HOST:PORT (or several: IP:PORT,IP:PORT or dns:///NAME:PORT)"
        target = self.host.removeprefix("grpc://").removeprefix("http://").rstrip("/")
        self.client = Client(target, timeout=self.mix.timeout)  # balanced over the target's replicas

    def on_stop(self) -> None:
        self.client.close()

    def model_field(self, has_model: bool) -> dict[str, Any]:
        """`model=NAME` for a request whose message has a `model` field, drawn from the mix; else nothing."""
        name = self.mix.model() if has_model else None
        return {} if name is None else {"model": name}


class Arrivals:
    """One stream's arrivals: its first text is the time to first character, each later one a gap
    (both to StreamStats, with the characters)."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.chars = 0

    def received(self, text: str) -> None:
        if not text:
            return
        now = time.perf_counter()
        STREAMS.log("gap" if self.chars else "ttfc", (now - self.last) * 1000)
        self.last = now
        self.chars += len(text)
        STREAMS.chars += len(text)

    def ms(self) -> float:
        """Milliseconds since the stream was asked for."""
        return (time.perf_counter() - self.start) * 1000


class StreamUser(CharRNNUser):
    """Generate streams: the whole stream is the request; its TTFC and chunk gaps go to StreamStats."""

    weight = 3

    @task
    def generate(self) -> None:
        arrivals = Arrivals()
        gen = self.client.generate(
            self.prompt(), max_chars=self.max_chars(), **self.mix.sampling, **self.model_field(GENERATE_HAS_MODEL)
        )
        try:
            for chunk in gen:
                arrivals.received(chunk)
        except CharRNNError as exc:
            STREAMS.errors[exc.code.name] += 1
            self.fire("Generate stream", arrivals.ms(), arrivals.chars, exc)
            return
        finally:
            gen.cancel()  # a no-op once the stream ended; frees the server's slot if Locust killed us mid-stream
        self.fire("Generate stream", arrivals.ms(), arrivals.chars)


class SessionUser(CharRNNUser):
    """One bidirectional Session: feed, generate, take a token, load it back, generate again."""

    weight = 1

    @task
    def converse(self) -> None:
        with self.client.session(**self.model_field(SESSION_HAS_MODEL)) as s:
            with self.timed("Session feed") as fed:
                fed["length"] = s.feed(self.prompt())
            with self.timed("Session generate") as gen:
                gen["length"] = len(s.generate(max_chars=self.max_chars(), **self.mix.sampling).text())
                STREAMS.chars += gen["length"]
            token = b""
            with self.timed("Session token") as tok:
                token = s.token()
                tok["length"] = len(token)
            with self.timed("Session resume") as resumed:
                s.load(resume_token=token)
                resumed["length"] = len(s.generate(max_chars=self.max_chars(), **self.mix.sampling).text())
                STREAMS.chars += resumed["length"]


class ScoreUser(CharRNNUser):
    """Score a prompt plus a short continuation-like text."""

    weight = 1

    @task
    def score(self) -> None:
        text = self.prompt() * random.randint(1, 4)
        with self.timed("Score") as out:
            self.client.score(text, **self.model_field(SCORE_HAS_MODEL))
            out["length"] = len(text)


class HttpFailure(Exception):
    """A streamed completion that failed; `key` is its entry in the errors by code."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


def sse_payloads(chunks: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """The JSON objects of an OpenAI-style event stream (`data: {...}` events, each ended by a blank line)
    as they arrive, up to `data: [DONE]`; an error event or a stream cut short is an HttpFailure."""
    buffer = b""
    for data in chunks:
        buffer += data
        *complete, buffer = buffer.split(b"\n\n")
        for event in complete:
            if not event.startswith(b"data: "):
                raise HttpFailure("HTTP bad event", f"not a data event: {event[:80]!r}")
            payload = event[len(b"data: ") :]
            if payload == b"[DONE]":
                return
            message = json.loads(payload)
            if "error" in message:
                error = message["error"]
                raise HttpFailure(f"HTTP error event {error.get('code')}", str(error.get("message")))
            yield message
    raise HttpFailure("HTTP cut short", "the stream ended before data: [DONE]")


class HttpStreamUser(LoadUser):
    """Streamed completions over the OpenAI-compatible HTTP API (server-sent events): the whole stream up to
    `data: [DONE]` is the request; its TTFC and chunk gaps go to StreamStats, as a gRPC stream's do."""

    weight = 1
    request_type = "http"

    def on_start(self) -> None:
        super().on_start()
        assert self.mix.http_root, "give the HTTP API root as --http-host http://HOST:PORT"
        self.session = requests.Session()

    def on_stop(self) -> None:
        self.session.close()

    @task
    def complete(self) -> None:
        body = self.mix.completion(self.prompt(), self.max_chars(), self.mix.model())
        arrivals = Arrivals()
        try:
            with self.session.post(
                self.mix.http_root + COMPLETIONS, json=body, stream=True, timeout=self.mix.timeout
            ) as response:
                if response.status_code != 200:
                    raise HttpFailure(f"HTTP {response.status_code}", response.text[:500])
                for chunk in sse_payloads(response.iter_content(chunk_size=None)):
                    arrivals.received(chunk["choices"][0]["text"] if chunk["choices"] else "")
        except HttpFailure as exc:
            STREAMS.errors[exc.key] += 1
            self.fire("Completion stream", arrivals.ms(), arrivals.chars, exc)
        except requests.RequestException as exc:  # refused, reset, timed out
            STREAMS.errors[f"HTTP {type(exc).__name__}"] += 1
            self.fire("Completion stream", arrivals.ms(), arrivals.chars, exc)
        else:
            self.fire("Completion stream", arrivals.ms(), arrivals.chars)


@events.init.add_listener
def _configure(environment: Environment, **_: Any) -> None:
    """The parsed options become the shared mix and the users' weights; a weight of 0 leaves a user out."""
    global MIX
    options = environment.parsed_options
    if options is None:  # used as a library, not from the locust CLI
        return
    MIX = _Mix(options)
    weights: dict[type[User], int] = {
        StreamUser: options.stream_weight,
        SessionUser: options.session_weight,
        ScoreUser: options.score_weight,
        HttpStreamUser: options.http_weight if MIX.http_root else 0,
    }
    for cls, weight in weights.items():
        cls.weight = weight
    # Locust cannot spawn a class of weight 0: leave those out.
    environment.user_classes[:] = [c for c in environment.user_classes if weights.get(c, 1) > 0]
