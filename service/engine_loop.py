"""An engine: one model session, one batch, one loop, in a process of its own (`python -m service.engine_loop FD`).

The front (service/scheduler.py) starts one per core and talks to each over a socket (service/wire.py). The
loop takes whatever `Inputs` arrived, runs one iteration of its core (service/core.py: plan, execute,
apply) and answers with one `Outputs` when streams got chunks or texts finished, or when the heartbeat is
due while it has work, so the front can tell a busy engine from a wedged one. With nothing to do it sleeps
on the socket.

An engine never outlives the front: it asks the kernel for SIGKILL when its parent dies (Linux
PR_SET_PDEATHSIG), and it exits when the socket closes (everywhere). Ctrl-C in a terminal reaches the whole
process group: engines ignore SIGINT and let the front drain and then close them.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import select
import signal
import socket
import sys
import time
from collections import deque

from charrnn.engine import Engine
from service.core import EngineCore
from service.errors import InvalidRequest
from service.feed import TextRun
from service.observer import SchedulerObserver
from service.stream import Stream
from service.wire import (
    HEADER,
    EngineSpec,
    Feed,
    FeedResult,
    Inputs,
    Outputs,
    Ready,
    StartFailed,
    StreamUpdate,
    frame,
    portable,
)

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # linux/prctl.h
_RECV_BYTES = 1 << 16


class Recorder(SchedulerObserver):
    """Keeps the core's per-step reports for the next message (the front's metrics replay them). Finished
    streams are not reported here: the front sees their last chunk and times them itself."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[object, ...]]] = []

    def on_step(self, batch: int, model_s: float, sampling_s: float) -> None:
        self.events.append(("on_step", (batch, model_s, sampling_s)))

    def on_prefill(self, rows: int, chars: int, seconds: float) -> None:
        self.events.append(("on_prefill", (rows, chars, seconds)))

    def on_row_failure(self, phase: str) -> None:
        self.events.append(("on_row_failure", (phase,)))

    def on_batch_failure(self, phase: str) -> None:
        self.events.append(("on_batch_failure", (phase,)))

    def take(self) -> list[tuple[str, tuple[object, ...]]]:
        events, self.events = self.events, []
        return events


