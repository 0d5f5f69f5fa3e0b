"""The Python client for a charrnn server: typed, synchronous, no protobuf in the caller's code.

    from charrnn.client import Client

    with Client("localhost:50051") as client:
        gen = client.generate("def ", max_chars=200, temperature=0.8, seed=1)
        for chunk in gen:
            print(chunk, end="")
        token = gen.result.resume_token

With `watch=[("h", 1, 17)]` the server also streams each generated character's value of that hidden
unit: `gen.chunks()` yields (text, values per character) and `gen.activations` collects them.

With several replicas in one target (`"10.0.0.1:50051,10.0.0.2:50051"` or `"dns:///name:50051"`), calls
spread over them round robin (`Balancing` chooses the policy and keepalive). `FailoverClient(target)
.generate(...)` also asks for mid-stream resume points and, when a stream breaks (UNAVAILABLE: a crash, a
reset connection, a draining server), continues from the last one on another replica; the caller sees one
uninterrupted text. `Client.session()` opens a Session stream, which stays on one replica.

Failures surface as `CharRNNError` with the status code, the server's message and, when the server sent
one, its retry hint (`grpc-retry-pushback-ms`). The client needs only the `client` extra (grpcio,
grpcio-health-checking, protobuf): none of the server's code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from charrnn.client.balancing import Balancing
    from charrnn.client.client import Client, Generation
    from charrnn.client.errors import CharRNNError
    from charrnn.client.failover import FAILOVER_CODES, FailoverClient, ResumableGeneration
    from charrnn.client.options import GenerationOptions, Unit, parse_units
    from charrnn.client.results import GenerationResult, ModelInfo, ResumePoint, ScoreResult
    from charrnn.client.session import SessionClient

# Loaded on first use, so that `charrnn.client.cli` (imported by the `charrnn` command at startup) needs no
# grpc until a client command runs: an install without the `client` extra still has a working `charrnn`.
_EXPORTS = {
    "Balancing": "balancing", "Client": "client", "Generation": "client", "CharRNNError": "errors",
    "FAILOVER_CODES": "failover",
    "FailoverClient": "failover", "ResumableGeneration": "failover", "GenerationOptions": "options",
    "Unit": "options", "parse_units": "options", "GenerationResult": "results", "ModelInfo": "results",
    "ResumePoint": "results", "ScoreResult": "results", "SessionClient": "session",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'charrnn.client' has no attribute {name!r}")
    return getattr(importlib.import_module(f"charrnn.client.{_EXPORTS[name]}"), name)


__all__ = [
    "FAILOVER_CODES",
    "Balancing",
    "CharRNNError",
    "Client",
    "FailoverClient",
    "Generation",
    "GenerationOptions",
    "GenerationResult",
    "ModelInfo",
    "ResumableGeneration",
    "ResumePoint",
    "ScoreResult",
    "SessionClient",
    "Unit",
    "parse_units",
]
