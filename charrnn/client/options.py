"""Request options defined once: the sampling settings every generate call takes, and watched units."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TypedDict

from charrnn.protocol import STATE_KINDS
from charrnn.v1 import charrnn_pb2 as pb


class GenerationOptions(TypedDict, total=False):
    """How to sample, shared by `Client.generate`, `FailoverClient.generate` and `SessionClient.generate`."""

    temperature: float | None  # 0 = greedy; None = the server's default (1.0)
    top_k: int  # keep the k most likely characters; 0 = off
    top_p: float | None  # nucleus mass in (0, 1]; None = off
    seed: int | None  # None: continue the state's generator, or the server picks one
    stop: Sequence[str]  # end the generation when one of these appears (it is not part of the text)


def sampling_message(options: GenerationOptions) -> pb.SamplingParams:
    """The protobuf form; unset fields stay unset so the server applies its defaults."""
    params = pb.SamplingParams(top_k=options.get("top_k", 0))
    for name in ("temperature", "top_p", "seed"):
        value = options.get(name)
        if value is not None:
            setattr(params, name, value)
    return params


Unit = tuple[str, int, int]  # a hidden unit: kind "h" or "c" (the LSTM's cell state), layer, index

_UNIT = re.compile(r"([hc]):?(\d+):(\d+)")


def parse_units(spec: str) -> list[Unit]:
    """ "h:1:17,c0:5" → [("h", 1, 17), ("c", 0, 5)] (also `charrnn analyze units`' c0:5 form);
    ValueError naming the bad item."""
    units = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        match = _UNIT.fullmatch(item)
        if match is None:
            raise ValueError(f"bad hidden unit {item!r}: expected KIND:LAYER:INDEX with KIND h or c, e.g. h:1:17")
        units.append((match[1], int(match[2]), int(match[3])))
    return units


def add_units(request: pb.ActivationRequest, units: Sequence[Unit]) -> None:
    for kind, layer, index in units:
        request.units.add(kind=STATE_KINDS[kind], layer=layer, index=index)
