"""A burst of Session streams four times the limit: every call ends OK or RESOURCE_EXHAUSTED with the retry
hint, the open-streams gauge counts them, and the server serves on."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

import grpc

from charrnn.protocol import RETRY_PUSHBACK_KEY
from charrnn.v1 import charrnn_pb2 as pb
from charrnn.v1 import charrnn_pb2_grpc as pb_grpc
from tests.service.harness import ServerThread, make_config, wait_until

LIMIT = 16
BURST = 4 * LIMIT


async def _burst(target: str, open_seen: list[int], server: ServerThread) -> collections.Counter[str]:
    codes: collections.Counter[str] = collections.Counter()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.CharRNNStub(channel)

        async def one() -> None:
            call = stub.Session(timeout=60)
            try:
                await call.write(pb.SessionRequest(feed=pb.FeedAction(text="def f(x):\n")))
                await call.read()
                assert server.server is not None
                open_seen.append(server.server.runtime.session_streams)
                await call.write(pb.SessionRequest(generate=pb.GenerateAction(max_chars=200)))
                while (response := await call.read()) is not grpc.aio.EOF and not response.HasField("done"):
                    pass
                await call.done_writing()
                while await call.read() is not grpc.aio.EOF:
                    pass
                assert await call.code() == grpc.StatusCode.OK
                codes["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                codes[exc.code().name] += 1
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    trailers = dict(exc.trailing_metadata() or ())
                    assert RETRY_PUSHBACK_KEY in trailers and "max_session_streams" in (exc.details() or "")

        await asyncio.gather(*(one() for _ in range(BURST)))
    return codes


def test_a_burst_of_four_times_the_limit_ends_ok_or_resource_exhausted(lstm_dir: Path) -> None:
    with ServerThread(make_config(lstm_dir, max_session_streams=LIMIT)) as srv:
        open_seen: list[int] = []
        codes = asyncio.run(_burst(srv.target, open_seen, srv))
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
