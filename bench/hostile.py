"""Hostile requests a server must refuse (or, one of them, take greedily) without any other request noticing.

The cases that found bugs at the HTTP edge (a top_k of 2**70, 50,000-deep nesting, a 5,001-digit integer, a
subnormal temperature, a body that does not decompress) and their kin, as raw HTTP bodies, and their gRPC
counterparts as serialized messages. The HTTP fuzz draws them among its cases; the soak sends them all the
way through, beside the streams it checks.
"""

from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass

from charrnn.v1 import charrnn_pb2 as pb

PROMPT = "def f(x):"


@dataclass(frozen=True)
class HttpCase:
    """A POST /v1/completions body (bytes, as sent) and its extra headers."""

    name: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def _json(**fields: object) -> bytes:
    return json.dumps({"prompt": PROMPT, "max_tokens": 2, **fields}).encode()


def http_cases() -> tuple[HttpCase, ...]:
    return (
        HttpCase("top_k 2**70", _json(charrnn={"top_k": 2**70})),
        HttpCase("top_k -2**70", _json(charrnn={"top_k": -(2**70)})),
        HttpCase("seed 2**64", _json(seed=2**64)),
        HttpCase("max_tokens 2**63", _json(max_tokens=2**63)),
        HttpCase("temperature 1e-320", _json(temperature=1e-320)),  # accepted: greedy
        HttpCase("temperature 2**70", _json(temperature=2**70)),
        HttpCase("top_p 5e-324", _json(top_p=5e-324)),  # accepted: a tiny nucleus is the top candidate
        HttpCase("NaN", b'{"prompt": "a", "temperature": NaN}'),
        HttpCase("50,000-deep arrays", b"[" * 50_000 + b"]" * 50_000),
        HttpCase("5,001-digit integer", b'{"prompt": "a", "max_tokens": ' + b"1" * 5001 + b"}"),
        HttpCase("not gzip", b"certainly not gzip", (("Content-Encoding", "gzip"),)),
        HttpCase("gzip bomb", gzip.compress(b" " * 4_000_000), (("Content-Encoding", "gzip"),)),
        HttpCase("invalid UTF-8", b'{"prompt": "\xff\xfe"}'),
        HttpCase("watch out of range", _json(charrnn={"watch": ["h:99:0", "c0:99999999999999999999"]})),
        HttpCase("lone surrogate", b'{"prompt": "\\ud800"}'),
    )


def _generate(**fields: object) -> bytes:
    return pb.GenerateRequest(prompt=PROMPT, max_chars=2, **fields).SerializeToString()  # type: ignore[arg-type]


def grpc_cases() -> tuple[tuple[str, str, bytes], ...]:
    """(name, method, serialized request) for Generate and Score."""
    far = pb.HiddenUnit(kind=pb.STATE_KIND_H, layer=2**32 - 1, index=2**32 - 1)
    return (
        ("temperature NaN", "Generate", _generate(sampling=pb.SamplingParams(temperature=float("nan")))),
        ("top_k uint32 max", "Generate", _generate(sampling=pb.SamplingParams(top_k=2**32 - 1))),
        ("temperature subnormal", "Generate", _generate(sampling=pb.SamplingParams(temperature=1e-45))),
        ("unit out of range", "Generate", _generate(activations=pb.ActivationRequest(units=[far]))),
        ("checkpoint below the limit", "Generate", _generate(checkpoint_every_chars=1)),
        ("forged token", "Generate", _generate(resume_token=b"CRT" + bytes(200))),
        ("invalid UTF-8", "Generate", b"\x0a\x02\xff\xfe"),
        ("random bytes", "Score", bytes(random.Random(7).randrange(256) for _ in range(48))),
    )
