"""Watching hidden units: Generate streams each generated character's unit values.

The reference is computed independently: the prompt and then each returned character run through a
bare ONNX Runtime session (tests/reference.py, none of the server's code) one step at a time; the value
for a character is the unit in the state after that character was read.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import numpy as np
import pytest

from charrnn.client import CharRNNError, Client, Unit, parse_units
from charrnn.v1 import charrnn_pb2 as pb
from charrnn.v1 import charrnn_pb2_grpc as pb_grpc
from tests.reference import PlainOnnxStepper
from tests.service.harness import REPO, ServerThread, charrnn_cmd, generate_together, make_config

PROMPT = "def main(argv):\n    "
WATCH: list[Unit] = [("h", 1, 3), ("c", 0, 5), ("h", 0, 23), ("c", 1, 0)]


@pytest.fixture(scope="module")
def server(lstm_dir: Path) -> Iterator[ServerThread]:
    # A small chunk size splits the text at many places; a limit of 4 watched units.
    with ServerThread(make_config(lstm_dir, max_chunk_chars=7, max_watched_units=4)) as srv:
        yield srv


@pytest.fixture
def client(server: ServerThread) -> Iterator[Client]:
    with Client(server.target, timeout=30) as c:
        yield c


def reference(model_dir: Path, prompt: str, text: str, units: Sequence[Unit]) -> np.ndarray:
    """[len(text), units]: each unit after each character of `text` was read, stepping one char at a time."""
    stepper = PlainOnnxStepper(model_dir)
    _, state = stepper.step(stepper.encode(prompt), None)
    rows = []
    for ch in text:
        _, state = stepper.step(stepper.encode(ch), state)
        rows.append([state[stepper.kinds.index(kind)][layer, 0, index] for kind, layer, index in units])
    return np.array(rows, np.float32)


def test_values_match_an_independent_reference(client: Client, lstm_dir: Path) -> None:
    gen = client.generate(PROMPT, max_chars=150, temperature=0.9, seed=5, watch=WATCH)
    chunks = list(gen.chunks())
    text = "".join(c for c, _ in chunks)
    assert len(text) == 150 and len(chunks) > 10, "many chunk boundaries"
    for chunk, values in chunks:
        assert len(values) == len(chunk) and all(len(v) == len(WATCH) for v in values)
    got = np.array(gen.activations, np.float32)
    np.testing.assert_allclose(got, reference(lstm_dir, PROMPT, text, WATCH), atol=1e-5)
    # The value is the state *after* reading the character, not the one that predicted it.
    shifted = reference(lstm_dir, PROMPT, " " + text[:-1], WATCH)
    assert np.abs(got - shifted).max() > 1e-2
    # Watching changes nothing else.
    assert client.generate(PROMPT, max_chars=150, temperature=0.9, seed=5).text() == text


def test_values_stay_aligned_across_stop_strings(client: Client, lstm_dir: Path) -> None:
    full = client.generate(PROMPT, max_chars=120, temperature=0).text()
    stop = full[60:63]
    cut = full.index(stop)
    gen = client.generate(PROMPT, max_chars=120, temperature=0, stop=[stop, full[30:32] + "\x00"], watch=WATCH)
    text = gen.text()
    assert text == full[:cut] and gen.result is not None and gen.result.finish_reason == "stop"
    assert len(gen.activations) == len(text), "held-back and stop characters carry no values"
    np.testing.assert_allclose(gen.activations, reference(lstm_dir, PROMPT, text, WATCH), atol=1e-5)


def test_continuing_from_a_resume_token(client: Client, lstm_dir: Path) -> None:
    first = client.generate(PROMPT, max_chars=20, temperature=0)
    head = first.text()
    assert first.result is not None
    gen = client.generate(max_chars=30, temperature=0, resume_token=first.result.resume_token, watch=WATCH[:1])
    tail = gen.text()
    np.testing.assert_allclose(gen.activations, reference(lstm_dir, PROMPT + head, tail, WATCH[:1]), atol=1e-5)


def test_off_by_default(server: ServerThread) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.CharRNNStub(channel)
        responses = list(stub.Generate(pb.GenerateRequest(prompt=PROMPT, max_chars=60), timeout=30))
    assert len(responses) > 1 and all(not r.activations for r in responses)
    with Client(server.target) as c:
        gen = c.generate(PROMPT, max_chars=60)
        assert gen.text() and gen.activations == []
        assert c.info().limits["max_watched_units"] == 4


@pytest.mark.parametrize(
    ("watch", "message"),
    [
        ([("h", 0, 0)] * 5, "5 watched units; the limit is 4 (max_watched_units)"),
        ([("h", 0, 0), ("h", 2, 0)], "watched unit 1 (h:2:0): out of range"),
        ([("c", 0, 24)], "watched unit 0 (c:0:24): out of range"),
    ],
)
def test_bounds_are_invalid_argument(client: Client, watch: list[Unit], message: str) -> None:
    with pytest.raises(CharRNNError) as err:
        client.generate(PROMPT, max_chars=5, watch=watch).text()
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details


def test_cell_state_needs_an_lstm(artifacts: dict[str, Path]) -> None:
    with ServerThread(make_config(artifacts["gru"])) as srv, Client(srv.target, timeout=30) as c:
        with pytest.raises(CharRNNError) as err:
            c.generate(PROMPT, max_chars=5, watch=[("c", 0, 1)]).text()
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "watched unit 0 (c:0:1): the gru model has no such state (it has h)" in err.value.details
        gen = c.generate(PROMPT, max_chars=40, temperature=0, watch=[("h", 1, 2)])
        text = gen.text()
        np.testing.assert_allclose(gen.activations, reference(artifacts["gru"], PROMPT, text, [("h", 1, 2)]), atol=1e-5)


def test_batch_invariance_with_and_without_watches(server: ServerThread, client: Client) -> None:
    """Streams that watch and streams that don't share batches; each gets what it gets alone."""
    n = 24
    requests = [
        {
            "prompt": PROMPT[: 3 + i % 5] + str(i),
            "max_chars": 60 + 5 * i,
            "seed": 300 + i,
            "temperature": [0.0, 0.8, 1.2][i % 3],
            "watch": [WATCH[: 1 + i % 4], []][i % 2],
        }
        for i in range(n)
    ]
    alone = []
    for r in requests:
        gen = client.generate(**r)  # type: ignore[arg-type]
        alone.append((gen.text(), gen.activations))
    together, widest = generate_together(client, requests, server)
    assert widest > 4, "the streams really shared batches: one model call stepped many rows"
    for i in range(n):
        assert together[i] == alone[i], f"stream {i} differs when batched"


