"""Server-sent events read off the wire: one streamed completion through a plain HTTP/1.1 client, and the
framing every SSE test checks (OpenAI's: one `data:` line per event, a blank line after each, `data: [DONE]`
last). Shared by the HTTP tests and the container tests, which stream through a published port."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from typing import Any

DONE = b"data: [DONE]"


@dataclass
class Streamed:
    status: int
    headers: dict[str, str]  # lower-case names
    reads: list[bytes]  # the body as the client received it, read by read by read

    @property
    def raw(self) -> bytes:
        return b"".join(self.reads)


def stream_completion(host: str, port: int, body: dict[str, Any], timeout: float = 60) -> Streamed:
    """POST /v1/completions with `stream: true` and read the body as it arrives (chunked transfer decoded)."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        payload = json.dumps({**body, "stream": True})
        connection.request("POST", "/v1/completions", payload, {"Content-Type": "application/json"})
        response = connection.getresponse()
        reads = []
        while chunk := response.read1(65536):
            reads.append(chunk)
        headers = {name.lower(): value for name, value in response.getheaders()}
        return Streamed(response.status, headers, reads)
    finally:
        connection.close()


def events(raw: bytes) -> list[dict[str, Any]]:
    """The JSON payloads of a whole event stream, once its framing is checked (the final [DONE] left out)."""
    assert raw.endswith(b"\n\n"), raw[-200:]
    framed = raw.split(b"\n\n")[:-1]
    assert framed[-1] == DONE, framed[-1][:200]
    assert all(e.startswith(b"data: ") and b"\n" not in e for e in framed), "one data line per event"
    return [json.loads(e[len(b"data: ") :]) for e in framed[:-1]]


def text(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["text"] for c in chunks)


def check_stream(host: str, port: int, prompt: str, max_tokens: int, seed: int = 1) -> list[dict[str, Any]]:
    """Stream a completion of `max_tokens` characters and check it end to end: 200 with the event-stream
    headers, the framing and [DONE], the length, the finish reason and the resume token on the last chunk;
    and that it came in pieces (the first read ends before [DONE]: nothing on the way buffered it whole)."""
    streamed = stream_completion(host, port, {"prompt": prompt, "max_tokens": max_tokens, "seed": seed})
    assert streamed.status == 200, streamed.raw[:500]
    assert streamed.headers["content-type"].startswith("text/event-stream"), streamed.headers
    assert DONE not in streamed.reads[0], "the whole stream arrived in one read"
    chunks = events(streamed.raw)
    assert len(chunks) >= 2 and len(text(chunks)) == max_tokens
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] == "length" and last["charrnn"]["resume_token"]
    return chunks
