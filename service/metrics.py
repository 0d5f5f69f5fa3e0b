"""Prometheus metrics: gRPC and HTTP RED metrics (each edge records its own: service/interceptors.py, the
HTTP middleware) and the scheduler's own (observer).

Everything registers in one injectable `CollectorRegistry` (tests use a fresh one) and is served
over HTTP on its own port. Hot-path cost is a few prometheus_client calls per scheduler step
(~1 µs each; a step is 40 µs to several ms) and per flushed chunk, never per character. Labels are
bounded: gRPC method/code, HTTP method/route template/status, finish/refusal/eviction reasons, and the
model's identity; no per-request or per-session labels.
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

    from charrnn.artifact import Manifest
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
RELOAD_RESULTS = ("loaded", "unchanged", "refused")


class Metrics(SchedulerObserver, DeliveryObserver):
    """All service metrics; the scheduler calls the observer hooks, `bind` attaches the runtime."""

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
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.chunk_gap = Histogram(
            "charrnn_inter_chunk_gap_seconds",
            "Between successive messages with text of one stream, as handed to the transport.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stream_seconds = Histogram(
            "charrnn_stream_duration_seconds",
            "From submission to the stream's end, whatever the reason.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.streams_finished = Counter(
            "charrnn_streams_finished_total", "Generations ended, by finish reason.", ("reason",), registry=r
        )
        self.generated = Counter("charrnn_generated_chars_total", "Characters sampled by generations.", registry=r)
        self.prefilled = Counter(
            "charrnn_prefilled_chars_total",
            "Characters of prompts, Score texts and feeds run through the model.",
            registry=r,
        )
        self.prefill_seconds = Histogram(
            "charrnn_prefill_duration_seconds",
            "One prefill chunk: the texts advanced together by one model call.",
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.batch = Histogram(
            "charrnn_batch_size", "Live rows advanced by one decode step.", buckets=BATCH_BUCKETS, registry=r
        )
        step = Histogram(
            "charrnn_step_duration_seconds",
            "One decode step, by phase: the model call or vectorised sampling.",
            ("phase",),
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.step_model = step.labels("model")
        self.step_sampling = step.labels("sampling")
        self.live = Gauge(
            "charrnn_live_streams", "Streams holding a slot now (prefilling their prompt or decoding).", registry=r
        )
        self.queued = Gauge("charrnn_queued_streams", "Streams waiting for a slot now.", registry=r)
        self.sessions = Gauge("charrnn_sessions", "Open server-side sessions.", registry=r)
        self.session_streams = Gauge(
            "charrnn_session_streams", "Open Session streams (bidirectional RPCs).", registry=r
        )
        self.rejections = Counter(
            "charrnn_rejections_total", "Streams refused at admission, by reason.", ("reason",), registry=r
        )
        self.row_failures = Counter(
            "charrnn_row_failures_total",
            "Streams that failed alone (their own parameters, context or text), by phase; their neighbours went on.",
            ("phase",),
            registry=r,
        )
        self.batch_failures = Counter(
            "charrnn_batch_failures_total",
            "Model calls that failed, failing every stream in them, by phase (decode, prefill).",
            ("phase",),
            registry=r,
        )
        self.engine_restarts = Counter(
            "charrnn_engine_restarts_total",
            "Decode workers replaced, by reason: died (its loop failed) or wedged (no iteration for the stall).",
            ("reason",),
            registry=r,
        )
        self.engine_batch = Gauge(
            "charrnn_engine_batch_size", "Rows in each engine's batch now.", ("engine",), registry=r
        )
        self.evictions = Counter(
            "charrnn_session_evictions_total", "Sessions dropped by the store, by reason.", ("reason",), registry=r
        )
        self.tokens_refused = Counter(
            "charrnn_resume_tokens_refused_total", "Resume tokens refused, by reason.", ("reason",), registry=r
        )
        self.reloads = Counter(
            "charrnn_model_reloads_total",
            "Hot reloads (SIGHUP), by result: loaded, unchanged, refused (the old model keeps serving).",
            ("result",),
            registry=r,
        )
        self.model_info = Gauge(
            "charrnn_model_info", "The served model (value 1).", ("name", "version", "sha256", "precision"), registry=r
        )
        self.serving = Gauge(
            "charrnn_serving", "1 once the model is loaded and warmed up and until draining starts.", registry=r
        )
        # Known label values start at 0, so rate() and alerts see a series before the first event.
        for counter, reasons in (
            (self.rejections, REJECT_REASONS),
            (self.row_failures, ROW_PHASES),
            (self.batch_failures, BATCH_PHASES),
            (self.engine_restarts, ENGINE_RESTARTS),
            (self.evictions, EVICTION_REASONS),
            (self.tokens_refused, TOKEN_REFUSALS),
            (self.reloads, RELOAD_RESULTS),
            (self.streams_finished, tuple(r.value for r in FinishReason)),
        ):
            for reason in reasons:
                counter.labels(reason)
        self._finished = {r: self.streams_finished.labels(r.value) for r in FinishReason}

    def bind(self, runtime: Runtime) -> None:
        """Read gauges from the runtime at scrape time (no hot-path work) and publish the model identity."""
        models, sessions = runtime.models, runtime.sessions
        self.live.set_function(lambda: sum(m.scheduler.live for m in models))  # a retiring model's too
        self.queued.set_function(lambda: sum(m.scheduler.queued for m in models))
        self.sessions.set_function(lambda: len(sessions))
        self.session_streams.set_function(lambda: runtime.session_streams)
        self.serving.set_function(lambda: runtime.serving)
        for i in range(len(models.current.scheduler.rows())):
            self.engine_batch.labels(str(i)).set_function(partial(_engine_rows, models, i))
        self.set_model(runtime.manifest)

    def set_model(self, manifest: Manifest) -> None:
        """Publish the current model's identity (after a reload, only the new one's series remains)."""
        self.model_info.clear()
        m = manifest
        self.model_info.labels(m.model.name, m.model.version, m.onnx.sha256, m.precision).set(1)

    # --- SchedulerObserver -------------------------------------------------------------------
    def on_step(self, batch: int, model_s: float, sampling_s: float) -> None:
        self.generated.inc(batch)
        self.batch.observe(batch)
        self.step_model.observe(model_s)
        self.step_sampling.observe(sampling_s)

    def on_prefill(self, rows: int, chars: int, seconds: float) -> None:
        self.prefilled.inc(chars)
        self.prefill_seconds.observe(seconds)

    def on_first_char(self, seconds: float) -> None:
        self.ttfc.observe(seconds)

    def on_chunk(self, gap_s: float) -> None:
        self.chunk_gap.observe(gap_s)

    def on_finish(self, finished: Finished, seconds: float) -> None:
        self._finished[finished.reason].inc()
        self.stream_seconds.observe(seconds)

    def on_reject(self, reason: str) -> None:
        self.rejections.labels(reason).inc()

    def on_row_failure(self, phase: str) -> None:
        self.row_failures.labels(phase).inc()

    def on_batch_failure(self, phase: str) -> None:
        self.batch_failures.labels(phase).inc()

    def on_engine_restart(self, reason: str) -> None:
        self.engine_restarts.labels(reason).inc()

    # --- other components' hooks --------------------------------------------------------------
    def on_evict(self, reason: str) -> None:
        self.evictions.labels(reason).inc()

    def on_reload(self, result: str) -> None:
        self.reloads.labels(result).inc()

    def on_token_refused(self, reason: str) -> None:
        self.tokens_refused.labels(reason).inc()

    def on_http_request(self, method: str, route: str, code: int, seconds: float) -> None:
        """An HTTP request ended (`route` is the route's template, never the raw path)."""
        labels = (method, route, str(code))
        self.http_requests.labels(*labels).inc()
        self.http_seconds.labels(*labels).observe(seconds)


def _engine_rows(models: ModelRegistry, i: int) -> int:
    """Rows in the current model's engine `i` (0 where a reloaded model runs fewer engines)."""
    rows = models.current.scheduler.rows()
    return rows[i] if i < len(rows) else 0


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
