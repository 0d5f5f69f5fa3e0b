"""Run a real CharRNNServer (grpc.aio on 127.0.0.1, port 0, real ONNX Runtime) in a background thread."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import numpy as np
from prometheus_client import CollectorRegistry

from charrnn.engine import Engine
from charrnn.settings import settings_of
from service.config import ServerConfig
from service.engines import EngineHandle, start_process, thread_launcher
from service.server import CharRNNServer
from service.wire import Outputs

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
TEST_KEY = "test-hmac-key"


def make_config(model_dir: Path | None, **overrides: Any) -> ServerConfig:
    """A loopback test server's config; `overrides` are settings by name, nested or not (max_sessions=2).
    `model_dir` None: pass `model_repository=`."""
    paths = {s.name: s.path for s in settings_of(ServerConfig)}
    values: dict[tuple[str, ...], Any] = {("flush", "flush_interval_ms"): 10.0, ("metrics_port",): -1}
    values |= {paths[name]: value for name, value in overrides.items()}
    top = {path[0]: v for path, v in values.items() if len(path) == 1}
    nested: dict[str, dict[str, Any]] = {}
    for path, v in values.items():
        if len(path) == 2:
            nested.setdefault(path[0], {})[path[1]] = v
    sections = {name: replace(getattr(ServerConfig(), name), **fields) for name, fields in nested.items()}
    return ServerConfig(model_dir=model_dir, host="127.0.0.1", port=0, hmac_key=TEST_KEY, **top, **sections)


class ServerThread:
    """`with ServerThread(config) as srv:` → srv.target is "127.0.0.1:PORT"; srv.call(coro) runs on its loop.

    Its engines are processes, as in production. With `engine` (an Engine this test holds) they are threads of
    this process over that object instead, so a test can watch or break its model calls (`ModelCalls`); the
    messages between the front and the engines are the same either way."""

    def __init__(self, config: ServerConfig, engine: Engine | None = None):
        self.config = config
        self.engine = engine
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: CharRNNServer | None = None
        self.port = 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                launch = start_process if self.engine is None else thread_launcher(self.engine)
                self.server = CharRNNServer(self.config, launch=launch)
                self.port = await self.server.start()
            except BaseException as exc:
                self._error = exc
                raise
            finally:
                self._ready.set()
            await self._stop.wait()
            if self.server is not None:
                await self.server.stop(0.0)

        with contextlib.suppress(Exception):
            asyncio.run(main())

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        self._ready.wait(60)
        if self._error is not None:
            raise self._error
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def live(self) -> int:
        assert self.server is not None
        return self.server.scheduler.live

    @property
    def queued(self) -> int:
        assert self.server is not None
        return self.server.scheduler.queued

    @property
    def registry(self) -> CollectorRegistry:
        """The server's own metrics (each ServerThread has a fresh registry)."""
        assert self.server is not None
        return self.server.metrics.registry

    def stop(self, grace_s: float = 0.0) -> None:
        """Drain and stop the server now (the thread then ends)."""
        if self.server is not None:
            server, self.server = self.server, None
            self.call(server.stop(grace_s))

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(timeout=30)


class EngineReports:
    """`with EngineReports(srv) as reports:` records what each engine reported to the front while the block
    lasts (processes or threads alike): (engine index, hook name, arguments), e.g. ("on_step", (rows, ...))
    for every decode step, in each engine's order."""

    def __init__(self, server: ServerThread):
        assert server.server is not None
        self._scheduler = server.server.scheduler
        self.events: list[tuple[int, str, tuple[Any, ...]]] = []

    def widest_step(self) -> int:
        """The most rows one decode step advanced in one model call (0: no step)."""
        return max((args[0] for _, name, args in list(self.events) if name == "on_step"), default=0)

    def __enter__(self) -> EngineReports:
        real = self._scheduler._apply

        def recording(engine: EngineHandle, out: Outputs) -> None:
            self.events += [(engine.index, name, args) for name, args in out.events]
            real(engine, out)

        self._scheduler._apply = recording  # type: ignore[method-assign]
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        del self._scheduler._apply  # the class's own again


def generate_together(
    client: Any, requests: list[dict[str, Any]], server: ServerThread
) -> tuple[list[tuple[str, list[tuple[float, ...]]]], int]:
    """Start every request at once (a barrier) on its own thread: the streams share batches.

    Returns each stream's (text, watched values) and the most rows one decode step's model call advanced
    meanwhile, so a test can check the streams really were batched together.
    """
    n = len(requests)
    results: list[tuple[str, list[tuple[float, ...]]]] = [("", [])] * n
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        barrier.wait()
        gen = client.generate(**requests[i])
        results[i] = ("".join(gen), gen.activations)

    with EngineReports(server) as model:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    return results, model.widest_step()


class ModelCalls:
    """`with ModelCalls(srv) as calls:` records every call of the running server's model, in order: the
    engine that made it and its token ids ([rows, time]; time 1 is a decode step). The real engine runs each
    call; only its `run` is wrapped while the block lasts (blocks nest). The server must run its engines as
    threads over a model this test holds (`ServerThread(config, engine=Engine(...))`)."""

    def __init__(self, server: ServerThread):
        assert server.engine is not None, "ModelCalls needs ServerThread(config, engine=Engine(model_dir))"
        self._engine = server.engine
        self.calls: list[tuple[str, np.ndarray]] = []

    def widest_step(self) -> int:
        """The most rows one decode step advanced in one model call (0: no step)."""
        return max((tokens.shape[0] for _, tokens in list(self.calls) if tokens.shape[1] == 1), default=0)

    def __enter__(self) -> ModelCalls:
        self._previous = vars(self._engine).get("run")  # an enclosing block's recorder, if any
        run = self._engine.run

        def recording(tokens: np.ndarray, states: Any) -> Any:
            self.calls.append((threading.current_thread().name, tokens.copy()))
            return run(tokens, states)

        self._engine.run = recording  # type: ignore[method-assign]
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self._previous is None:
            del self._engine.run  # the engine's own method again
        else:
            self._engine.run = self._previous  # type: ignore[method-assign]


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def charrnn_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "charrnn.cli", *args]


class ServerProcess:
    """`charrnn serve` in a subprocess on port 0; the port comes back through --port-file."""

    def __init__(
        self, model_dir: Path, tmp: Path, *extra: str, env: dict[str, str] | None = None, flag: str = "--model"
    ):
        self.port_file = tmp / f"port-{time.monotonic_ns()}"
        self.log = tmp / f"server-{time.monotonic_ns()}.log"
        args = ["serve", flag, str(model_dir), "--host", "127.0.0.1", "--port", "0"]
        args += ["--port-file", str(self.port_file), "--hmac-key", TEST_KEY, "--metrics-port", "0", *extra]
        full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        self._log_file = open(self.log, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            charrnn_cmd(*args), cwd=REPO, stdout=self._log_file, stderr=subprocess.STDOUT, env=full_env
        )
        self.port = 0

    def wait_ready(self, timeout: float = 60.0) -> ServerProcess:
        ok = wait_until(lambda: self.port_file.exists() or self.proc.poll() is not None, timeout)
        if not ok or self.proc.poll() is not None:
            raise RuntimeError(f"server did not start:\n{self.output()}")
        self.port = int(self.port_file.read_text())
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def output(self) -> str:
        self._log_file.flush()
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=30)
        finally:
            self._log_file.close()
