"""Server-sent events as OpenAI's streaming endpoints frame them: one JSON object per `data:` line, a blank
line after each event, and a literal `data: [DONE]` event at the end.

JSON never contains a raw newline (json.dumps escapes it), so every event is exactly one `data:` line.
"""

from __future__ import annotations

import json
from typing import Any

CONTENT_TYPE = "text/event-stream"
DONE = b"data: [DONE]\n\n"
# No caching, and no buffering by a proxy in between (nginx honours X-Accel-Buffering).
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def event(payload: dict[str, Any]) -> bytes:
    """One event carrying `payload` as compact JSON (non-ASCII characters as themselves, UTF-8)."""
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
