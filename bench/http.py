"""HTTP benchmarks: the server CPU that SSE costs per character against gRPC (`charrnn bench sse`), and what a
streamed request costs the event loop under aiohttp and under starlette on uvicorn (`charrnn bench
http-frameworks`, the measurement that chose aiohttp).

Both measure the server process' CPU time (user + system, from /proc) over a fixed window in which this
process drives the load, and divide it by the work delivered: a cost that does not depend on how fast a
shared machine happens to be, only on what each delivered character or event made the server do. Each row
is next to its baseline measured in the same run (gRPC; aiohttp).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.proctree import cpu_seconds
from bench.serve import PROMPT, ServerProcess, drive

FRAMEWORKS = ("aiohttp", "starlette")
EVENT = b'data: {"id":"cmpl-0","object":"text_completion","choices":[{"index":0,"text":"' + b"x" * 57 + b'"}]}\n\n'


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --- charrnn bench sse -------------------------------------------------------------------------------------
@dataclass
class EdgeResult:
    edge: str  # "grpc" or "sse"
    streams: int
    chars_per_s: float
    messages: int
    chars_per_message: float
    server_cpu_us_per_char: float
    client_cpu_us_per_char: float  # this process (the load generator): where a shared machine's cores also go


async def _drive_sse(url: str, streams: int, duration: float, max_chars: int) -> tuple[int, int]:
    """`streams` concurrent SSE completions back to back for `duration`: (characters, events) received."""
    import aiohttp

    totals = [0, 0]
    end = time.perf_counter() + duration

    async def worker(i: int, session: aiohttp.ClientSession) -> None:
        seed = i * 1_000_003
        while time.perf_counter() < end:
            seed += 1
            body = {"prompt": PROMPT, "max_tokens": max_chars, "temperature": 1.0, "seed": seed, "stream": True}
            async with session.post(f"{url}/v1/completions", json=body) as response:
                buffer = b""
                async for data in response.content.iter_any():
                    if time.perf_counter() >= end:
                        return
                    buffer += data
                    *events, buffer = buffer.split(b"\n\n")
                    for event in events:
                        if event != b"data: [DONE]":
                            totals[0] += len(json.loads(event[6:])["choices"][0]["text"])
                            totals[1] += 1

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(i, session) for i in range(streams)))
    return totals[0], totals[1]


def _measure(server: ServerProcess, edge: str, streams: int, duration: float, max_chars: int) -> EdgeResult:
    cpu0, client0, t0 = cpu_seconds(server.pid), time.process_time(), time.perf_counter()
    if edge == "grpc":
        r = drive(server.target, edge, streams, duration, max_chars)
        chars, messages = round(r.chars_per_s * duration), r.messages
    else:
        chars, messages = asyncio.run(_drive_sse(server.http_url, streams, duration, max_chars))
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds(server.pid) - cpu0
    per_char = 1e6 / max(1, chars)
    client = time.process_time() - client0
    rate, per_message = chars / elapsed, chars / max(1, messages)
    return EdgeResult(edge, streams, rate, messages, per_message, cpu * per_char, client * per_char)


def _median(runs: list[EdgeResult]) -> EdgeResult:
    """The run with the median server CPU per character (a whole run, so its figures stay consistent)."""
    return sorted(runs, key=lambda r: r.server_cpu_us_per_char)[len(runs) // 2]


def sse_run(args: argparse.Namespace) -> dict[str, Any]:
    load_start = load_average()
    flags = ["--max-live-streams", str(max(args.streams)), "--max-request-chars", str(args.max_chars),
             "--flush-interval-ms", str(args.flush_interval_ms)]  # fmt: skip
    results: list[EdgeResult] = []
    with tempfile.TemporaryDirectory(prefix="charrnn-bench-sse-") as tmp:
        server = ServerProcess(args.model, Path(tmp), "sse", flags, http=True)
        try:
            for edge in ("grpc", "sse"):
                _measure(server, edge, 1, min(1.0, args.duration), args.max_chars)  # warm-up
            for n in args.streams:  # the edges alternate at each count: load on the machine drifts
                runs = [_measure(server, edge, n, args.duration, args.max_chars)
                        for _ in range(args.repeats) for edge in ("grpc", "sse")]  # fmt: skip
                results += [_median([r for r in runs if r.edge == edge]) for edge in ("grpc", "sse")]
        finally:
            server.close()
    return {
        "settings": {
            "model": str(args.model),
            "duration_s": args.duration,
            "repeats": args.repeats,
            "max_chars": args.max_chars,
            "flush_interval_ms": args.flush_interval_ms,
            "cpus": os.cpu_count(),
        },
        "load_average": {"start": load_start, "end": load_average()},
        "results": [asdict(r) for r in results],
    }


def sse_table(report: dict[str, Any]) -> str:
    rows = report["results"]
    grpc = {r["streams"]: r for r in rows if r["edge"] == "grpc"}
    head = (
        f"{'edge':<5} {'streams':>7} {'chars/s':>9} {'chars/msg':>9} {'server CPU us/char':>19} "
        f"{'x gRPC':>7} {'SSE overhead us/char':>21} {'client CPU us/char':>19}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        base = grpc[r["streams"]]["server_cpu_us_per_char"]
        extra = f"{r['server_cpu_us_per_char'] - base:+.2f}" if r["edge"] == "sse" else ""
        lines.append(
            f"{r['edge']:<5} {r['streams']:>7} {r['chars_per_s']:>9.0f} {r['chars_per_message']:>9.1f} "
            f"{r['server_cpu_us_per_char']:>19.2f} {r['server_cpu_us_per_char'] / base:>7.2f} {extra:>21} "
            f"{r['client_cpu_us_per_char']:>19.2f}"
        )
    load = report["load_average"]
    lines.append(f"\nload average (1/5/15 min) at the start: {load['start']}; at the end: {load['end']}")
    return "\n".join(lines)


def main_sse(args: argparse.Namespace) -> int:
    report = sse_run(args)
    text = sse_table(report)
    print(text)
    return _write(report, args.out, "bench-sse")


# --- charrnn bench http-frameworks --------------------------------------------------------------------------
def _aiohttp_app() -> Any:
    from aiohttp import web

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(int(request.query["events"])):
            await response.write(EVENT)
            await asyncio.sleep(0)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/stream", stream)
    return app


def _starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    async def stream(request: Request) -> StreamingResponse:
        async def events(n: int) -> Any:
            for _ in range(n):
                yield EVENT
                await asyncio.sleep(0)

        return StreamingResponse(events(int(request.query_params["events"])), media_type="text/event-stream")

    return Starlette(routes=[Route("/stream", stream)])


async def _serve_framework(framework: str, port_file: Path) -> None:
    """One framework on this process' asyncio loop (as the HTTP face runs beside gRPC), until killed."""
    if framework == "aiohttp":
        from aiohttp import web

        runner = web.AppRunner(_aiohttp_app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
    else:
        import uvicorn

        config = uvicorn.Config(_starlette_app(), host="127.0.0.1", port=0, loop="none", lifespan="off",
                                log_level="warning", access_log=False)  # fmt: skip
        server = uvicorn.Server(config)
        asyncio.get_running_loop().create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
    port_file.write_text(str(port))
    await asyncio.Event().wait()


@dataclass
class FrameworkResult:
    framework: str
    streams: int
    events_per_request: int
    requests: int
    events: int
    server_cpu_us_per_event: float
    server_cpu_us_per_request: float


async def _drive_events(url: str, streams: int, duration: float, events: int) -> tuple[int, int]:
    import aiohttp

    totals = [0, 0]
    end = time.perf_counter() + duration

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < end:
            async with session.get(f"{url}/stream", params={"events": str(events)}) as response:
                body = await response.read()
            totals[0] += 1
            totals[1] += body.count(b"\n\n")

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(worker(session) for _ in range(streams)))
    return totals[0], totals[1]


