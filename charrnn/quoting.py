"""Client input inside messages: quoted, and never more than a bounded prefix of it.

An error message travels back in the status (gRPC's `grpc-message` trailer, where ~8 KB of metadata is
the limit) and into logs, so a message must not grow with what a client sent. Every message that
quotes client input goes through `quote`.
"""

from __future__ import annotations

# Characters of client input a message quotes; a server-made session id (22 characters) fits whole.
QUOTE_CHARS = 32


def quote(text: str, limit: int = QUOTE_CHARS) -> str:
    """`repr(text)`, cut to its first `limit` characters (and the full length said) when longer."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text)} characters)"
