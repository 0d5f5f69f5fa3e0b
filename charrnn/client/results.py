"""What calls return, as plain dataclasses (no protobuf in the caller's code)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from charrnn.protocol import FINISH_REASONS, name_of
from charrnn.v1 import charrnn_pb2 as pb


@dataclass(frozen=True)
class GenerationResult:
    finish_reason: str  # "length", "stop" or "cancelled"
    prompt_chars: int
    generated_chars: int
    resume_token: bytes
    session_id: str
    seed: int
    stop: str

    @classmethod
    def from_proto(cls, done: pb.GenerateDone) -> GenerationResult:
        return cls(
            name_of(FINISH_REASONS, done.finish_reason),
            done.usage.prompt_chars,
            done.usage.generated_chars,
            done.resume_token,
            done.session_id,
            done.seed,
            done.stop,
        )


@dataclass(frozen=True)
class ScoreResult:
    logprobs: list[float]
    first_scored: int
    total_nats: float
    bits_per_char: float
    resume_token: bytes


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    cell: str
    layers: int
    hidden_size: int
    embedding_size: int
    vocab_size: int
    parameters: int
    vocabulary: list[str]
    unknown_policy: str
    unknown_char: str
    val_bits_per_char: float | None
    sha256: str
    limits: dict[str, float]
    precision: str  # "fp32" or "int8"; "unspecified" from a server that predates the field
    served_name: str = ""  # what `model=` takes ("" from a server that serves one model without names)
    default: bool = False  # requests without `model` go to it


class ResumePoint(NamedTuple):
    """A resume token covering exactly the first `chars` characters a generation delivered."""

    chars: int
    resume_token: bytes
