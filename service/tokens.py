"""Resume tokens: a `Context` serialised and signed (HMAC-SHA256), bound to one model file's sha256.

Any replica with the same key and model continues a token exactly; a token for another model is refused as
foreign (FAILED_PRECONDITION), a malformed or altered one as invalid (INVALID_ARGUMENT).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from service.context import Context
from service.errors import ForeignToken, InvalidToken

TOKEN_MAGIC = b"CRT"
TOKEN_VERSION = 1
_MAC_SIZE = 32
# magic, version, model sha256, has_seed, seed, position, n_logits, n_states, layers, hidden
_HEADER = struct.Struct("<3sB32sBQQIBHI")
E = TypeVar("E", bound=Exception)


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
