"""Server-side sessions: contexts kept by id, bounded by count (LRU), total bytes (LRU) and idle TTL."""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from service.context import Context
from service.errors import SessionBusy, SessionNotFound


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
