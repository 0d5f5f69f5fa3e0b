"""OpenAI's completions API in the service's terms: a JSON body becomes a `GenerationRequest`, results become
OpenAI's JSON bodies. Extensions live under one `charrnn` key, in requests and responses alike.

`max_tokens` counts characters (the model's tokens). Parameters OpenAI defines but this model cannot honour
(`n` > 1, `echo`, `logprobs`, penalties, ...) are refused by name unless they carry their neutral value,
and an unknown parameter is refused too: a misspelt `max_token` should not be silently ignored.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import numpy as np

from charrnn.artifact import Manifest
from charrnn.client.options import parse_units
from charrnn.quoting import QUOTE_CHARS, quote
from service.errors import InvalidRequest
from service.registry import LoadedModel
from service.requests import GenerationRequest
from service.stream import Finished

OWNER = "charrnn"
VALUES_DECIMALS = 5  # watched units' values in JSON: plenty for a colour, a third of float32's digits
# Parameters OpenAI defines that this server accepts only with their neutral value.
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (None, 1),
    "best_of": (None, 1),
    "echo": (None, False),
    "logprobs": (None, 0),
    "suffix": (None, ""),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "logit_bias": (None, {}),
}
KNOWN = {"model", "prompt", "max_tokens", "temperature", "top_p", "stop", "seed", "stream", "stream_options", "user"}
EXTENSIONS = {"top_k", "resume_token", "watch"}
# The Validator's request fields under their names here (its messages and `param` use these).
PARAMETERS = {"max_chars": "max_tokens", "top_k": f"{OWNER}.top_k", "watch": f"{OWNER}.watch"}


@dataclass(frozen=True)
class Completion:
    """A /v1/completions request, type-checked (range checks are the Validator's, under `PARAMETERS`' names)."""

    request: GenerationRequest
    model: str | None
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with the usage
    resume_token: bytes | None  # charrnn.resume_token: continue from this state


def _get(body: dict[str, Any], name: str, kinds: tuple[type, ...], what: str, param: str | None = None) -> Any:
    """body[name] if it is None or one of `kinds` (bool is not a number here), else a ParameterError."""
    value = body.get(name)
    if value is None or (isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)):
        return value
    raise InvalidRequest(f"{param or name} must be {what}, got {type(value).__name__}", param=param or name)


def parse(body: Any) -> Completion:
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    for name in body:
        if name not in KNOWN and name not in NEUTRAL and name != OWNER:
            message = f"unknown parameter {quote(name)} (extensions go under {OWNER!r})"
            raise InvalidRequest(message, param=name[:QUOTE_CHARS])
    for name, neutral in NEUTRAL.items():
        if body.get(name) not in neutral:
            raise InvalidRequest(f"{name} is not supported (leave it out, or {neutral[-1]!r})", param=name)
    prompt = _get(body, "prompt", (str,), "a string (lists of prompts and token ids are not supported)")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise InvalidRequest("stop must be a string or a list of strings", param="stop")
    options = _get(body, "stream_options", (dict,), "an object") or {}
    ext = _get(body, OWNER, (dict,), "an object") or {}
    for name in ext:
        if name not in EXTENSIONS:
            known = sorted(EXTENSIONS)
            message = f"unknown extension {quote(name)} (known: {known})"
            raise InvalidRequest(message, param=f"{OWNER}.{name[:QUOTE_CHARS]}")
    watch = _get(ext, "watch", (list,), 'a list of units like "c0:80"', f"{OWNER}.watch") or []
    if not all(isinstance(spec, str) for spec in watch):
        raise InvalidRequest(f'{OWNER}.watch must be a list of units like "c0:80"', param=f"{OWNER}.watch")
    try:
        units = [unit for spec in watch for unit in parse_units(spec)]
    except ValueError as exc:
        raise InvalidRequest(str(exc), param=f"{OWNER}.watch") from exc
    token = _get(ext, "resume_token", (str,), "a string (base64url)", f"{OWNER}.resume_token")
    return Completion(
        GenerationRequest(
            prompt=prompt or "",
            max_chars=_get(body, "max_tokens", (int,), "an integer") or 0,
            temperature=_get(body, "temperature", (int, float), "a number"),
            top_k=_get(ext, "top_k", (int,), "an integer", f"{OWNER}.top_k") or 0,
            top_p=_get(body, "top_p", (int, float), "a number"),
            seed=_get(body, "seed", (int,), "an integer"),
            stop=tuple(stop or ()),
            watch=tuple(units),
        ),
        model=_get(body, "model", (str,), "a string"),
        stream=bool(_get(body, "stream", (bool,), "true or false")),
        include_usage=bool(_get(options, "include_usage", (bool,), "true or false", "stream_options.include_usage")),
        resume_token=None if token is None else decode_token(token),
    )


def encode_token(token: bytes) -> str:
    return base64.urlsafe_b64encode(token).decode("ascii")


def decode_token(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"{OWNER}.resume_token is not base64url: {exc}", param=f"{OWNER}.resume_token") from exc


def completion_id() -> str:
    return f"cmpl-{secrets.token_hex(12)}"


def usage(finished: Finished) -> dict[str, int]:
    p, g = finished.prompt_chars, finished.generated_chars
    return {"prompt_tokens": p, "completion_tokens": g, "total_tokens": p + g}


def rounded(values: np.ndarray) -> list[float]:
    """Watched values (float32) as short JSON numbers, in one vectorised call (round() per value: ~0.5 us)."""
    result: list[float] = np.round(values.astype(np.float64), VALUES_DECIMALS).tolist()
    return result


def final_extension(model: LoadedModel, finished: Finished) -> dict[str, Any]:
    """What the last chunk (or the whole body) carries beyond OpenAI's fields: how to continue the text."""
    token = encode_token(model.codec.encode(finished.context))
    return {"resume_token": token, "seed": finished.seed, "stop": finished.stop}


def choice(text: str, finish_reason: str | None) -> dict[str, Any]:
    return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}


def body(cid: str, created: int, model: str, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A completion, or one chunk of a streamed completion (OpenAI uses one object type for both)."""
    return {"id": cid, "object": "text_completion", "created": created, "model": model, "choices": choices, **extra}


def model_card(model: LoadedModel, default: bool) -> dict[str, Any]:
    """GET /v1/models' entry for a served model (`id`: its served name, what `model` takes); `charrnn` has
    what the playground needs."""
    manifest, limits = model.manifest, model.limits
    m = manifest.model
    return {
        "id": model.name,
        "object": "model",
        "created": _created(manifest),
        "owned_by": OWNER,
        OWNER: {
            "default": default,
            "name": m.name,
            "version": m.version,
            "sha256": manifest.onnx.sha256,
            "precision": manifest.precision,
            "cell": m.cell,
            "layers": m.layers,
            "hidden_size": m.hidden_size,
            "states": [s.kind for s in manifest.onnx.states],
            "units": [{"unit": n.name, **asdict(n)} for n in manifest.units],
            "limits": {
                "max_tokens": limits.max_request_chars,
                "default_max_tokens": limits.default_max_chars,
                "max_prompt_chars": limits.max_prompt_chars,
                "max_watched_units": limits.max_watched_units,
                "max_stop_strings": limits.max_stop_strings,
            },
        },
    }


def _created(manifest: Manifest) -> int:
    """The export time as Unix seconds (OpenAI's `created`); 0 when the manifest does not record it."""
    stamp = manifest.export.get("exported_at")
    try:
        return int(datetime.fromisoformat(stamp).timestamp()) if isinstance(stamp, str) else 0
    except ValueError:
        return 0


def now() -> int:
    return int(time.time())