class Channel:
    """Frames over a blocking socket, read without blocking between iterations."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._buffer = bytearray()
        self.closed = False  # the front closed its end
        # Asked once per iteration: poll(0) answers "nothing new" without a failed recv's exception.
        self._readable = select.poll()
        self._readable.register(sock, select.POLLIN)

    def send(self, message: object) -> None:
        self.sock.sendall(frame(message))

    def wait(self, timeout: float | None) -> None:
        """Until bytes arrive (or the front closes), at most `timeout` seconds (None: no limit)."""
        select.select([self.sock], [], [], timeout)

    def receive(self) -> list[object]:
        """Every whole message that has arrived, without waiting."""
        if not self._readable.poll(0):
            return []
        while True:
            try:
                data = self.sock.recv(_RECV_BYTES, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data = b""
            if not data:
                self.closed = True
                break
            self._buffer += data
        messages: list[object] = []
        while len(self._buffer) >= HEADER.size:
            (length,) = HEADER.unpack_from(self._buffer)
            end = HEADER.size + length
            if len(self._buffer) < end:
                break
            messages.append(pickle.loads(self._buffer[HEADER.size : end]))
            del self._buffer[:end]
        return messages

    def receive_one(self) -> object:
        """The next message, waiting for it (the spec, at start)."""
        while True:
            messages = self.receive()
            if messages:
                assert len(messages) == 1, "the front sends nothing before the engine is ready"
                return messages[0]
            if self.closed:
                raise EOFError("the front closed the engine's socket before sending its spec")
            self.wait(None)


class EngineLoop:
    """One engine's streams and texts by the front's names, its core, and the messages in between."""

    def __init__(self, engine: Engine, spec: EngineSpec, channel: Channel):
        self.recorder = Recorder()
        self.core = EngineCore(engine, spec.limits, spec.flush_policy, spec.scheduling, self.recorder)
        self.channel = channel
        self.max_rows = spec.limits.max_live_streams
        # Often enough that the front never mistakes a busy engine for a wedged one, rarely enough to cost nothing.
        self.heartbeat_s = min(0.1, spec.scheduling.engine_stall_seconds / 8)
        self.streams: dict[Stream, int] = {}  # live here, to the front's sid
        self.by_sid: dict[int, Stream] = {}
        self.runs: dict[int, TextRun] = {}  # texts in progress, by the front's rid
        self.done: deque[FeedResult] = deque()

    def run(self) -> None:
        last_sent = time.monotonic()
        while not self.channel.closed:
            for message in self.channel.receive():
                assert isinstance(message, Inputs), f"an engine takes Inputs, not {type(message).__name__}"
                self.take(message)
            if self.channel.closed:
                break
            busy = self.core.working
            if busy:
                self.iterate()
            now = time.monotonic()
            if self.core.woken or self.done or (busy and now - last_sent >= self.heartbeat_s):
                self.channel.send(self.outputs())
                last_sent = now
            if not busy and not self.core.working:
                if self.recorder.events:
                    self.channel.send(self.outputs())  # what the last iterations reported, before sleeping
                self.channel.wait(None)
                last_sent = time.monotonic()

    def take(self, inputs: Inputs) -> None:
        q = self.core.queues
        for submit in inputs.submits:
            stream = Stream(submit.job, _no_cancel)
            self.streams[stream] = submit.sid
            self.by_sid[submit.sid] = stream
            q.waiting.append(stream)
        for sid in inputs.cancels:
            cancelled = self.by_sid.get(sid)
            if cancelled is not None:
                cancelled.cancelled = True
                q.cancelled.add(cancelled)
        for feed in inputs.feeds:
            self._start_run(feed)
        for rid in inputs.dropped_feeds:
            run = self.runs.pop(rid, None)
            if run is not None:
                run.cancelled = True  # the policy drops it before its next chunk

    def _start_run(self, feed: Feed) -> None:
        try:
            run = TextRun(feed.ids, feed.context, self.core.engine, feed.logprobs)
        except InvalidRequest as exc:  # this text or context: it fails alone
            self.done.append(FeedResult(feed.rid, None, None, 0, exc))
            return
        self.runs[feed.rid] = run
        run.on_done = lambda r, rid=feed.rid: self._run_done(rid, r)
        self.core.queues.runs.append(run)

    def _run_done(self, rid: int, run: TextRun) -> None:
        if self.runs.pop(rid, None) is None:
            return  # its caller went away
        if run.error is not None:
            self.done.append(FeedResult(rid, None, None, 0, portable(run.error)))
        else:
            self.done.append(FeedResult(rid, run.after(), run.logprobs, run.first_scored, None))

    def iterate(self) -> None:
        core = self.core
        plan = core.begin(time.monotonic(), self.max_rows - core.live)
        core.finish(plan)

    def outputs(self) -> Outputs:
        out = Outputs(rows=len(self.core.batch), events=self.recorder.take())
        for stream in dict.fromkeys(self.core.take_woken()):  # each once, in order
            sid = self.streams.get(stream)
            if sid is None:
                continue
            chunks, error = stream.drain()
            ended = error is not None or stream.finished is not None
            if ended:
                del self.streams[stream], self.by_sid[sid]
            out.streams.append(StreamUpdate(sid, chunks, None if error is None else portable(error)))
        while self.done:
            out.feeds.append(self.done.popleft())
        return out


def _no_cancel(stream: Stream) -> None:
    """Engine-side streams are cancelled by the front's message, never by a consumer here."""


def serve(sock: socket.socket, engine: Engine | None = None) -> int:
    """Run one engine over `sock` until the front closes it: read the spec, load the model (unless `engine` is
    given: tests run a prepared one in a thread), warm up, report Ready (or StartFailed), then loop."""
    channel = Channel(sock)
    spec = channel.receive_one()
    assert isinstance(spec, EngineSpec)
    try:
        if engine is None:  # a process of its own: it yields to the front (see SchedulingOptions.engine_niceness)
            os.nice(spec.scheduling.engine_niceness)
            engine = Engine(spec.model_dir, spec.engine)
        if engine.sha256 != spec.sha256:
            raise RuntimeError(
                f"the model file changed on disk (sha256 {engine.sha256[:12]}…, expected {spec.sha256[:12]}…)"
            )
        engine.warm_up(spec.limits.max_live_streams)
    except Exception as exc:  # the front refuses the model with this message
        channel.send(StartFailed(f"{type(exc).__name__}: {exc}"))
        return 1
    channel.send(Ready(os.getpid(), engine.sha256))
    EngineLoop(engine, spec, channel).run()
    return 0


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the front dies, even if this engine is wedged (Linux); elsewhere the closed socket ends it."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the front died before the request took effect
        os._exit(1)


def serve_quietly(sock: socket.socket, engine: Engine | None = None) -> int:
    """`serve`, then close the socket whatever happened: a bug ends this engine (logged), and the front, seeing
    the socket close, fails its streams and starts another."""
    try:
        return serve(sock, engine)
    except Exception:
        log.exception("engine failed")
        return 1
    finally:
        sock.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    fd, parent = int(args[0]), int(args[1])
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=os.environ.get("CHARRNN_ENGINE_LOG_LEVEL", "WARNING"),
        format=f"%(asctime)s engine[{os.getpid()}] %(levelname)s %(name)s: %(message)s",
    )
    return serve_quietly(socket.socket(fileno=fd))


if __name__ == "__main__":
    sys.exit(main())
