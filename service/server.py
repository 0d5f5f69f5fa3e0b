"""Wiring: load the repository's models, build the runtime, serve gRPC with health and reflection (and HTTP
when `http_port` is set, service/http/), drain on SIGTERM.

Health is NOT_SERVING until every model is loaded and warmed up. SIGHUP (or `--watch-repository`) rescans
the repository (`reload`). On SIGTERM/SIGINT health goes
NOT_SERVING, new streams are refused with UNAVAILABLE, live ones get `grace_s` to finish, then
whatever is left fails with UNAVAILABLE and the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import REGISTRY

from charrnn.artifact import load_manifest
from charrnn.v1 import charrnn_pb2, charrnn_pb2_grpc
from charrnn.vocab import Vocabulary
from service.config import ConfigError, ServerConfig
from service.engines import Launcher, start_process
from service.front import Runtime
from service.http import HttpFace
from service.interceptors import BearerAuthInterceptor, DecodeGuardInterceptor, GrpcMetricsInterceptor
from service.metrics import Metrics, MetricsHTTPServer
from service.ports import bind_error, check_bindable
from service.registry import LoadedModel, ModelRegistry
from service.repository import ModelServing, Repository, choose_default, fingerprint, model_serving
from service.scheduler import Scheduler
from service.servicer import CharRNNServicer
from service.sessions import SessionStore
from service.stream import DeliveryObserver
from service.tokens import TokenCodec
from service.wire import EngineSpec

log = logging.getLogger(__name__)

SERVICE_NAME = charrnn_pb2.DESCRIPTOR.services_by_name["CharRNN"].full_name
# The flags that choose each address, named when it cannot be bound.
GRPC_FLAGS = ("--port", "--host")
HTTP_FLAGS = ("--http-port", "--host")
# gRPC's integer arguments are 32-bit: longer durations are "never" to it anyway.
_GRPC_MAX_MS = 2**31 - 1


def load_model(
    name: str,
    folder: Path,
    config: ServerConfig,
    key: bytes,
    metrics: Metrics | None = None,
    launch: Launcher = start_process,
) -> LoadedModel:
    """Check the artifact in `folder`, served as `name`, and bind its vocabulary, token codec, limits (its
    serving.json) and (unstarted) scheduler.

    ArtifactError if the manifest, the model file's hash or serving.json is wrong; a graph ONNX Runtime cannot
    load is refused when the scheduler's engines start. Blocking: at start-up, or off the event loop for a rescan.
    """
    manifest = load_manifest(folder)
    serving = model_serving(folder, config.limits, config.scheduling.engine_count())
    spec = EngineSpec(
        Path(folder), manifest.onnx.sha256, config.engine, serving.limits, config.flush, config.scheduling
    )
    observer = metrics.model(name) if metrics is not None else None
    scheduler = Scheduler(spec, serving.engines, observer, launch)
    on_refuse = observer.on_token_refused if observer is not None else None
    layers, hidden = manifest.state_shape
    codec = TokenCodec(
        key, manifest.onnx.sha256, len(manifest.onnx.states), layers, hidden, manifest.model.vocab_size, on_refuse
    )
    return LoadedModel(name, manifest, Vocabulary.from_spec(manifest.vocabulary), codec, scheduler, serving)


def _identity(folder: Path, config: ServerConfig) -> tuple[str, ModelServing]:
    """What decides whether a folder changed: its graph's sha256 (verified), its limits and its engine count."""
    serving = model_serving(folder, config.limits, config.scheduling.engine_count())
    return load_manifest(folder).onnx.sha256, serving


def build_runtime(config: ServerConfig, metrics: Metrics | None = None, launch: Launcher = start_process) -> Runtime:
    """Load and check every model a request may name; ArtifactError/ConfigError if one cannot work.

    `metrics` observes the schedulers, session evictions and refused resume tokens.
    """
    config.validate()
    key = config.resume_key()
    folders = Repository(*config.models()).scan()
    default = choose_default(list(folders), config.default_model)
    models = [load_model(name, folder, config, key, metrics, launch) for name, folder in folders.items()]
    lim = config.limits
    on_evict = metrics.on_evict if metrics is not None else None
    return Runtime(
        models=ModelRegistry(models, default),
        sessions=SessionStore(lim.max_sessions, lim.session_ttl_seconds, lim.session_memory_bytes, on_evict=on_evict),
        limits=lim,
        delivery=metrics.model if metrics is not None else lambda name: DeliveryObserver(),
    )


