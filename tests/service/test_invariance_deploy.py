"""Batch invariance of the shipped model at the ONNX Runtime thread counts the deploy files can run it with.

What the deploy files set is read from them: docker-compose.yml's server environment and the Kubernetes
Deployment's (an intra-op thread count set there, or derived from a CPU limit, is tested; the CPU limit
now sets the engine processes, which change only which rows share a batch). 1 is the server's default and 2
the documented alternative (`--intra-op-threads 2`). At each: a row's logits and states are bit-identical
alone and in batches of 5, 16, 33 and 64, for decoding (time 1) and prefill, and a prefill split into chunks
equals the whole; end to end, seeded streams give the same text alone as beside 63 others (on two decode
workers) and a Score whose chunks run between their steps is unchanged.
"""

from __future__ import annotations

import math
import re
import threading

import numpy as np
import pytest
import yaml

from charrnn.artifact import load_manifest
from charrnn.client import Client
from charrnn.engine import Engine, EngineOptions
from charrnn.vocab import Vocabulary
from tests.service.harness import (
    REPO,
    ModelCalls,
    ServerThread,
    generate_together,
    make_config,
    wait_until,
)

DEFAULT_MODEL = REPO / "models" / "default"


def deploy_thread_counts(compose_text: str, deployment_text: str, overlay_texts: list[str]) -> set[int]:
    """The ONNX Runtime intra-op thread counts the deploy files would run the server with (none: its default)."""
    counts: set[int] = set()
    compose = yaml.safe_load(compose_text)
    setting = str(compose["services"]["server"]["environment"].get("CHARRNN_INTRA_OP_THREADS", ""))
    if setting:
        match = re.fullmatch(r"(?:\$\{CHARRNN_INTRA_OP_THREADS:-)?(\d+)\}?", setting)
        assert match, setting
        counts.add(int(match[1]))
    deployment = yaml.safe_load(deployment_text)
    (server,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "server"]
    env = {e["name"]: e for e in server.get("env", [])}
    if "CHARRNN_INTRA_OP_THREADS" in env:  # from a CPU limit: every overlay's limit is a thread count
        for text in overlay_texts:
            for cpu in re.findall(r'limits: \{cpu: "?([\d.m]+)"?', text):
                counts.add(math.ceil(float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)))
    return counts


def _repository_files() -> tuple[str, str, list[str]]:
    overlays = sorted((REPO / "deploy" / "k8s" / "overlays").iterdir())
    return (
        (REPO / "docker-compose.yml").read_text(encoding="utf-8"),
        (REPO / "deploy" / "k8s" / "base" / "deployment.yaml").read_text(encoding="utf-8"),
        [(o / "kustomization.yaml").read_text(encoding="utf-8") for o in overlays],
    )


# The server's default (1), the documented alternative (2), and whatever the deploy files set.
THREADS = sorted({1, 2} | deploy_thread_counts(*_repository_files()))


