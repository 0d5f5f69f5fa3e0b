"""A small blocking client of the HTTP completions route, for the benchmarks' threads: one keep-alive
connection, a whole completion or its server-sent events (a stream can be cut after a few events, which
cancels it on the server), the final resume token, and refusals as `HttpRefusal` with the retry hint."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from dataclasses import dataclass
from typing import Any

SHOWN = 300  # characters of an error body kept in a message


class HttpRefusal(Exception):
    """A non-200 answer, or an error event in a stream; `code` is what a report counts it under."""

    def __init__(self, code: str, message: str, retry_after_ms: int | None = None):
        super().__init__(f"{code}: {message[:SHOWN]}")
        self.code = code
        self.retry_after_ms = retry_after_ms


@dataclass(frozen=True)
class Completion:
    text: str
    resume_token: str | None  # None when cut short
    events: int  # server-sent events read (0 for a whole completion)


class CompletionsClient:
    """POST /v1/completions over one connection (reopened after an error or a cut stream)."""

    def __init__(self, url: str, timeout: float):
        parts = urllib.parse.urlsplit(url)
        self.host, self.port, self.timeout = parts.hostname or "127.0.0.1", parts.port or 80, timeout
        self.conn: http.client.HTTPConnection | None = None

    def post(self, body: bytes, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            self.conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json", **(headers or {})})
            return self.conn.getresponse()
        except BaseException:
            self.close()
            raise

    def status(self, body: bytes, headers: dict[str, str] | None = None) -> int:
        """Send raw bytes as a body over a connection of their own (a server may close one whose body it
        refused); the status (the answer is read and dropped)."""
        try:
            response = self.post(body, headers)
            response.read()
        finally:
            self.close()
        return response.status

    def complete(self, body: dict[str, Any], cut_after: int | None = None) -> Completion:
        """The completion; with `stream` in `body`, read event by event, closing the connection after
        `cut_after` events when given (the server then cancels the stream)."""
        response = self.post(json.dumps(body).encode())
        try:
            if response.status != 200:
                raise _refusal(response)
            if body.get("stream"):
                return self._events(response, cut_after)
            answer = json.loads(response.read())
        except BaseException:
            self.close()
            raise
        return Completion(answer["choices"][0]["text"], answer["charrnn"]["resume_token"], 0)

    def _events(self, response: http.client.HTTPResponse, cut_after: int | None) -> Completion:
        parts: list[str] = []
        token = None
        for line in response:
            if line.strip() == b"data: [DONE]":
                response.read()  # the end of the chunked body: the connection is ready for the next request
                return Completion("".join(parts), token, len(parts))
            if not line.startswith(b"data: "):
                continue
            event = json.loads(line[len(b"data: ") :])
            if "error" in event:
                raise HttpRefusal(f"event {event['error'].get('code')}", str(event["error"].get("message")))
            parts.append(event["choices"][0]["text"])
            token = event.get("charrnn", {}).get("resume_token", token)
            if cut_after is not None and len(parts) >= cut_after:
                self.close()  # the server sees the connection go and cancels the stream
                return Completion("".join(parts), None, len(parts))
        raise HttpRefusal("unfinished", "the event stream ended without [DONE]")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _refusal(response: http.client.HTTPResponse) -> HttpRefusal:
    raw = response.read()
    hint = response.getheader("retry-after-ms")
    return HttpRefusal(f"HTTP {response.status}", raw.decode(errors="replace"), int(hint) if hint else None)