def frameworks_run(args: argparse.Namespace) -> dict[str, Any]:
    load_start = load_average()
    results: list[FrameworkResult] = []
    with tempfile.TemporaryDirectory(prefix="charrnn-bench-frameworks-") as tmp:
        servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        try:
            for framework in FRAMEWORKS:
                port_file = Path(tmp) / f"port-{framework}"
                cmd = [sys.executable, "-m", "bench.http", "--framework", framework, "--port-file", str(port_file)]
                proc = subprocess.Popen(cmd)
                servers[framework] = (proc, "")
                deadline = time.monotonic() + 60
                while not port_file.exists():
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"the {framework} server did not start")
                    time.sleep(0.05)
                servers[framework] = (proc, f"http://127.0.0.1:{port_file.read_text()}")
            for streams in args.streams:
                for events in args.events:
                    for framework, (proc, url) in servers.items():  # back to back: load on the machine drifts
                        cpu0 = cpu_seconds(proc.pid)
                        requests, delivered = asyncio.run(_drive_events(url, streams, args.duration, events))
                        cpu = (cpu_seconds(proc.pid) - cpu0) * 1e6
                        results.append(FrameworkResult(framework, streams, events, requests, delivered,
                                                       cpu / max(1, delivered), cpu / max(1, requests)))  # fmt: skip
        finally:
            for proc, _ in servers.values():
                proc.kill()
                proc.wait()
    return {
        "settings": {
            "duration_s": args.duration,
            "event_bytes": len(EVENT),
            "cpus": os.cpu_count(),
            "versions": _versions(),
        },
        "load_average": {"start": load_start, "end": load_average()},
        "results": [asdict(r) for r in results],
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("aiohttp", "starlette", "uvicorn")}


