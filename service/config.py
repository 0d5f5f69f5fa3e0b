"""Server configuration: every knob with its default in one place (docs/api.md lists them).

Light on purpose (no grpc, no onnxruntime): the CLI builds these from flags and `CHARRNN_*`
environment variables before anything heavy is imported.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# Used only with --dev: anyone can forge tokens signed with a published key.
DEV_HMAC_KEY = b"charrnn-development-key-do-not-use-in-production"
# `charrnn serve`'s /metrics port: the one OpenTelemetry's Prometheus exporter uses by convention.
DEFAULT_METRICS_PORT = 9464


class ConfigError(Exception):
    """The configuration cannot work; the message says which setting to fix."""


@dataclass(frozen=True)
class EngineOptions:
    """ONNX Runtime session options. Defaults measured on the 2-vCPU box (docs/api.md)."""

    intra_op_threads: int = 1
    inter_op_threads: int = 1
    # Spinning keeps a core busy between calls; on 2 shared vCPUs it steals time from gRPC.
    allow_spinning: bool = False


@dataclass(frozen=True)
class Limits:
    """Admission and request-size limits; beyond them requests fail with a status naming the limit."""

    max_live_streams: int = 64  # rows advanced together per step; 1 turns batching off
    max_queued_streams: int = 256  # waiting for a slot; beyond: RESOURCE_EXHAUSTED
    max_prompt_chars: int = 8192  # prompt / fed text
    max_chars: int = 20000  # largest max_chars a request may ask for
    default_max_chars: int = 256  # when a request leaves max_chars 0
    max_stop_strings: int = 8
    max_stop_chars: int = 64
    max_score_chars: int = 65536
    max_sessions: int = 1024  # least recently used evicted beyond it
    session_ttl_s: float = 600.0  # idle time before a session expires
    session_memory_bytes: int = 64 << 20  # total state bytes held by sessions (LRU eviction)
    max_watched_units: int = 16  # hidden units one Generate may stream values of
    min_checkpoint_chars: int = 64  # smallest checkpoint_every_chars: bounds the cost of mid-stream tokens


@dataclass(frozen=True)
class ServerConfig:
    model_dir: Path = Path("models/default")
    host: str = "127.0.0.1"
    port: int = 50051
    port_file: Path | None = None  # written once SERVING (useful with --port 0)
    metrics_port: int | None = None  # /metrics over HTTP on `host`; 0 = any free port; None = not served
    metrics_port_file: Path | None = None  # the bound metrics port, written once SERVING
    limits: Limits = field(default_factory=Limits)
    engine: EngineOptions = field(default_factory=EngineOptions)
    flush_interval_s: float = 0.1  # coalescing: wake a stream's sender at most this often
    max_chunk_chars: int = 256  # ... or once this many characters wait
    grace_s: float = 20.0  # SIGTERM: how long live streams may drain
    retry_pushback_ms: int = 1000  # grpc-retry-pushback-ms sent with UNAVAILABLE (draining) and RESOURCE_EXHAUSTED
    hmac_key: str | None = None
    hmac_key_file: Path | None = None  # a file holding the key (a mounted Secret); one trailing newline ignored
    dev: bool = False  # allow the published development key when no key is set
    metrics_host: str | None = None  # /metrics bind address; None = `host` (docs/operations.md: keep it private)
    tls_cert: Path | None = None  # PEM server certificate chain; with tls_key, gRPC is served over TLS only
    tls_key: Path | None = None  # PEM private key of tls_cert
    tls_client_ca: Path | None = None  # PEM CA bundle: require client certificates signed by it (mutual TLS)
    auth_tokens: tuple[str, ...] = ()  # bearer tokens accepted (with auth_token_file's); none = no authentication
    auth_token_file: Path | None = None  # one token per line; health stays open without a token

    def bearer_tokens(self) -> tuple[str, ...]:
        """Accepted bearer tokens: `auth_tokens` plus the file's (ConfigError if it can't be read)."""
        return self.auth_tokens + (read_token_file(self.auth_token_file) if self.auth_token_file else ())

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
        lim = self.limits
        checks = {
            "max_live_streams": lim.max_live_streams >= 1,
            "max_watched_units": lim.max_watched_units >= 0,
            "min_checkpoint_chars": lim.min_checkpoint_chars >= 1,
            "max_queued_streams": lim.max_queued_streams >= 0,
            "default_max_chars": 1 <= lim.default_max_chars <= lim.max_chars,
            "flush_interval": self.flush_interval_s >= 0,
            "max_chunk_chars": self.max_chunk_chars >= 1,
            "grace": self.grace_s >= 0,
            "retry_pushback_ms": self.retry_pushback_ms >= 0,
            "metrics_port": self.metrics_port is None or 0 <= self.metrics_port <= 65535,
            "intra_op_threads": self.engine.intra_op_threads >= 0,
            "tls_cert/tls_key (both or neither)": (self.tls_cert is None) == (self.tls_key is None),
            "tls_client_ca (needs tls_cert)": self.tls_client_ca is None or self.tls_cert is not None,
            "auth_tokens (empty token)": all(t.strip() for t in self.auth_tokens),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"invalid settings: {', '.join(bad)}")


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


def split_tokens(value: str | None) -> tuple[str, ...]:
    """Comma-separated bearer tokens (CHARRNN_AUTH_TOKENS)."""
    return tuple(t.strip() for t in (value or "").split(",") if t.strip())
