"""The server on an artifact from the real training/export pipeline: greedy output equals a bare ONNX
Runtime session stepping one character at a time (tests/reference.py, none of the server's code)."""

from __future__ import annotations

from pathlib import Path

from charrnn.client import Client
from tests.reference import PlainOnnxStepper
from tests.service.harness import ServerThread, make_config


def test_served_greedy_text_equals_an_independent_reference(tiny_artifact: Path) -> None:
    prompt = "def return"
    expected = PlainOnnxStepper(tiny_artifact).greedy(prompt, 150)
    with ServerThread(make_config(tiny_artifact)) as srv, Client(srv.target) as client:
        assert client.generate(prompt, max_chars=150, temperature=0).text() == expected
        info = client.info()
        assert info.val_bits_per_char is not None and info.val_bits_per_char > 0
        assert client.score("if else for while\n").bits_per_char > 0