def frameworks_table(report: dict[str, Any]) -> str:
    rows = report["results"]
    base = {(r["streams"], r["events_per_request"]): r for r in rows if r["framework"] == "aiohttp"}
    head = (
        f"{'framework':<10} {'streams':>7} {'events/req':>10} {'requests':>8} {'CPU us/event':>12} "
        f"{'CPU us/request':>14} {'x aiohttp':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = r["server_cpu_us_per_event"] / base[r["streams"], r["events_per_request"]]["server_cpu_us_per_event"]
        lines.append(
            f"{r['framework']:<10} {r['streams']:>7} {r['events_per_request']:>10} {r['requests']:>8} "
            f"{r['server_cpu_us_per_event']:>12.1f} {r['server_cpu_us_per_request']:>14.1f} {ratio:>9.2f}"
        )
    s, load = report["settings"], report["load_average"]
    lines.append(f"\n{s['versions']}; load average at the start: {load['start']}; at the end: {load['end']}")
    return "\n".join(lines)


def main_frameworks(args: argparse.Namespace) -> int:
    missing = [name for name in ("aiohttp", "starlette", "uvicorn") if _missing(name)]
    if missing:
        print(f"charrnn bench http-frameworks: install {' '.join(missing)} first (pip install ...)", file=sys.stderr)
        return 2
    report = frameworks_run(args)
    print(frameworks_table(report))
    return _write(report, args.out, "bench-http-frameworks")


def _missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


def _write(report: dict[str, Any], out: Path, name: str) -> int:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {out / f'{name}.json'}")
    return 0


if __name__ == "__main__":  # a framework's server process for `charrnn bench http-frameworks`
    parser = argparse.ArgumentParser()
    parser.add_argument("--framework", choices=FRAMEWORKS, required=True)
    parser.add_argument("--port-file", type=Path, required=True)
    options = parser.parse_args()
    asyncio.run(_serve_framework(options.framework, options.port_file))
