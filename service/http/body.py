"""An HTTP request's body as JSON, within bounds, so that what a body holds is limited before any of it is used.

`--http-max-body-kb` bounds the bytes (after decompression, so a gzip bomb stops there too); the parse is then
bounded as well: how deep arrays and objects nest (a 50,000-deep array exhausts the parser's recursion), how
long a number literal is (Python refuses to convert integers of over 4,300 digits; none of the API's numbers
needs more than 20), and how long a string is (`--http-max-string-chars`). JSON has no NaN or Infinity, so
they are refused too. Every refusal is a 400 whose message names the bound. Numbers go through the stdlib
parser's own hooks (before conversion); depth and strings are checked in one pass over the parsed value,
level by level, and the parser's RecursionError (far deeper than the bound) is the same refusal.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from charrnn.quoting import quote
from service.errors import InvalidRequest
from service.status import RequestTooLarge

MAX_DEPTH = 16  # arrays and objects nested in each other; the API's own bodies nest 3 deep ({"charrnn": {"watch": []}})
MAX_NUMBER_CHARS = 64  # a number literal, sign and exponent included; a uint64 seed has 20 digits


class Bodies:
    """Reads request bodies as JSON within the edge's bounds."""

    def __init__(self, max_body_kb: int, max_string_chars: int):
        self.max_body_kb = max_body_kb
        self.max_string_chars = max_string_chars

    async def read(self, request: web.Request) -> Any:
        """The request's JSON body; RequestTooLarge (413) or InvalidRequest (400) naming what is wrong."""
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise RequestTooLarge(f"the request body is over {self.max_body_kb} KB (http_max_body_kb)") from exc
        except web.RequestPayloadError as exc:  # a Content-Encoding or chunked framing that does not decode
            encoding = request.headers.get("Content-Encoding")
            why = "its chunked framing is malformed" if encoding is None else f"Content-Encoding {quote(encoding)}"
            raise InvalidRequest(f"the request body cannot be decoded ({why})") from exc
        return self.parse(raw)

    def parse(self, raw: bytes) -> Any:
        try:
            value = json.loads(raw, parse_int=_integer, parse_float=_real, parse_constant=_constant)
        except RecursionError:
            raise _too_deep() from None
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
        self._check(value)
        return value

    def _check(self, value: Any) -> None:
        """Depth and string lengths, one nesting level at a time (no recursion, whatever the value)."""
        level, depth = [value], 0
        while level:
            strings = [x for x in level if type(x) is str]
            longest = max(map(len, strings), default=0)
            if longest > self.max_string_chars:
                message = f"a string in the request body has {longest} characters; the limit is "
                raise InvalidRequest(message + f"{self.max_string_chars} (http_max_string_chars)")
            containers = [x for x in level if type(x) is list or type(x) is dict]
            if containers:
                depth += 1
                if depth > MAX_DEPTH:
                    raise _too_deep()
            level = [child for c in containers for child in (c if isinstance(c, list) else [*c, *c.values()])]


def _too_deep() -> InvalidRequest:
    return InvalidRequest(f"the request body nests arrays and objects more than {MAX_DEPTH} deep")


def _number(literal: str) -> None:
    if len(literal) > MAX_NUMBER_CHARS:
        raise InvalidRequest(
            f"a number in the request body has {len(literal)} characters; the limit is {MAX_NUMBER_CHARS}"
        )


def _integer(literal: str) -> int:
    _number(literal)
    return int(literal)


def _real(literal: str) -> float:
    _number(literal)
    return float(literal)


def _constant(name: str) -> float:
    raise InvalidRequest(f"the request body is not valid JSON: {name} is not a JSON value")
