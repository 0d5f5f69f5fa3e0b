"""Memory is bounded by the limits and comes back after peaks: the largest requests the limits allow, at
once, keep the server's RSS under the bound docs/operations.md gives for them ("Memory"), and it returns
near its resting level afterwards. Chunked prefill keeps ONNX Runtime's buffers the size of one chunk,
whatever the length of a text."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from bench.proctree import rss_bytes
from charrnn.client import Client
from tests.service.harness import REPO, ServerProcess

pytestmark = pytest.mark.slow
MB = 1 << 20
SESSION_MEMORY_MB = 4
CONCURRENT = 4  # largest requests of each kind at once
TEXT = (REPO / "service" / "scheduler.py").read_text(encoding="utf-8")
# docs/operations.md, "Memory": above the resting RSS, sessions take up to 1.3x their memory bound, each
# request in flight up to ~80 bytes per character of its text (the text, its ids, log-probabilities and
# the response), plus allocator slack.
BYTES_PER_SCORED_CHAR = 80
SLACK_MB = 48


def test_the_largest_requests_stay_under_the_documented_bound(tmp_path: Path) -> None:
    flags = ("--session-memory-mb", str(SESSION_MEMORY_MB), "--max-sessions", "100000")
    server = ServerProcess(REPO / "models" / "default", tmp_path, *flags).wait_ready()
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes(server.proc.pid))
            time.sleep(0.02)

    try:
        with Client(server.target, timeout=300) as client:
            info = client.info()
            max_score = int(info.limits["max_score_chars"])
            max_prompt = int(info.limits["max_prompt_chars"])
            score_text = (TEXT * (max_score // len(TEXT) + 1))[:max_score]
            prompt = (TEXT * (max_prompt // len(TEXT) + 1))[:max_prompt]
            client.score(score_text[:1000])
            client.generate(prompt[:100], max_chars=10).text()
            resting = rss_bytes(server.proc.pid)
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()

            def scores() -> None:
                client.score(score_text)

            def prompts() -> None:
                client.generate(prompt, max_chars=200, create_session=True).text()

            def feeds() -> None:
                with client.session() as session:
                    session.feed(prompt)
                    session.generate(max_chars=100).text()

            threads = [threading.Thread(target=f) for f in (scores, prompts, feeds) for _ in range(CONCURRENT)]
            for t in threads:
                t.start()
            for i in range(SESSION_MEMORY_MB * MB // 4096 + 200):  # more sessions than the bound holds
                client.generate("x", max_chars=1, seed=i, create_session=True).text()
            for t in threads:
                t.join(300)
            stop.set()
            sampler.join()
            time.sleep(0.5)
            after = rss_bytes(server.proc.pid)
    finally:
        stop.set()
        server.stop()
    in_flight = CONCURRENT * (max_score + 2 * max_prompt) * BYTES_PER_SCORED_CHAR
    bound = resting + 1.3 * SESSION_MEMORY_MB * MB + in_flight + SLACK_MB * MB
    assert peak[0] <= bound, f"peak RSS {peak[0] / MB:.0f} MB over the bound {bound / MB:.0f} MB"
    assert after <= resting + 1.3 * SESSION_MEMORY_MB * MB + SLACK_MB * MB, (
        f"RSS stayed at {after / MB:.0f} MB after the peak (resting {resting / MB:.0f} MB)"
    )
    figures = (resting, peak[0], after, bound)
    print("RSS MB: resting {:.0f}, peak {:.0f}, after {:.0f}, bound {:.0f}".format(*(f / MB for f in figures)))
