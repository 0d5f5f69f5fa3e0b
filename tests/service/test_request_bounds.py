"""Every number a request carries is range-checked by the one Validator both edges use, against the type the
engine stores it in, so a value one wire cannot carry (gRPC's uint32) is refused the same way when another
wire can (JSON's integers have no size): by name, before anything reaches a scheduler."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from charrnn.protocol import MAX_SEED
from service.context import Context
from service.errors import InvalidRequest
from service.requests import MAX_TEMPERATURE, MAX_UINT32, MIN_TEMPERATURE, GenerationRequest, Validator
from service.server import build_runtime
from service.servicer import Runtime
from tests.service.harness import make_config

HUGE = 2**70  # 1180591620717411303424: past int64, uint64 and float32's integers
OK = GenerationRequest(prompt="ab", max_chars=3)


@pytest.fixture(scope="module")
def runtime(lstm_dir: Path) -> Runtime:
    return build_runtime(make_config(lstm_dir))


def job(runtime: Runtime, **fields: Any) -> Any:
    return Validator(runtime.limits).job(runtime.models.current, Context(), replace(OK, **fields))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("top_k", HUGE),
        ("top_k", MAX_UINT32 + 1),
        ("top_k", -HUGE),
        ("seed", MAX_SEED + 1),
        ("seed", -1),
        ("max_chars", HUGE),
        ("max_chars", -HUGE),
        ("temperature", 10**400),  # an integer no float holds
        ("temperature", HUGE),
        ("temperature", -1e-320),
        ("temperature", float("nan")),
        ("top_p", 10**400),
        ("top_p", 0),
        ("checkpoint_every", MAX_UINT32 + 1),
        ("checkpoint_every", -1),
        ("watch", (("h", HUGE, 0),)),
        ("watch", (("h", 0, -HUGE),)),
    ],
)
def test_a_number_out_of_range_is_refused_by_name(runtime: Runtime, field: str, value: Any) -> None:
    with pytest.raises(InvalidRequest) as refusal:
        job(runtime, **{field: value})
    assert refusal.value.param == field
    assert len(str(refusal.value)) < 200


def test_the_bounds_themselves_are_accepted(runtime: Runtime) -> None:
    limit = runtime.limits.max_request_chars
    accepted = job(
        runtime,
        top_k=MAX_UINT32,
        seed=MAX_SEED,
        max_chars=limit,
        temperature=MAX_TEMPERATURE,
        checkpoint_every=MAX_UINT32,
    )
    assert (accepted.sampling.top_k, accepted.seed, accepted.max_chars) == (MAX_UINT32, MAX_SEED, limit)
    assert accepted.checkpoint_every == MAX_UINT32


@pytest.mark.parametrize("temperature", [5e-324, 1e-320, MIN_TEMPERATURE / 2])
def test_a_temperature_below_the_floor_is_greedy(runtime: Runtime, temperature: float) -> None:
    assert job(runtime, temperature=temperature).sampling.temperature == 0.0


def test_a_temperature_at_the_floor_is_kept(runtime: Runtime) -> None:
    assert job(runtime, temperature=MIN_TEMPERATURE).sampling.temperature == MIN_TEMPERATURE
