"""Server configuration: every setting with its default, declared once (charrnn.settings).

The dataclasses are the source of the flags, the `CHARRNN_*` variables, `--help` and the settings table
in docs/operations.md (a test compares them). Light on purpose (no grpc, no onnxruntime): the CLI builds
them before anything heavy is imported.
"""

from __future__ import annotations

import hmac
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from charrnn.engine import EngineOptions
from charrnn.settings import setting
from service.stream import FlushPolicy

log = logging.getLogger(__name__)

# Used only with --dev: anyone can forge tokens signed with a published key.
DEV_HMAC_KEY = b"charrnn-development-key-do-not-use-in-production"
# `charrnn serve`'s /metrics port: the one OpenTelemetry's Prometheus exporter uses by convention.
DEFAULT_METRICS_PORT = 9464
# Served when neither --model nor --model-repository is given.
DEFAULT_MODEL_DIR = Path("models/default")


class ConfigError(Exception):
    """The configuration cannot work; the message says which setting to fix."""


@dataclass(frozen=True)
class Limits:
    """Admission, request-size and session limits; beyond them requests fail with a status naming the limit."""

    max_live_streams: int = setting(
        64, "live streams advanced together per step; 1 turns batching off", aliases=("--max-batch",)
    )
    max_queued_streams: int = setting(
        256, "streams waiting for a slot; beyond: RESOURCE_EXHAUSTED", aliases=("--max-queue",)
    )
    max_prompt_chars: int = setting(8192, "longest prompt or fed text")
    max_request_chars: int = setting(20000, "largest `max_chars` a request may ask for", aliases=("--max-chars-limit",))
    default_max_chars: int = setting(256, "`max_chars` when a request leaves it 0")
    max_stop_strings: int = setting(8, "stop strings per request")
    max_stop_chars: int = setting(64, "longest stop string")
    max_score_chars: int = setting(65536, "longest text for `Score`")
    max_watched_units: int = setting(16, "hidden units one `Generate` may watch (0 turns watching off)")
    min_checkpoint_chars: int = setting(
        64, "smallest non-zero `checkpoint_every_chars`: bounds the cost of mid-stream resume tokens"
    )
    max_session_streams: int = setting(
        256, "open Session streams; beyond: RESOURCE_EXHAUSTED with the retry hint (each holds a state in memory)"
    )
    max_sessions: int = setting(1024, "server-side sessions kept; the least recently used is evicted beyond it")
    session_ttl_seconds: float = setting(600.0, "idle seconds before a session expires", aliases=("--session-ttl",))
    session_memory_mb: float = setting(64.0, "memory bound on the sessions' state; least recently used evicted")
    retry_pushback_ms: int = setting(
        1000, "retry hint (`grpc-retry-pushback-ms`) sent with draining UNAVAILABLE and RESOURCE_EXHAUSTED"
    )

    @property
    def session_memory_bytes(self) -> int:
        return int(self.session_memory_mb * (1 << 20))


@dataclass(frozen=True)
class SchedulingOptions:
    """How the engines share the machine (docs/benchmarks.md has the measurements behind the defaults)."""

    # One engine process per core the server may use, each with one ONNX Runtime thread: a pod's CPU limit is
    # read from its cgroup, so the default fits a container too (deploy/k8s still sets it explicitly).
    engines: int = setting(
        0, "engine processes, each stepping its own rows on its own core (0: one per CPU the server may use)"
    )
    prefill_chunk_chars: int = setting(
        256, "prompts, Score texts and Session feeds run this many characters per model call, between decode steps"
    )
    max_prefill_rows: int = setting(32, "texts advanced together by one prefill call")
    prefill_share: float = setting(
        0.5, "while streams decode, the share of an engine's time prefill may take (the rest is decoding)"
    )
    # Measured (docs/benchmarks.md): at 256 streams TTFC p99 55 -> 38 ms, and a second model's p99 beside a
    # loaded one 2.0x -> 1.6x its alone figure, at the same throughput: the front's wake-ups stop queueing
    # behind model steps.
    engine_niceness: int = setting(
        5, "engine processes run this much nicer than the front, so its I/O (first characters, flushes) comes first"
    )
    engine_stall_seconds: float = setting(
        10.0,
        "an engine with work that sends nothing for this long is wedged: it is killed, its streams end "
        "UNAVAILABLE with the retry hint and a new engine takes its place",
    )

    def engine_count(self) -> int:
        """`engines`, with 0 resolved to the CPUs this process may use."""
        return self.engines or available_cpus()


