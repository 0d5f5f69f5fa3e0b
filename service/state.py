"""Recurrent state outside a stream: contexts, signed resume tokens and server-side sessions.

A `Context` is everything needed to continue a text exactly: the hidden state after every
character so far, the logits for the next character (computed by the same model call as that
state, so a continuation samples from the very same bits), and the counter-based generator
(seed, position). Continuing from a context samples at the next position, or first runs new
text from the state: the same computation an uninterrupted stream would have done.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from service.errors import ForeignToken, InvalidToken, SessionBusy, SessionNotFound

TOKEN_MAGIC = b"CRT"
TOKEN_VERSION = 1
_MAC_SIZE = 32
# magic, version, model sha256, has_seed, seed, position, n_logits, n_states, layers, hidden
_HEADER = struct.Struct("<3sB32sBQQIBHI")
E = TypeVar("E", bound=Exception)


@dataclass(frozen=True)
class Context:
    """A point in a text. `states` None means the zero state (start of a text)."""

    states: tuple[np.ndarray, ...] | None = None  # each float32 [layers, hidden]
    logits: np.ndarray | None = None  # float32 [vocab] for the next character; None at the start
    seed: int | None = None
    position: int = 0  # draws taken from the generator so far
    model: str | None = None  # sha256 of the model file the state belongs to; None: the start of a text

    @property
    def nbytes(self) -> int:
        arrays = [*(self.states or ()), *(() if self.logits is None else (self.logits,))]
        return sum(a.nbytes for a in arrays) + 64


class TokenCodec:
    """Serialises contexts into HMAC-SHA256-signed tokens bound to one model file's sha256."""

    def __init__(
        self,
        key: bytes,
        model_sha256: str,
        num_states: int,
        layers: int,
        hidden: int,
        vocab: int,
        on_refuse: Callable[[str], None] | None = None,
    ):
        if not key:
            raise ValueError("resume-token HMAC key must not be empty")
        self._key = key
        self._on_refuse = on_refuse  # called with the reason of every refused token (metrics)
        self._model = bytes.fromhex(model_sha256)
        self._model_hex = model_sha256
        self._shape = (num_states, layers, hidden)
        self._vocab = vocab

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()

    def encode(self, ctx: Context) -> bytes:
        _, layers, hidden = self._shape
        states = ctx.states if ctx.states is not None else ()
        logits = () if ctx.logits is None else (ctx.logits,)
        header = _HEADER.pack(
            TOKEN_MAGIC,
            TOKEN_VERSION,
            self._model,
            int(ctx.seed is not None),
            ctx.seed or 0,
            ctx.position,
            sum(a.size for a in logits),
            len(states),
            layers,
            hidden,
        )
        body = b"".join(np.ascontiguousarray(a, dtype="<f4").tobytes() for a in (*logits, *states))
        payload = header + body
        return payload + self._mac(payload)

    def _refuse(self, reason: str, exc: E) -> E:
        if self._on_refuse is not None:
            self._on_refuse(reason)
        return exc

    def decode(self, token: bytes) -> Context:
        """Verify and parse; InvalidToken when malformed or tampered, ForeignToken for another model."""
        if len(token) < _HEADER.size + _MAC_SIZE or not token.startswith(TOKEN_MAGIC):
            raise self._refuse("malformed", InvalidToken("resume token is malformed (not a charrnn resume token)"))
        payload, mac = token[:-_MAC_SIZE], token[-_MAC_SIZE:]
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise self._refuse(
                "signature",
                InvalidToken("resume token signature is invalid: it was altered or signed with another key"),
            )
        _, version, model, has_seed, seed, position, n_logits, n_states, layers, hidden = _HEADER.unpack_from(payload)
        if version != TOKEN_VERSION:
            raise self._refuse(
                "version",
                InvalidToken(f"resume token format version {version} is not supported (expected {TOKEN_VERSION})"),
            )
        if model != self._model:
            raise self._refuse(
                "foreign_model",
                ForeignToken(
                    f"resume token belongs to model {model.hex()[:12]}…, this server serves {self._model.hex()[:12]}…"
                ),
            )
        n, want_layers, want_hidden = self._shape
        if n_states not in (0, n) or (layers, hidden) != (want_layers, want_hidden) or n_logits not in (0, self._vocab):
            raise self._refuse("shape", InvalidToken("resume token state shape does not match the model"))
        offset = _HEADER.size
        size = layers * hidden
        if len(payload) != offset + 4 * (n_logits + n_states * size):
            raise self._refuse("malformed", InvalidToken("resume token is truncated or has trailing bytes"))
        data = np.frombuffer(payload, "<f4", offset=offset).astype(np.float32)
        logits = data[:n_logits] if n_logits else None
        flat = data[n_logits:]
        states = tuple(flat[size * i : size * (i + 1)].reshape(layers, hidden) for i in range(n_states))
        return Context(states or None, logits, seed if has_seed else None, position, self._model_hex)


