"""The official `openai` Python package as the client: completions, streamed and not, against a real server,
checked against the same seeded request over gRPC."""

from __future__ import annotations

import base64

import openai
import pytest

from charrnn.client import Client
from tests.http.conftest import MODEL, PROMPT, base_url
from tests.service.harness import ServerThread


def sdk(server: ServerThread, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url(server)}/v1", api_key=api_key, max_retries=0, timeout=30)


def test_models_lists_the_served_model(server: ServerThread) -> None:
    models = sdk(server).models.list().data
    assert [m.id for m in models] == [MODEL]
    extension = models[0].model_extra["charrnn"]  # type: ignore[index]
    assert extension["cell"] == "lstm" and extension["layers"] == 2 and extension["states"] == ["h", "c"]


def test_completion_matches_the_same_request_over_grpc(server: ServerThread) -> None:
    result = sdk(server).completions.create(model=MODEL, prompt=PROMPT, max_tokens=120, temperature=0.8, seed=11)
    with Client(server.target) as client:
        expected = client.generate(PROMPT, max_chars=120, temperature=0.8, seed=11).text()
    choice = result.choices[0]
    assert choice.text == expected and len(expected) == 120
    assert choice.finish_reason == "length" and result.object == "text_completion"
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (len(PROMPT), 120)


def test_streamed_completion_matches_grpc_and_its_resume_token_continues_over_grpc(server: ServerThread) -> None:
    stream = sdk(server).completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=300, temperature=1.0, seed=5, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == "length" and all(r is None for r in reasons[:-1])
    assert len(chunks) >= 3, "a 300-character stream at a 10 ms flush interval comes in several chunks"
    usage = chunks[-1].usage
    assert not chunks[-1].choices and usage is not None and usage.completion_tokens == len(text) == 300
    final = [c for c in chunks if c.choices][-1].model_extra["charrnn"]  # type: ignore[index]
    assert final["seed"] == 5
    with Client(server.target) as client:
        assert client.generate(PROMPT, max_chars=300, temperature=1.0, seed=5).text() == text
        token = base64.urlsafe_b64decode(final["resume_token"])
        continued = client.generate(max_chars=50, temperature=1.0, resume_token=token).text()
        whole = client.generate(PROMPT, max_chars=350, temperature=1.0, seed=5).text()
    assert text + continued == whole, "the HTTP stream's resume token continues it exactly over gRPC"


def test_watched_unit_values_come_with_each_character(server: ServerThread) -> None:
    stream = sdk(server).completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=80, seed=3, stream=True, extra_body={"charrnn": {"watch": ["c1:7"]}}
    )
    text, values = "", []
    for chunk in stream:
        text += chunk.choices[0].text
        values += chunk.model_extra["charrnn"]["values"]  # type: ignore[index]
    with Client(server.target) as client:
        gen = client.generate(PROMPT, max_chars=80, seed=3, watch=[("c", 1, 7)])
        assert gen.text() == text
    assert len(values) == len(text) == 80
    assert values == pytest.approx([v for (v,) in gen.activations], abs=1e-5)


def test_refusals_are_sdk_errors_naming_the_parameter(server: ServerThread) -> None:
    client = sdk(server)
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model=MODEL, prompt=PROMPT, temperature=101.0)
    assert bad.value.body["param"] == "temperature" and "temperature must be in" in bad.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.NotFoundError) as wrong_model:
        client.completions.create(model="gpt-4", prompt=PROMPT)
    assert wrong_model.value.body["param"] == "model"  # type: ignore[index]
