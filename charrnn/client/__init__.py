"""The Python client for a charrnn server: typed, synchronous, no protobuf in the caller's code.

    from charrnn.client import Client

    with Client("localhost:50051") as client:
        gen = client.generate("def ", max_chars=200, temperature=0.8, seed=1)
        for chunk in gen:
            print(chunk, end="")
        token = gen.result.resume_token

With `watch=[("h", 1, 17)]` the server also streams each generated character's value of that hidden
unit: `gen.chunks()` yields (text, values per character) and `gen.activations` collects them.

With several replicas, `FailoverClient([a, b]).generate(...)` asks for mid-stream resume points and, when a
stream breaks (UNAVAILABLE: a crash, a reset connection, a draining server), continues from the last one on
the next replica; the caller sees one uninterrupted text. `Client.session()` opens a Session stream.

Failures surface as `CharRNNError` with the status code, the server's message and, when the server sent
one, its retry hint (`grpc-retry-pushback-ms`). The client needs only the `client` extra (grpcio,
grpcio-health-checking, protobuf): none of the server's code.
"""

from charrnn.client.client import Client, Generation
from charrnn.client.errors import CharRNNError
from charrnn.client.failover import FAILOVER_CODES, FailoverClient, ResumableGeneration
from charrnn.client.options import GenerationOptions, Unit, parse_units
from charrnn.client.results import GenerationResult, ModelInfo, ResumePoint, ScoreResult
from charrnn.client.session import SessionClient

__all__ = [
    "FAILOVER_CODES",
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
