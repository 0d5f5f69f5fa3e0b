"""A stream read to its end in-process, for tests that drive a Scheduler directly."""

from __future__ import annotations

from service.stream import Stream

Outcome = tuple[str, BaseException | None]  # the text, and the error the stream ended with (None: it finished)


async def read(stream: Stream) -> Outcome:
    parts = []
    try:
        async for chunk in stream.chunks():
            parts.append(chunk.text)
    except Exception as exc:
        return "".join(parts), exc
    return "".join(parts), None