def token_model(token: bytes) -> str | None:
    """The model sha256 a token claims (unverified: only to pick the codec that verifies it)."""
    if len(token) < _HEADER.size + _MAC_SIZE or not token.startswith(TOKEN_MAGIC):
        return None
    return token[4:36].hex()


@dataclass
class _Entry:
    ctx: Context
    expires: float
    busy: bool = False
    nbytes: int = field(default=0)


class SessionStore:
    """Server-side contexts by id, bounded by count (LRU), total bytes (LRU) and idle TTL.

    Thread-safe (a lock around an OrderedDict). `on_evict(reason)` is called for each
    eviction ("ttl", "count", "memory") so metrics can count them.
    """

    def __init__(
        self,
        max_sessions: int,
        ttl_s: float,
        max_bytes: int,
        clock: Callable[[], float] = time.monotonic,
        on_evict: Callable[[str], None] | None = None,
    ):
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._clock = clock
        self._on_evict = on_evict
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.evictions: dict[str, int] = {"ttl": 0, "count": 0, "memory": 0}

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def _evict(self, sid: str, reason: str) -> None:
        entry = self._entries.pop(sid)
        self._bytes -= entry.nbytes
        self.evictions[reason] += 1
        if self._on_evict is not None:
            self._on_evict(reason)

    def _expire(self) -> None:
        now = self._clock()
        for sid in [s for s, e in self._entries.items() if e.expires <= now and not e.busy]:
            self._evict(sid, "ttl")

    def _store(self, sid: str, entry: _Entry) -> None:
        old = self._entries.pop(sid, None)
        if old is not None:
            self._bytes -= old.nbytes
        entry.nbytes = entry.ctx.nbytes
        self._entries[sid] = entry
        self._bytes += entry.nbytes
        while len(self._entries) > self.max_sessions:
            self._evict(next(iter(self._entries)), "count")
        while self._bytes > self.max_bytes and len(self._entries) > 1:
            self._evict(next(iter(self._entries)), "memory")

    def create(self, ctx: Context) -> str:
        sid = secrets.token_urlsafe(16)
        with self._lock:
            self._expire()
            self._store(sid, _Entry(ctx, self._clock() + self.ttl_s))
        return sid

    def _live(self, sid: str) -> _Entry:
        self._expire()
        entry = self._entries.get(sid)
        if entry is None:
            raise SessionNotFound(f"session {sid!r} not found (unknown, expired or evicted)")
        return entry

    def get(self, sid: str) -> Context:
        """The session's context (read only; refreshes its TTL and LRU position)."""
        with self._lock:
            entry = self._live(sid)
            entry.expires = self._clock() + self.ttl_s
            self._entries.move_to_end(sid)
            return entry.ctx

    def acquire(self, sid: str) -> Context:
        """Take the session for one call; SessionBusy while another call holds it."""
        with self._lock:
            entry = self._live(sid)
            if entry.busy:
                raise SessionBusy(f"session {sid!r} is in use by another call")
            entry.busy = True
            self._entries.move_to_end(sid)
            return entry.ctx

    def release(self, sid: str, ctx: Context | None) -> None:
        """End a call: store its final context (None keeps the old one)."""
        with self._lock:
            entry = self._entries.get(sid)
            if entry is None:
                if ctx is None:
                    return
                entry = _Entry(ctx, 0.0)
            entry.busy = False
            entry.expires = self._clock() + self.ttl_s
            if ctx is not None:
                entry.ctx = ctx
            self._store(sid, entry)