def test_parse_units() -> None:
    assert parse_units("h:1:17, c:0:5,c1:200,") == [("h", 1, 17), ("c", 0, 5), ("c", 1, 200)]
    with pytest.raises(ValueError, match="'x:1:2'"):
        parse_units("h:0:0,x:1:2")


def test_cli_colours_and_tsv(server: ServerThread, lstm_dir: Path) -> None:
    def generate(*extra: str) -> str:
        args = ["generate", PROMPT, "--target", server.target, "--max-chars", "40", "--temperature", "0"]
        done = subprocess.run(charrnn_cmd(*args, *extra), cwd=REPO, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    plain = generate()
    coloured = generate("--watch", "h:1:3,c:0:5", "--color", "always")
    legend, painted = coloured.split("\n", 1)
    assert legend.startswith("unit h:1:3 (hidden state h, tanh-bounded)") and "scale ±1" in legend
    assert painted.startswith(PROMPT + "\x1b[")  # the prompt first, uncoloured
    backgrounds = re.findall(r"\x1b\[48;2;(\d+);(\d+);(\d+)m", painted)
    assert len(backgrounds) == 40
    values = reference(lstm_dir, PROMPT, plain, [("h", 1, 3)])[:, 0]
    for (r, _, b), value in zip(backgrounds, values, strict=True):
        if abs(value) > 0.05:
            assert (int(r) > int(b)) == (value > 0), "positive red, negative blue"
    shown, summary = re.sub(r"\x1b\[[\d;]*m", "", painted).rstrip("\n").rsplit("\n", 1)
    assert shown[len(PROMPT) :].replace("↵\n", "\n").replace("↵", "\n") == plain
    assert summary.startswith("unit h:1:3 ranged over [")
    assert "\x1b[" not in generate("--watch", "h:1:3"), "no colour when stdout is not a terminal"

    tsv = generate("--watch", "h:1:3,c:0:5", "--watch-format", "tsv").splitlines()
    assert tsv[0] == "char\th:1:3\tc:0:5" and len(tsv) == 41
    got = np.array([[float(x) for x in line.split("\t")[1:]] for line in tsv[1:]])
    np.testing.assert_allclose(got, reference(lstm_dir, PROMPT, plain, [("h", 1, 3), ("c", 0, 5)]), atol=1e-5)
