"""The front's end of an engine: starting one (a process, or a thread in tests), its socket, and what it runs.

`start_process` runs `python -m service.engine_loop` with one end of a socket pair; the engine reads its
`EngineSpec`, loads and warms up its model and answers `Ready` (or `StartFailed`, which becomes the
ArtifactError that refuses the model). The process is started from the event loop's thread: the kernel's
parent-death signal (service/engine_loop.py) is tied to the thread that started it, and that thread lives
as long as the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable

from charrnn.artifact import ArtifactError
from charrnn.engine import Engine
from service.stream import Stream
from service.wire import HEADER, EngineSpec, FedText, Inputs, Ready, StartFailed, frame

log = logging.getLogger(__name__)

# How long an engine may take to load and warm up its model before the front gives up on it.
START_TIMEOUT_S = 120.0


class EngineHandle:
    """One running engine as the front sees it: its socket, and the streams and texts it runs for the front."""

    def __init__(self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pid: int,
                 stop: Callable[[], None], wait: Callable[[float], bool]):  # fmt: skip
        self.index = index
        self.pid = pid
        self.reader, self.writer = reader, writer
        self._stop, self._wait = stop, wait
        self.streams: dict[int, Stream] = {}  # sent to it and not ended, by sid
        self.feeds: dict[int, asyncio.Future[FedText]] = {}  # texts sent to it, by rid
        self.pending = Inputs()  # what the next message to it carries
        self.rows = 0  # its batch size, as its last message said
        self.last_heard = time.monotonic()  # its last message, or when it was last given work while idle
        self.down = False  # died, wedged or closed: it takes nothing more
        self.reading: asyncio.Task[None] | None = None

    @property
    def busy(self) -> bool:
        return bool(self.streams or self.feeds)

    def send_pending(self) -> None:
        """Send what this event-loop turn gave the engine, as one message."""
        if self.pending and not self.down:
            self.writer.write(frame(self.pending))
        self.pending = Inputs()

    def kill(self) -> None:
        """Stop it now (SIGKILL a process): it is dead, wedged or no longer wanted."""
        self.down = True
        self.writer.close()
        self._stop()

    def close(self) -> None:
        """Close its socket: an engine exits when the front closes its end."""
        self.down = True
        self.writer.close()

    def join(self, timeout: float) -> bool:
        """Blocking: wait up to `timeout` for it to exit; True if it did."""
        return self._wait(timeout)


async def read_message(reader: asyncio.StreamReader) -> object:
    (length,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    return pickle.loads(await reader.readexactly(length))


Launcher = Callable[[EngineSpec, int], Awaitable[EngineHandle]]


async def _handshake(front: socket.socket, spec: EngineSpec, index: int, stop: Callable[[], None],
                     wait: Callable[[float], bool]) -> EngineHandle:  # fmt: skip
    reader, writer = await asyncio.open_unix_connection(sock=front)
    writer.write(frame(spec))
    try:
        reply = await asyncio.wait_for(read_message(reader), START_TIMEOUT_S)
    except (asyncio.IncompleteReadError, ConnectionError, TimeoutError) as exc:
        writer.close()
        stop()
        why = "timed out" if isinstance(exc, TimeoutError) else "exited"
        raise ArtifactError(f"engine {index} {why} before it was ready (its log above says why)") from exc
    if isinstance(reply, StartFailed):
        writer.close()
        wait(10.0)
        raise ArtifactError(f"{spec.model_dir} could not be loaded: {reply.message}")
    assert isinstance(reply, Ready), f"an engine answers Ready or StartFailed, not {type(reply).__name__}"
    return EngineHandle(index, reader, writer, reply.pid, stop, wait)


async def start_process(spec: EngineSpec, index: int) -> EngineHandle:
    """An engine in a process of its own. Call on the event loop's thread (see the module's docstring)."""
    front, child = socket.socketpair()
    env = {**os.environ, "CHARRNN_ENGINE_LOG_LEVEL": logging.getLevelName(logging.getLogger().getEffectiveLevel())}
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.engine_loop", str(child.fileno()), str(os.getpid())],
            pass_fds=[child.fileno()],
            env=env,
        )
    finally:
        child.close()

    def stop() -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)

    def wait(timeout: float) -> bool:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    return await _handshake(front, spec, index, stop, wait)


def thread_launcher(engine: Engine) -> Launcher:
    """Engines as threads of this process over `engine` (shared): for tests that prepare the model object itself
    (a fault injected into its calls). The messages, and everything the front does, are those of processes."""
    from service import engine_loop

    async def start(spec: EngineSpec, index: int) -> EngineHandle:
        front, child = socket.socketpair()
        thread = threading.Thread(target=engine_loop.serve_quietly, args=(child, engine), daemon=True,
                                  name=f"engine-{index}")  # fmt: skip
        thread.start()

        def stop() -> None:
            with contextlib.suppress(OSError):  # a thread cannot be killed: it ends when it next reads
                child.shutdown(socket.SHUT_RDWR)

        def wait(timeout: float) -> bool:
            thread.join(timeout)
            return not thread.is_alive()

        return await _handshake(front, spec, index, stop, wait)

    return start