def test_thread_counts_set_in_the_deploy_files_are_read() -> None:
    compose = "services:\n  server:\n    environment:\n      CHARRNN_INTRA_OP_THREADS: ${CHARRNN_INTRA_OP_THREADS:-4}\n"
    plain = "spec:\n  template:\n    spec:\n      containers:\n        - name: server\n"
    from_limit = plain + "          env:\n            - name: CHARRNN_INTRA_OP_THREADS\n"
    overlay = 'patches:\n  - limits: {cpu: "3", memory: 1Gi}\n'
    assert deploy_thread_counts(compose, plain, [overlay]) == {4}
    assert deploy_thread_counts(compose.replace("CHARRNN_INTRA_OP_THREADS:", "OTHER:"), from_limit, [overlay]) == {3}
    # The repository's own files parse; today they leave the thread count at the default (workers use the cores).
    assert deploy_thread_counts(*_repository_files()) == set()


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("time", [1, 9, 300])
def test_rows_are_bit_identical_alone_and_batched(threads: int, time: int) -> None:
    engine = Engine(DEFAULT_MODEL, EngineOptions(intra_op_threads=threads))
    rng = np.random.default_rng(threads * 1000 + time)
    batch = 64 if time < 300 else 16
    tokens = rng.integers(0, engine.vocab_size, (batch, time))
    states = tuple((rng.standard_normal(s.shape) * 0.5).astype(np.float32) for s in engine.zero_states(batch))
    logits, new = engine.run(tokens, states)
    for i in (0, batch // 3, batch - 1):
        alone, after = engine.run(tokens[i : i + 1], tuple(s[:, i : i + 1] for s in states))
        assert np.array_equal(alone[0], logits[i])
        assert all(np.array_equal(a[:, 0], b[:, i]) for a, b in zip(after, new, strict=True))
    for n in (5, 16, 33):
        n = min(n, batch)
        part, _ = engine.run(tokens[:n], tuple(s[:, :n] for s in states))
        assert np.array_equal(part, logits[:n])
    if time > 1:  # the scheduler runs prompts in chunks: the state after them must be the whole run's
        _, mid = engine.run(tokens[:, : time // 3], states)
        tail, end = engine.run(tokens[:, time // 3 :], mid)
        assert np.array_equal(tail[:, -1], logits[:, -1])
        assert all(np.array_equal(a, b) for a, b in zip(end, new, strict=True))


@pytest.mark.slow
def test_seeded_streams_are_the_same_alone_and_batched_at_the_deploy_thread_count() -> None:
    threads, chunk = max(THREADS), 64
    config = make_config(DEFAULT_MODEL, intra_op_threads=threads, engines=2, prefill_chunk_chars=chunk)
    # Engines as threads over a model this test holds, so ModelCalls sees every call (the texts' invariance across
    # engine processes is tested in test_generate.py and test_resume*.py, on processes).
    engine = Engine(DEFAULT_MODEL, config.engine)
    with ServerThread(config, engine=engine) as server, Client(server.target, timeout=120) as client:
        requests = [
            {"prompt": f"def f{i}(x):\n" * (1 + i % 9), "max_chars": 80 + 4 * i, "seed": 7 + i,
             "temperature": [0.0, 0.8, 1.0][i % 3], "top_p": [None, 0.9][i % 2]}
            for i in range(64)
        ]  # fmt: skip
        alone = [client.generate(**r).text() for r in requests]  # type: ignore[arg-type]
        text = (REPO / "service" / "scheduler.py").read_text(encoding="utf-8")[:20000]
        long_text = text[: len(text) // chunk * chunk]  # whole chunks: none is one character, like a decode step
        score_alone = client.score(long_text).logprobs
        together: list[tuple[list[tuple[str, list[tuple[float, ...]]]], int]] = []
        with ModelCalls(server) as model:
            streams = threading.Thread(target=lambda: together.append(generate_together(client, requests, server)))
            streams.start()
            assert wait_until(lambda: model.widest_step() > 8), "the streams are decoding together"
            beside = client.score(long_text).logprobs
            streams.join(120)
        ((texts, widest),) = together
        assert widest > 8, "the streams really shared batches: one model call stepped many rows"
        assert [t for t, _ in texts] == alone
        assert beside == score_alone
    # The Score beside them was really cut into chunks between their steps, on the worker that ran it.
    vocab = Vocabulary.from_spec(load_manifest(DEFAULT_MODEL).vocabulary)
    ids = vocab.encode(long_text).astype(np.int64)
    pieces = {ids[i : i + chunk].tobytes() for i in range(0, len(ids), chunk)}

    def kind(tokens: np.ndarray) -> str:
        if any(row.astype(np.int64).tobytes() in pieces for row in tokens):
            return "score"
        return "step" if tokens.shape[1] == 1 else "prompt"

    (worker,) = {name for name, tokens in model.calls if kind(tokens) == "score"}
    order = [kind(tokens) for name, tokens in model.calls if name == worker]
    first, last = order.index("score"), len(order) - 1 - order[::-1].index("score")
    assert order.count("score") == len(ids) // chunk, "every chunk of the Score was seen, one model call each"
    assert "step" in order[first:last], "the Score's chunks ran back to back: prefill did not interleave with decoding"
