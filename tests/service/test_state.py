"""Resume tokens (signing, binding to the model) and the session store's bounds."""

from __future__ import annotations

import numpy as np
import pytest

from service.context import Context
from service.errors import ForeignToken, InvalidToken, SessionBusy, SessionNotFound
from service.sessions import SessionStore
from service.tokens import TokenCodec

SHA_A = "ab" * 32
SHA_B = "cd" * 32


def _ctx(seed: int | None = 5) -> Context:
    rng = np.random.default_rng(0)
    states = tuple(rng.standard_normal((2, 8)).astype(np.float32) for _ in range(2))
    return Context(states, rng.standard_normal(10).astype(np.float32), seed, 17)


def _codec(key: bytes = b"k1", sha: str = SHA_A) -> TokenCodec:
    return TokenCodec(key, sha, num_states=2, layers=2, hidden=8, vocab=10)


def test_round_trip_is_exact() -> None:
    ctx = _ctx()
    back = _codec().decode(_codec().encode(ctx))
    assert back.seed == 5 and back.position == 17
    assert back.states is not None and ctx.states is not None
    assert all(np.array_equal(a, b) for a, b in zip(back.states, ctx.states, strict=True))
    assert back.logits is not None and np.array_equal(back.logits, ctx.logits)
    empty = _codec().decode(_codec().encode(Context()))
    assert empty.states is None and empty.logits is None and empty.seed is None


def test_tampered_truncated_and_foreign_tokens_are_refused() -> None:
    token = bytearray(_codec().encode(_ctx()))
    for i in (len(token) // 2, 5, len(token) - 1):
        bad = bytearray(token)
        bad[i] ^= 0x01
        with pytest.raises(InvalidToken, match=r"signature|malformed"):
            _codec().decode(bytes(bad))
    with pytest.raises(InvalidToken):
        _codec().decode(bytes(token[:-40]))
    with pytest.raises(InvalidToken, match="signature"):
        _codec(key=b"other").decode(bytes(token))
    with pytest.raises(ForeignToken, match=r"another model|belongs"):
        _codec(sha=SHA_B).decode(_codec(sha=SHA_A).encode(_ctx()))
    with pytest.raises(InvalidToken, match="malformed"):
        _codec().decode(b"hello")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_sessions_expire_after_ttl_and_are_not_found() -> None:
    clock = FakeClock()
    evicted: list[str] = []
    store = SessionStore(10, ttl_s=5.0, max_bytes=1 << 20, clock=clock, on_evict=evicted.append)
    sid = store.create(_ctx())
    clock.now = 4.0
    store.get(sid)  # refreshes the TTL
    clock.now = 8.0
    assert store.get(sid).seed == 5
    clock.now = 14.0
    with pytest.raises(SessionNotFound):
        store.get(sid)
    assert evicted == ["ttl"] and store.evictions["ttl"] == 1
    with pytest.raises(SessionNotFound):
        store.get("nope")


def test_sessions_are_bounded_by_count_and_memory_lru() -> None:
    store = SessionStore(3, ttl_s=100.0, max_bytes=1 << 20)
    ids = [store.create(_ctx(i)) for i in range(3)]
    store.get(ids[0])  # most recently used now
    ids.append(store.create(_ctx(3)))
    assert len(store) == 3 and store.evictions["count"] == 1
    with pytest.raises(SessionNotFound):
        store.get(ids[1])  # the least recently used went
    assert store.get(ids[0]).seed == 0
    small = SessionStore(100, ttl_s=100.0, max_bytes=3 * _ctx().nbytes)
    for i in range(5):
        small.create(_ctx(i))
    assert len(small) == 3 and small.evictions["memory"] == 2 and small.nbytes <= 3 * _ctx().nbytes


def test_a_session_serves_one_call_at_a_time() -> None:
    store = SessionStore(3, ttl_s=100.0, max_bytes=1 << 20)
    sid = store.create(_ctx(1))
    store.acquire(sid)
    with pytest.raises(SessionBusy):
        store.acquire(sid)
    store.release(sid, _ctx(2))
    assert store.acquire(sid).seed == 2
    store.release(sid, None)
    assert store.get(sid).seed == 2
