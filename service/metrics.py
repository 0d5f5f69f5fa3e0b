"""Prometheus metrics: gRPC and HTTP RED metrics (each edge records its own: service/interceptors.py, the
HTTP middleware) and the scheduler's own (observer).

Everything registers in one injectable `CollectorRegistry` (tests use a fresh one) and is served
over HTTP on its own port. Hot-path cost is a few prometheus_client calls per scheduler step
(~1 µs each; a step is 40 µs to several ms) and per flushed chunk, never per character. Labels are
bounded: gRPC method/code, HTTP method/route template/status, finish/refusal/eviction reasons, and the
served model's name (a folder of the repository; a removed model's series go with it) and identity; no
per-request or per-session labels.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from service.observer import BATCH_PHASES, ENGINE_RESTARTS, ROW_PHASES, SchedulerObserver
from service.ports import bind_error
from service.stream import DeliveryObserver, Finished, FinishReason

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from service.front import Runtime
    from service.registry import ModelRegistry

log = logging.getLogger(__name__)

# Seconds. Measured here: a decode step takes 40 µs (batch 1, small model) to ~5 ms (batch 64,
# 512x2); prefill and time to first character are milliseconds unless queued; streams last up to
# minutes. Roughly x2-x2.5 steps keep quantile interpolation error within a bucket's width.
STEP_BUCKETS = (0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
# Fine below 20 ms, where an idle server's time to first character lies, and around the flush interval.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
                   0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # fmt: skip
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256)

REJECT_REASONS = ("queue_full", "shutting_down")
EVICTION_REASONS = ("ttl", "count", "memory")
TOKEN_REFUSALS = ("malformed", "signature", "version", "shape", "foreign_model", "non_finite")
RELOAD_RESULTS = ("added", "loaded", "unchanged", "removed", "refused")
MODEL = ("model",)  # the served name: a repository folder's, never client input


class Metrics:
    """All service metrics; each model's scheduler and streams report through `model(name)`, `bind` attaches
    the runtime."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        grpc_labels = ("grpc_service", "grpc_method", "grpc_type")
        self.grpc_started = Counter("grpc_server_started_total", "RPCs started on the server.", grpc_labels, registry=r)
        self.grpc_handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by status code.",
            (*grpc_labels, "grpc_code"),
            registry=r,
        )
        self.grpc_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from RPC start to its status (whole stream for streaming RPCs).",
            grpc_labels,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.grpc_received = Counter(
            "grpc_server_msg_received_total", "Request messages received.", grpc_labels, registry=r
        )
        self.grpc_sent = Counter("grpc_server_msg_sent_total", "Response messages sent.", grpc_labels, registry=r)

        http_labels = ("method", "route", "code")
        self.http_requests = Counter(
            "http_server_requests_total",
            "HTTP requests answered, by route template and status.",
            http_labels,
            registry=r,
        )
        self.http_seconds = Histogram(
            "http_server_request_duration_seconds",
            "Time from an HTTP request to the end of its response (the whole stream for event streams).",
            http_labels,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.http_events = Counter(
            "http_server_sse_events_total",
            "Server-sent events written (one per flushed chunk).",
            ("route",),
            registry=r,
        )

        self.ttfc = Histogram(
            "charrnn_time_to_first_char_seconds",
            "From the request's arrival to its first text handed to the transport (what the client sees).",
            MODEL,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.chunk_gap = Histogram(
            "charrnn_inter_chunk_gap_seconds",
            "Between successive messages with text of one stream, as handed to the transport.",
            MODEL,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stream_seconds = Histogram(
            "charrnn_stream_duration_seconds",
            "From submission to the stream's end, whatever the reason.",
            MODEL,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.streams_finished = Counter(
            "charrnn_streams_finished_total", "Generations ended, by finish reason.", (*MODEL, "reason"), registry=r
        )
        self.generated = Counter(
            "charrnn_generated_chars_total", "Characters sampled by generations.", MODEL, registry=r
        )
        self.prefilled = Counter(
            "charrnn_prefilled_chars_total",
            "Characters of prompts, Score texts and feeds run through the model.",
            MODEL,
            registry=r,
        )
        self.prefill_seconds = Histogram(
            "charrnn_prefill_duration_seconds",
            "One prefill chunk: the texts advanced together by one model call.",
            MODEL,
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.batch = Histogram(
            "charrnn_batch_size", "Live rows advanced by one decode step.", MODEL, buckets=BATCH_BUCKETS, registry=r
        )
        step = Histogram(
            "charrnn_step_duration_seconds",
            "One decode step, by phase: the model call or vectorised sampling.",
            (*MODEL, "phase"),
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.step = step
        self.live = Gauge(
            "charrnn_live_streams",
            "Streams holding a slot now (prefilling their prompt or decoding).",
            MODEL,
            registry=r,
        )
        self.queued = Gauge("charrnn_queued_streams", "Streams waiting for a slot now.", MODEL, registry=r)
        self.sessions = Gauge("charrnn_sessions", "Open server-side sessions.", registry=r)
        self.session_streams = Gauge(
            "charrnn_session_streams", "Open Session streams (bidirectional RPCs).", registry=r
        )
        self.rejections = Counter(
            "charrnn_rejections_total", "Streams refused at admission, by reason.", (*MODEL, "reason"), registry=r
        )
        self.row_failures = Counter(
            "charrnn_row_failures_total",
            "Streams that failed alone (their own parameters, context or text), by phase; their neighbours went on.",
            (*MODEL, "phase"),
            registry=r,
        )
        self.batch_failures = Counter(
            "charrnn_batch_failures_total",
            "Model calls that failed, failing every stream in them, by phase (decode, prefill).",
            (*MODEL, "phase"),
            registry=r,
        )
        self.engine_restarts = Counter(
            "charrnn_engine_restarts_total",
            "Engine processes replaced, by reason: died (it exited) or wedged (work, and nothing sent for the stall).",
            (*MODEL, "reason"),
            registry=r,
        )
        self.engine_batch = Gauge(
            "charrnn_engine_batch_size", "Rows in each engine's batch now.", (*MODEL, "engine"), registry=r
        )
        self.evictions = Counter(
            "charrnn_session_evictions_total", "Sessions dropped by the store, by reason.", ("reason",), registry=r
        )
        for reason in EVICTION_REASONS:
            self.evictions.labels(reason)
        self.tokens_refused = Counter(
            "charrnn_resume_tokens_refused_total",
            "Resume tokens refused, by the model whose codec checked them and the reason.",
            (*MODEL, "reason"),
            registry=r,
        )
        self.reloads = Counter(
            "charrnn_model_reloads_total",
            "Rescans (SIGHUP, --watch-repository), by model and result: added, loaded (changed), unchanged, "
            "removed, refused (it serves as before).",
            (*MODEL, "result"),
            registry=r,
        )
        self.model_info = Gauge(
            "charrnn_model_info",
            "Each served model (value 1): its served name and its manifest's name, version, hash and precision.",
            (*MODEL, "name", "version", "sha256", "precision"),
            registry=r,
        )
        self.serving = Gauge(
            "charrnn_serving", "1 once the model is loaded and warmed up and until draining starts.", registry=r
        )
        self._models: dict[str, ModelMetrics] = {}

    def model(self, name: str) -> ModelMetrics:
        """The hooks of the model served as `name` (a repository name, never client input): its series."""
        if name not in self._models:
            self._models[name] = ModelMetrics(self, name)
        return self._models[name]

    def forget(self, name: str) -> None:
        """Drop every series of a model no longer served, so the labels stay the repository's names."""
        self._models.pop(name, None)
        for family in self._per_model():
            for labels in [k for k in family._metrics if k[0] == name]:
                family.remove(*labels)

    def _per_model(self) -> tuple[Counter | Gauge | Histogram, ...]:
        return (
            self.ttfc, self.chunk_gap, self.stream_seconds, self.streams_finished, self.generated, self.prefilled,
            self.prefill_seconds, self.batch, self.step, self.live, self.queued, self.rejections, self.row_failures,
            self.batch_failures, self.engine_restarts, self.engine_batch, self.tokens_refused, self.reloads,
            self.model_info,
        )  # fmt: skip

    def bind(self, runtime: Runtime) -> None:
        """Read gauges from the runtime at scrape time (no hot-path work) and publish the models' identity."""
        self._runtime = runtime
        sessions = runtime.sessions
        self.sessions.set_function(lambda: len(sessions))
        self.session_streams.set_function(lambda: runtime.session_streams)
        self.serving.set_function(lambda: runtime.serving)
        self.set_models(runtime.models)

    def set_models(self, models: ModelRegistry) -> None:
        """Publish the served models: their gauges and identity (after a rescan, only theirs remain)."""
        self.model_info.clear()
        for model in models.served():
            name, m = model.name, model.manifest
            self.model_info.labels(name, m.model.name, m.model.version, m.onnx.sha256, m.precision).set(1)
            # a retiring model's streams count under its name too
            self.live.labels(name).set_function(partial(_streams, models, name, "live"))
            self.queued.labels(name).set_function(partial(_streams, models, name, "queued"))
            for i in range(len(model.scheduler.rows())):
                self.engine_batch.labels(name, str(i)).set_function(partial(_engine_rows, models, name, i))
            self.model(name)

    # --- hooks that are not a model's --------------------------------------------------------
    def on_evict(self, reason: str) -> None:
        self.evictions.labels(reason).inc()

    def on_reload(self, name: str, result: str) -> None:
        self.reloads.labels(name, result).inc()

    def on_http_request(self, method: str, route: str, code: int, seconds: float) -> None:
        """An HTTP request ended (`route` is the route's template, never the raw path)."""
        labels = (method, route, str(code))
        self.http_requests.labels(*labels).inc()
        self.http_seconds.labels(*labels).observe(seconds)


def _streams(models: ModelRegistry, name: str, which: str) -> int:
    """Live or queued streams of the models loaded under `name`: the served one and any retiring."""
    return sum(getattr(m.scheduler, which) for m in models if m.name == name)


def _engine_rows(models: ModelRegistry, name: str, i: int) -> int:
    """Rows in engine `i` of the model served as `name` (0 where a reloaded model runs fewer engines)."""
    served = [m for m in models.served() if m.name == name]
    rows = served[0].scheduler.rows() if served else []
    return rows[i] if i < len(rows) else 0


class ModelMetrics(SchedulerObserver, DeliveryObserver):
    """One served model's hooks: its scheduler, its token codec and the delivery of its streams."""

    def __init__(self, metrics: Metrics, name: str):
        m = metrics
        self.generated = m.generated.labels(name)
        self.batch = m.batch.labels(name)
        self.step_model = m.step.labels(name, "model")
        self.step_sampling = m.step.labels(name, "sampling")
        self.prefilled = m.prefilled.labels(name)
        self.prefill_seconds = m.prefill_seconds.labels(name)
        self.ttfc = m.ttfc.labels(name)
        self.chunk_gap = m.chunk_gap.labels(name)
        self.stream_seconds = m.stream_seconds.labels(name)
        self._finished = {r: m.streams_finished.labels(name, r.value) for r in FinishReason}
        # Known label values start at 0, so rate() and alerts see a series before the first event.
        self._counters = {
            family: {reason: family.labels(name, reason) for reason in reasons}
            for family, reasons in (
                (m.rejections, REJECT_REASONS),
                (m.row_failures, ROW_PHASES),
                (m.batch_failures, BATCH_PHASES),
                (m.engine_restarts, ENGINE_RESTARTS),
                (m.tokens_refused, TOKEN_REFUSALS),
            )
        }
        self._m = m
        for result in RELOAD_RESULTS:
            m.reloads.labels(name, result)

    def _count(self, family: Counter, reason: str) -> None:
        self._counters[family][reason].inc()

    # --- SchedulerObserver -------------------------------------------------------------------
    def on_step(self, batch: int, model_s: float, sampling_s: float) -> None:
        self.generated.inc(batch)
        self.batch.observe(batch)
        self.step_model.observe(model_s)
        self.step_sampling.observe(sampling_s)

    def on_prefill(self, rows: int, chars: int, seconds: float) -> None:
        self.prefilled.inc(chars)
        self.prefill_seconds.observe(seconds)

    def on_finish(self, finished: Finished, seconds: float) -> None:
        self._finished[finished.reason].inc()
        self.stream_seconds.observe(seconds)

    def on_reject(self, reason: str) -> None:
        self._count(self._m.rejections, reason)

    def on_row_failure(self, phase: str) -> None:
        self._count(self._m.row_failures, phase)

    def on_batch_failure(self, phase: str) -> None:
        self._count(self._m.batch_failures, phase)

    def on_engine_restart(self, reason: str) -> None:
        self._count(self._m.engine_restarts, reason)

    def on_token_refused(self, reason: str) -> None:
        self._count(self._m.tokens_refused, reason)

    # --- DeliveryObserver --------------------------------------------------------------------
    def on_first_char(self, seconds: float) -> None:
        self.ttfc.observe(seconds)

    def on_chunk(self, gap_s: float) -> None:
        self.chunk_gap.observe(gap_s)


class MetricsHTTPServer:
    """/metrics over HTTP on its own port (0 = any free port; `port` is the bound one).

    An address it cannot bind is a ConfigError naming it and --metrics-port / --metrics-host.
    """

    def __init__(self, registry: CollectorRegistry, host: str, port: int):
        server: WSGIServer
        try:
            server, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise bind_error("/metrics", host, port, ("--metrics-port", "--metrics-host"), exc) from exc
        self._server = server
        self.port: int = server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
