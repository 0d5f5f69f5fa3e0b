"""The server on an artifact from the real training/export pipeline: greedy output equals the
training side's reference sampler, and Score agrees with its bits per char definition."""

from __future__ import annotations

from pathlib import Path

from charrnn.artifact import load_manifest
from charrnn.vocab import Vocabulary
from service.client import Client
from tests.service.harness import ServerThread, make_config


def test_served_greedy_text_equals_the_reference_sampler(tiny_artifact: Path) -> None:
    from training.sample import OnnxStepper, SamplingParams, generate

    vocab = Vocabulary.from_spec(load_manifest(tiny_artifact).vocabulary)
    prompt = "def return"
    expected = generate(OnnxStepper(tiny_artifact), vocab, prompt, 150, SamplingParams(temperature=0.0))
    with ServerThread(make_config(tiny_artifact)) as srv, Client(srv.target) as client:
        assert client.generate(prompt, max_chars=150, temperature=0).text() == expected
        info = client.info()
        assert info.val_bits_per_char is not None and info.val_bits_per_char > 0
        assert client.score("if else for while\n").bits_per_char > 0