def available_cpus() -> int:
    """CPUs this process may run on: its affinity, capped by a cgroup v2 CPU quota (a container's CPU limit)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
    except (OSError, ValueError):
        return cpus
    if quota == "max":
        return cpus
    return max(1, min(cpus, math.ceil(int(quota) / int(period))))


@dataclass(frozen=True)
class ConnectionPolicy:
    """How long a client's connection lives and how often it may ping (clients: charrnn.client.Balancing)."""

    max_connection_age_seconds: float = setting(
        60.0,
        "a client connection this old (give or take a tenth) is asked to go away (GOAWAY): new calls reconnect, so "
        "clients behind a Service reach new pods and re-resolve DNS; 0 = never",
    )
    max_connection_age_grace_seconds: float | None = setting(
        None,
        "calls still running on an aged connection after this long are ended (UNAVAILABLE); unset: they run "
        "to their end (a Session stream lasts as long as its client keeps it)",
        shown="unbounded",
    )
    min_ping_interval_seconds: float = setting(
        10.0,
        "shortest interval between a client's keepalive pings the server accepts while calls are open; more "
        "often and it closes the connection (too_many_pings); keep it below clients' --keepalive-ms",
    )


@dataclass(frozen=True)
class ServerConfig:
    """Everything `charrnn serve` is told; each field is a flag and a `CHARRNN_*` variable (charrnn.settings)."""

    model_dir: Path | None = setting(
        None,
        "one model artifact directory, served under the folder's name (a repository of one)",
        aliases=("--model",),
        shown=f"{DEFAULT_MODEL_DIR} (without --model-repository)",
    )
    model_repository: Path | None = setting(
        None, "serve every artifact folder in this directory, each under its folder's name (instead of --model)"
    )
    default_model: str | None = setting(
        None, "the model a request without `model` goes to; unset: the only model, else the one named `default`"
    )
    watch_repository: float = setting(
        0.0, "rescan the models every this many seconds (as on SIGHUP: add, retire, reload); 0 = only on SIGHUP"
    )
    host: str = setting("127.0.0.1", "address to bind (0.0.0.0 in containers)")
    port: int = setting(50051, "gRPC port (0 = any free port)")
    port_file: Path | None = setting(None, "write the bound port here once SERVING (useful with --port 0)")
    metrics_port: int = setting(DEFAULT_METRICS_PORT, "/metrics HTTP port (0 = any free port, -1 = off)")
    metrics_host: str | None = setting(None, "/metrics bind address; unset: --host (keep it private)")
    metrics_port_file: Path | None = setting(None, "write the bound /metrics port here once SERVING")
    http_port: int = setting(
        -1, "HTTP port: OpenAI-compatible /v1/completions and the playground page (0 = any free port, -1 = off)"
    )
    http_port_file: Path | None = setting(None, "write the bound HTTP port here once SERVING")
    http_max_body_kb: int = setting(256, "largest HTTP request body; beyond: 413")
    http_max_string_chars: int = setting(
        65536, "longest string in an HTTP request body (a prompt, a stop string, a resume token); beyond: 400"
    )
    grace_seconds: float = setting(20.0, "SIGTERM: how long live streams may drain", aliases=("--grace",))
    hmac_key: str | None = setting(None, "secret that signs resume tokens (this or --hmac-key-file unless --dev)")
    hmac_key_file: Path | None = setting(
        None, "file holding the HMAC key (a mounted Secret); one trailing newline ignored"
    )
    dev: bool = setting(False, "allow the published development HMAC key when no key is set (logs a warning)")
    tls_cert: Path | None = setting(None, "PEM certificate chain: serve gRPC (and HTTP) over TLS only (with --tls-key)")
    tls_key: Path | None = setting(None, "PEM private key of --tls-cert")
    tls_client_ca: Path | None = setting(None, "PEM CA bundle: require client certificates signed by it (mutual TLS)")
    auth_token_file: Path | None = setting(
        None, "bearer tokens, one per line; when any is set, every RPC but health needs one"
    )
    auth_tokens: str = setting("", "bearer tokens, comma-separated (added to the file's)", env_only=True, shown="–")
    limits: Limits = field(default_factory=Limits)
    flush: FlushPolicy = field(default_factory=FlushPolicy)
    scheduling: SchedulingOptions = field(default_factory=SchedulingOptions)
    connections: ConnectionPolicy = field(default_factory=ConnectionPolicy)
    engine: EngineOptions = field(default_factory=EngineOptions)

    def models(self) -> tuple[Path, bool]:
        """Where the models are: (the repository directory, False) or (the one artifact directory, True)."""
        if self.model_repository is not None:
            if self.model_dir is not None:
                raise ConfigError("set --model or --model-repository, not both")
            return self.model_repository, False
        return (self.model_dir if self.model_dir is not None else DEFAULT_MODEL_DIR), True

    def bearer_tokens(self) -> tuple[str, ...]:
        """Accepted bearer tokens: `auth_tokens` plus the file's (ConfigError if it can't be read)."""
        listed = tuple(t.strip() for t in self.auth_tokens.split(",") if t.strip())
        return listed + (read_token_file(self.auth_token_file) if self.auth_token_file else ())

    def resume_key(self) -> bytes:
        """The HMAC key for resume tokens; refuses to invent one unless --dev."""
        if self.hmac_key and self.hmac_key_file:
            raise ConfigError("set --hmac-key or --hmac-key-file, not both")
        secret = read_key_file(self.hmac_key_file) if self.hmac_key_file else self.hmac_key
        if secret:
            key = secret.encode("utf-8")
            if hmac.compare_digest(key, DEV_HMAC_KEY) and not self.dev:
                raise ConfigError("--hmac-key is the published development key; set a secret key (or pass --dev)")
            return key
        if self.dev:
            log.warning("using the development HMAC key (--dev): anyone can forge resume tokens; not for production")
            return DEV_HMAC_KEY
        raise ConfigError(
            "no resume-token key: set --hmac-key-file / CHARRNN_HMAC_KEY_FILE or --hmac-key / CHARRNN_HMAC_KEY "
            "(or pass --dev for a development default)"
        )

    def validate(self) -> None:
        """ConfigError naming every setting out of its range (by flag, as a person would type it)."""
        lim, flush, conn = self.limits, self.flush, self.connections
        grace = conn.max_connection_age_grace_seconds
        checks = {
            "--max-live-streams must be >= 1": lim.max_live_streams >= 1,
            "--max-queued-streams must be >= 0": lim.max_queued_streams >= 0,
            "--max-session-streams must be >= 0": lim.max_session_streams >= 0,
            "--max-watched-units must be >= 0": lim.max_watched_units >= 0,
            "--min-checkpoint-chars must be >= 1": lim.min_checkpoint_chars >= 1,
            "--default-max-chars must be in [1, --max-request-chars]": 1
            <= lim.default_max_chars
            <= lim.max_request_chars,
            "--retry-pushback-ms must be >= 0": lim.retry_pushback_ms >= 0,
            "--flush-interval-ms must be >= 0": flush.flush_interval_ms >= 0,
            "--max-chunk-chars must be >= 1": flush.max_chunk_chars >= 1,
            "--grace-seconds must be >= 0": self.grace_seconds >= 0,
            "--watch-repository must be >= 0": self.watch_repository >= 0,
            "--metrics-port must be -1 (off) or a port": -1 <= self.metrics_port <= 65535,
            "--http-port must be -1 (off) or a port": -1 <= self.http_port <= 65535,
            "--http-max-body-kb must be >= 1": self.http_max_body_kb >= 1,
            "--http-max-string-chars must be >= 1": self.http_max_string_chars >= 1,
            "--intra-op-threads must be >= 0": self.engine.intra_op_threads >= 0,
            "--engines must be >= 0": self.scheduling.engines >= 0,
            "--prefill-chunk-chars must be >= 1": self.scheduling.prefill_chunk_chars >= 1,
            "--max-prefill-rows must be >= 1": self.scheduling.max_prefill_rows >= 1,
            "--prefill-share must be in (0, 1)": 0.0 < self.scheduling.prefill_share < 1.0,
            "--engine-stall-seconds must be > 0": self.scheduling.engine_stall_seconds > 0,
            "--engine-niceness must be in [0, 19]": 0 <= self.scheduling.engine_niceness <= 19,
            "--max-connection-age-seconds must be >= 0": conn.max_connection_age_seconds >= 0,
            "--max-connection-age-grace-seconds must be >= 0 (or unset)": grace is None or grace >= 0,
            "--min-ping-interval-seconds must be >= 0": conn.min_ping_interval_seconds >= 0,
            "--tls-cert and --tls-key go together": (self.tls_cert is None) == (self.tls_key is None),
            "--tls-client-ca needs --tls-cert": self.tls_client_ca is None or self.tls_cert is not None,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"invalid settings: {'; '.join(bad)}")


def read_token_file(path: Path) -> tuple[str, ...]:
    """Bearer tokens, one per line; blank lines and `#` comments are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read the auth token file {path}: {exc}") from exc
    return tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))


def read_key_file(path: Path) -> str:
    """The resume-token key in `path` (a Kubernetes Secret mount); ConfigError if unreadable or empty."""
    try:
        key = path.read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the HMAC key file {path}: {exc}") from exc
    if not key:
        raise ConfigError(f"the HMAC key file {path} is empty")
    return key