class CharRNNServer:
    """A started-and-stoppable server; `serve` adds signal handling for the CLI.

    Metrics are always collected (into `metrics.registry`, a fresh one unless given); they are
    served over HTTP only when `config.metrics_port` is set.
    """

    def __init__(self, config: ServerConfig, runtime: Runtime | None = None, metrics: Metrics | None = None,
                 launch: Launcher = start_process):  # fmt: skip
        self.config = config
        self.metrics = metrics or Metrics()
        self._launch = launch  # how engines start: processes (tests may run them as threads over a prepared model)
        self.repository = Repository(*config.models())
        # Before the models load: a folder that changes while they do is rescanned at the first poll.
        self._seen = fingerprint(self.repository) if config.watch_repository > 0 else ()
        self.runtime = runtime or build_runtime(config, self.metrics, launch)
        self.metrics.bind(self.runtime)
        self.health = HealthServicer()
        self.server = grpc.aio.server(interceptors=_interceptors(config, self.metrics), options=_options(config))
        self.metrics_http: MetricsHTTPServer | None = None
        self.http = HttpFace(config, self.runtime, self.metrics)
        charrnn_pb2_grpc.add_CharRNNServicer_to_server(CharRNNServicer(self.runtime), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server,
        )
        self.port = 0
        self._watcher: asyncio.Task[None] | None = None
        self._reload_lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self._health_updates: set[asyncio.Task[None]] = set()
        self._draining = False

    @property
    def scheduler(self) -> Scheduler:
        return self.runtime.scheduler

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def start(self) -> int:
        """Bind, answer health NOT_SERVING, warm the model up, then SERVING. Returns the bound port."""
        host, port = self.config.host, self.config.port
        address = f"{host}:{port}"
        credentials = _tls_credentials(self.config)
        check_bindable("gRPC", host, port, GRPC_FLAGS)  # gRPC's own failure names neither cause nor flag
        if self.config.http_port > 0:  # before the warm-up, so a busy port fails at once
            check_bindable("HTTP", host, self.config.http_port, HTTP_FLAGS)
        try:
            if credentials is None:
                self.port = self.server.add_insecure_port(address)
            else:
                self.port = self.server.add_secure_port(address, credentials)
        except RuntimeError as exc:  # taken between the check and the bind
            raise bind_error("gRPC", host, port, GRPC_FLAGS, OSError(str(exc))) from exc
        if self.port == 0:
            raise bind_error("gRPC", host, port, GRPC_FLAGS, OSError("gRPC could not bind it"))
        if self.config.metrics_port >= 0:
            metrics_host = self.config.metrics_host or self.config.host
            self.metrics_http = MetricsHTTPServer(self.metrics.registry, metrics_host, self.config.metrics_port)
            log.info("metrics on http://%s:%d/metrics", metrics_host, self.metrics_http.port)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        started: list[Scheduler] = []
        try:
            for model in self.runtime.models.served():
                await self._start_scheduler(model.scheduler)  # its engines load and warm the model up
                started.append(model.scheduler)
        except Exception:
            for scheduler in started:  # no engine outlives a start-up that failed
                await scheduler.close()
            await self.server.stop(0)
            raise
        try:
            await self.http.start(_write_port)
        except OSError as exc:  # taken since the check: stop what already runs, so the process can exit
            await self.stop(0)
            raise bind_error("HTTP", host, self.config.http_port, HTTP_FLAGS, exc) from exc
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        self.runtime.serving = True
        if self.metrics_http is not None and self.config.metrics_port_file is not None:
            _write_port(self.config.metrics_port_file, self.metrics_http.port)
        if self.config.port_file is not None:
            _write_port(self.config.port_file, self.port)
        for model in self.runtime.models.served():
            m = model.manifest
            log.info(
                "serving %s%s: %s %s (%s %dx%d, sha256 %s…) on %s:%d",
                model.name, " (default)" if model is self.runtime.models.current else "", m.model.name,
                m.model.version, m.model.cell, m.model.layers, m.model.hidden_size, m.onnx.sha256[:12],
                self.config.host, self.port,
            )  # fmt: skip
        if self.config.watch_repository > 0:
            self._watcher = asyncio.get_running_loop().create_task(self._watch(self.config.watch_repository))
        return self.port

    async def _start_scheduler(self, scheduler: Scheduler) -> None:
        """Start its engines; health follows them: NOT_SERVING from an engine's death until its replacement runs."""
        scheduler.on_health = self._engine_health
        await scheduler.start()

    def _engine_health(self, serving: bool) -> None:
        if self._draining:
            return  # draining is NOT_SERVING to the end
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        self.metrics.serving.set(1 if serving else 0)
        task = asyncio.get_running_loop().create_task(self._set_health(status))
        self._health_updates.add(task)
        task.add_done_callback(self._health_updates.discard)

    async def reload(self) -> dict[str, str]:
        """Rescan the repository without dropping streams; each name's result: "added", "loaded" (changed),
        "unchanged", "removed" or "refused" (it serves as before).

        New and changed folders are loaded off the event loop and warmed up before they are served; a refused
        artifact (missing, hash mismatch, unreadable graph, bad serving.json, shapes that fail the warm-up)
        leaves the name as it was. Unchanged models are not touched. A replaced or removed model retires once
        nothing runs on it.
        """
        async with self._reload_lock:
            results = await self._rescan()
        for name, result in results.items():
            self.metrics.on_reload(name, result)
        self.metrics.set_models(self.runtime.models)
        return results

    async def _rescan(self) -> dict[str, str]:
        models = self.runtime.models
        try:
            folders = await asyncio.to_thread(self.repository.scan)
        except Exception as exc:
            log.error("model rescan refused, serving %s as before: %s", ", ".join(models.names()), exc)
            return dict.fromkeys(models.names(), "refused")
        results = {}
        for name in models.names():
            if name in folders:
                continue
            if name == models.default:
                log.error("the default model %s is gone from the repository: it keeps serving until a restart", name)
                results[name] = "refused"
                continue
            self._retire(models.remove(name))
            log.info("model %s removed: it retires once its streams end", name)
            results[name] = "removed"
        for name, folder in folders.items():
            results[name] = await self._load(name, folder)
        return dict(sorted(results.items()))

    async def _load(self, name: str, folder: Path) -> str:
        """Serve `folder` as `name` unless it is unchanged or cannot work; the rescan's result for it."""
        models = self.runtime.models
        served = next((m for m in models.served() if m.name == name), None)
        before = f"still serving {served.sha256[:12]}…" if served is not None else "not served"
        try:
            sha, serving = await asyncio.to_thread(_identity, folder, self.config)
        except Exception as exc:
            log.error("model %s refused, %s: %s", name, before, exc)
            return "refused"
        if served is not None and (served.sha256, served.serving) == (sha, serving):
            return "unchanged"
        model = next((m for m in models if (m.name, m.sha256, m.serving) == (name, sha, serving)), None)
        if model is None:  # not a model that is still retiring under this name
            try:
                key = self.config.resume_key()
                model = await asyncio.to_thread(load_model, name, folder, self.config, key, self.metrics, self._launch)
            except Exception as exc:
                log.error("model %s refused, %s: %s", name, before, exc)
                return "refused"
            try:
                await self._start_scheduler(model.scheduler)
            except Exception as exc:  # the graph does not load, or its shapes fail the warm-up
                log.error("model %s refused (its engines did not start), %s: %s", name, before, exc)
                return "refused"
        old = models.install(model)
        if old is not None:
            self._retire(old)
        m = model.manifest
        log.info("model %s: now serving %s %s (sha256 %s…)", name, m.model.name, m.model.version, sha[:12])
        return "added" if served is None else "loaded"

    def _retire(self, model: LoadedModel) -> None:
        """Let `model` finish its streams, then drop it (and its name's metric series, if no longer served)."""

        async def retire() -> None:
            await self.runtime.models.retire_when_idle(model)
            if model.name not in self.runtime.models.names():
                self.metrics.forget(model.name)

        task = asyncio.get_running_loop().create_task(retire())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _watch(self, every_s: float) -> None:
        """Rescan whenever a poll every `every_s` seconds finds a folder added, removed or rewritten."""
        while True:
            await asyncio.sleep(every_s)
            now = await asyncio.to_thread(fingerprint, self.repository)
            if now != self._seen:
                self._seen = now
                await self.reload()

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new streams, let live ones finish within the grace, then stop."""
        grace = self.config.grace_seconds if grace_s is None else grace_s
        self._draining = True
        await self.health.enter_graceful_shutdown()
        self.runtime.serving = False
        if self._watcher is not None:
            self._watcher.cancel()
        for task in self._retiring:
            task.cancel()
        schedulers = [m.scheduler for m in self.runtime.models]
        for sched in schedulers:
            sched.stop_accepting()
        live, queued = sum(s.live for s in schedulers), sum(s.queued for s in schedulers)
        log.info("draining: %d live, %d queued streams; grace %.1f s", live, queued, grace)
        deadline = time.monotonic() + grace
        for sched in schedulers:
            if not await sched.drain(max(0.0, deadline - time.monotonic())):
                log.warning("grace period over: failing %d streams", sched.live + sched.queued)
        for sched in schedulers:
            await sched.close()
        await self.http.stop()
        await self.server.stop(1.0)
        if self.metrics_http is not None:
            self.metrics_http.close()
        log.info("stopped")


def _interceptors(config: ServerConfig, metrics: Metrics) -> list[grpc.aio.ServerInterceptor]:
    """Metrics first (outermost), so it counts what authentication and the decode guard refuse."""
    chain: list[grpc.aio.ServerInterceptor] = [GrpcMetricsInterceptor(metrics)]
    tokens = config.bearer_tokens()
    if tokens:
        chain.append(BearerAuthInterceptor(tokens))
    chain.append(DecodeGuardInterceptor())
    return chain


def _options(config: ServerConfig) -> list[tuple[str, int]]:
    """gRPC server arguments: no port sharing, the connection age and the keepalive pings accepted."""

    def ms(seconds: float) -> int:
        return min(round(seconds * 1000), _GRPC_MAX_MS)

    policy = config.connections
    options = [
        ("grpc.so_reuseport", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", ms(policy.min_ping_interval_seconds)),
    ]
    if policy.max_connection_age_seconds > 0:
        options.append(("grpc.max_connection_age_ms", ms(policy.max_connection_age_seconds)))
        if policy.max_connection_age_grace_seconds is not None:  # gRPC's default: no limit
            options.append(("grpc.max_connection_age_grace_ms", ms(policy.max_connection_age_grace_seconds)))
    return options


def _tls_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS (mutual when a client CA is set) from PEM files, or None for plaintext."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    try:
        chain, key = config.tls_cert.read_bytes(), config.tls_key.read_bytes()
        client_ca = config.tls_client_ca.read_bytes() if config.tls_client_ca is not None else None
    except OSError as exc:
        raise ConfigError(f"cannot read a TLS file: {exc}") from exc
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=client_ca, require_client_auth=bool(client_ca))


def _write_port(path: Path, port: int) -> None:
    """Atomically, so a watcher never reads a half-written file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{port}\n")
    tmp.replace(path)


async def serve(config: ServerConfig) -> int:
    """Run until SIGTERM/SIGINT, then drain. Returns the process exit code."""
    server = CharRNNServer(config, metrics=Metrics(REGISTRY))  # the default registry adds process metrics
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[dict[str, str]]] = set()

    def reload() -> None:
        task = loop.create_task(server.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
    await stop.wait()
    log.info("signal received")
    await server.stop()
    return 0
