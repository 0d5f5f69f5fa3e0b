"""A burst of Session streams four times the limit: every call ends OK or RESOURCE_EXHAUSTED with the retry
hint, the open-streams gauge counts them, and the server serves on.

The burst is driven by the shipped synchronous client, one thread per stream. grpc's asyncio client is not
used here: when a server refuses a stream while the client is writing to it, grpcio's asyncio `write()` can
replace the server's status with INTERNAL "Failed execute_batch" (grpc/grpc#36066), a client-library race
that says nothing about the server; the synchronous API reports the server's status.
"""

from __future__ import annotations

import collections
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from charrnn.client import CharRNNError, Client
from tests.service.harness import ServerThread, make_config, wait_until

LIMIT = 16
BURST = 4 * LIMIT


def _burst(server: ServerThread, open_seen: list[int]) -> collections.Counter[str]:
    codes: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    start = threading.Barrier(BURST)

    def one(client: Client) -> None:
        start.wait()
        try:
            with client.session() as session:
                session.feed("def f(x):\n")
                assert server.server is not None
                with lock:
                    open_seen.append(server.server.runtime.session_streams)
                generation = session.generate(max_chars=200)
                "".join(generation)
                assert generation.result is not None
            code = "OK"
        except CharRNNError as exc:
            code = exc.code.name
            if code == "RESOURCE_EXHAUSTED":
                assert exc.retry_pushback_ms is not None and "max_session_streams" in exc.details, exc
        with lock:
            codes[code] += 1

    with Client(server.target, timeout=60) as client, ThreadPoolExecutor(BURST) as pool:
        for future in [pool.submit(one, client) for _ in range(BURST)]:
            future.result()
    return codes


def test_a_burst_of_four_times_the_limit_ends_ok_or_resource_exhausted(lstm_dir: Path) -> None:
    with ServerThread(make_config(lstm_dir, max_session_streams=LIMIT)) as srv:
        open_seen: list[int] = []
        codes = _burst(srv, open_seen)
        assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
        assert codes["OK"] >= LIMIT and codes["RESOURCE_EXHAUSTED"] > 0, codes
        assert max(open_seen) <= LIMIT
        assert srv.server is not None
        registry = srv.server.metrics.registry
        assert wait_until(lambda: registry.get_sample_value("charrnn_session_streams") == 0)
        refused = registry.get_sample_value(
            "grpc_server_handled_total",
            {"grpc_service": "charrnn.v1.CharRNN", "grpc_method": "Session", "grpc_type": "bidi_stream",
             "grpc_code": "ResourceExhausted"},
        )  # fmt: skip
        assert refused == codes["RESOURCE_EXHAUSTED"]
