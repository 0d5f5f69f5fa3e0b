"""HTTP and gRPC streams go to the same scheduler: they share batches, and a seeded request's text does not
depend on which edge it came through or what it was batched with."""

from __future__ import annotations

import threading
from pathlib import Path

import openai

from charrnn.client import Client
from tests.http.conftest import MODEL, PROMPT, base_url
from tests.observability.scrape import value
from tests.service.harness import ServerThread, make_config

CHARS = 1500


def test_a_grpc_and_an_http_stream_share_batches_and_agree(model_dir: Path) -> None:
    # One engine: with two, the streams would land on different engines and never share a step.
    with ServerThread(make_config(model_dir, http_port=0, engines=1)) as server:
        _share_and_agree(server)


def _share_and_agree(server: ServerThread) -> None:
    sdk = openai.OpenAI(base_url=f"{base_url(server)}/v1", api_key="unused", max_retries=0, timeout=60)
    texts: dict[str, str] = {}
    barrier = threading.Barrier(2)

    def over_http() -> None:
        barrier.wait()
        parts = []
        for chunk in sdk.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=CHARS, temperature=0.9, seed=21, stream=True
        ):
            parts.append(chunk.choices[0].text)
        texts["http"] = "".join(parts)

    def over_grpc(client: Client) -> None:
        barrier.wait()
        parts = []
        for chunk in client.generate(PROMPT, max_chars=CHARS, temperature=0.9, seed=21):
            parts.append(chunk)
        texts["grpc"] = "".join(parts)

    with Client(server.target) as client:
        threads = [threading.Thread(target=over_http), threading.Thread(target=over_grpc, args=(client,))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        alone = sdk.completions.create(model=MODEL, prompt=PROMPT, max_tokens=CHARS, temperature=0.9, seed=21)
    assert server.server is not None
    registry = server.server.metrics.registry
    steps = value(registry, "charrnn_batch_size_count")
    alone_steps = value(registry, "charrnn_batch_size_bucket", le="1.0")
    assert steps - alone_steps > 0, "no decode step advanced the HTTP and the gRPC stream together"
    assert texts["http"] == texts["grpc"] == alone.choices[0].text
    assert len(texts["http"]) == CHARS
