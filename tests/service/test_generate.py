"""Generate over a real gRPC server: streaming, greedy parity with the torch reference,
seeded determinism, batch invariance with 64 streams, stop strings and validation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from charrnn.client import CharRNNError, Client
from tests.service.conftest import SPECS
from tests.service.harness import ServerThread, generate_together, make_config
from tests.service.tinymodel import greedy_reference

PROMPT = "def main(argv):\n    "


@pytest.fixture(scope="module")
def server(lstm_dir: Path) -> Iterator[ServerThread]:
    with ServerThread(make_config(lstm_dir, max_stop_strings=3, max_stop_chars=5, max_prompt_chars=100)) as srv:
        yield srv


@pytest.fixture
def client(server: ServerThread) -> Iterator[Client]:
    with Client(server.target, timeout=30) as c:
        yield c


def test_streams_in_order_first_char_alone_and_final_message(client: Client) -> None:
    gen = client.generate(PROMPT, max_chars=300, temperature=0.0)
    chunks = list(gen)
    assert chunks[0] and len(chunks[0]) == 1, "the first character goes out at once"
    assert len(chunks) < 300, "characters are coalesced"
    text = "".join(chunks)
    assert text == greedy_reference(SPECS["lstm"], PROMPT, 300)
    r = gen.result
    assert r is not None and r.finish_reason == "length"
    assert (r.prompt_chars, r.generated_chars) == (len(PROMPT), 300)
    assert r.resume_token


@pytest.mark.parametrize("name", ["gru", "rnn"])
def test_greedy_matches_reference_for_other_cells(artifacts: dict[str, Path], name: str) -> None:
    with ServerThread(make_config(artifacts[name])) as srv, Client(srv.target) as c:
        assert c.generate(PROMPT, max_chars=80, temperature=0).text() == greedy_reference(SPECS[name], PROMPT, 80)


def test_seed_determines_the_text(client: Client) -> None:
    a = client.generate(PROMPT, max_chars=200, seed=42, temperature=0.9, top_k=20, top_p=0.95).text()
    b = client.generate(PROMPT, max_chars=200, seed=42, temperature=0.9, top_k=20, top_p=0.95).text()
    c = client.generate(PROMPT, max_chars=200, seed=43, temperature=0.9, top_k=20, top_p=0.95).text()
    assert a == b != c
    gen = client.generate(PROMPT, max_chars=10)
    gen.text()
    assert gen.result is not None
    picked = gen.result.seed
    assert (
        client.generate(PROMPT, max_chars=10, seed=picked).text()
        == client.generate(PROMPT, max_chars=10, seed=picked).text()
    )


def test_batch_invariance_64_streams(server: ServerThread, client: Client) -> None:
    """Every stream's text is the same alone as beside 63 others (mixed prompts and parameters)."""
    n = 64
    requests = [
        {
            "prompt": PROMPT[: 3 + i % 7] + str(i),
            "max_chars": 150 + 3 * i,
            "seed": 1000 + i,
            "temperature": [0.0, 0.7, 1.0, 1.3][i % 4],
            "top_k": [0, 5, 40][i % 3],
            "top_p": [None, 0.9][i % 2],
        }
        for i in range(n)
    ]
    alone = [client.generate(**r).text() for r in requests]  # type: ignore[arg-type]
    together, widest = generate_together(client, requests, server)
    assert widest > 8, "the streams really shared batches: one model call stepped many rows"
    for i in range(n):
        assert together[i][0] == alone[i], f"stream {i} differs when batched"


def test_stop_strings_end_the_text_and_are_not_returned(client: Client) -> None:
    ref = greedy_reference(SPECS["lstm"], PROMPT, 120)
    stop = ref[40:43]
    cut = ref.index(stop)
    gen = client.generate(PROMPT, max_chars=120, temperature=0, stop=["\x00\x01", stop])
    assert gen.text() == ref[:cut]
    assert gen.result is not None and gen.result.finish_reason == "stop" and gen.result.stop == stop
    assert gen.result.generated_chars == cut + len(stop)
    # A partial match at the very end is plain text once max_chars is reached.
    partial = ref[49:51] + "\x00"
    assert client.generate(PROMPT, max_chars=51, temperature=0, stop=[partial]).text() == ref[:51]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 101.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_chars": 10**6}, "max_chars"),
        ({"stop": ["a", "b", "c", "d"]}, "max_stop_strings"),
        ({"stop": ["toolong"]}, "max_stop_chars"),
        ({"stop": [""]}, "stop strings"),
        ({"prompt": "x" * 101}, "prompt"),
        ({"prompt": ""}, "prompt is empty"),
    ],
)
def test_invalid_parameters_are_invalid_argument(client: Client, kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"prompt": "hi", "max_chars": 5, **kwargs}
    with pytest.raises(CharRNNError) as err:
        client.generate(**args).text()  # type: ignore[arg-type]
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details


def test_unknown_characters_refused_or_replaced(artifacts: dict[str, Path], client: Client) -> None:
    with ServerThread(make_config(artifacts["lstm_refuse"])) as srv, Client(srv.target) as c:
        with pytest.raises(CharRNNError) as err:
            c.generate("naïve €", max_chars=5).text()
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "'ï'" in err.value.details and "'€'" in err.value.details
        with pytest.raises(CharRNNError) as err:
            c.score("naïve")
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    # 'replace' policy: the unknown character becomes the replacement char, so the texts agree.
    replaced = client.generate("na\ufffdve", max_chars=30, temperature=0).text()
    assert client.generate("naïve", max_chars=30, temperature=0).text() == replaced
