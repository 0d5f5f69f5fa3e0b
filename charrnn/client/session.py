"""`SessionClient`: a bidirectional Session driven synchronously, one action and its answer at a time."""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Unpack

import grpc

from charrnn.client.client import Generation
from charrnn.client.errors import CharRNNError
from charrnn.client.options import GenerationOptions, sampling_message
from charrnn.v1 import charrnn_pb2 as pb
from charrnn.v1 import charrnn_pb2_grpc as pb_grpc


class SessionClient:
    """A Session stream driven synchronously: each method sends one action and reads its answer."""

    def __init__(self, stub: pb_grpc.CharRNNStub, model: str | None = None):
        self._model = model or ""  # sent with the first message: the stream's model
        self._requests: queue.Queue[pb.SessionRequest | None] = queue.Queue()
        self._responses: Any = stub.Session(iter(self._requests.get, None))  # iterator and grpc.Call
        self._closed = False
        # True while a receive is outstanding: set before next() and cleared only when it returns. If the
        # caller is interrupted inside next() (GreenletExit, KeyboardInterrupt, a timeout), it stays set.
        self._receiving = False

    def _send(self, request: pb.SessionRequest) -> None:
        request.model, self._model = self._model, ""
        self._requests.put(request)

    def _receive(self) -> pb.SessionResponse:
        self._receiving = True
        try:
            response: pb.SessionResponse = next(self._responses)
        except grpc.RpcError as exc:
            self._receiving = False
            raise CharRNNError.wrap(exc) from None
        self._receiving = False
        return response

    def feed(self, text: str) -> int:
        self._send(pb.SessionRequest(feed=pb.FeedAction(text=text)))
        return int(self._receive().fed.chars)

    def generate(self, prompt: str = "", *, max_chars: int = 0, **options: Unpack[GenerationOptions]) -> Generation:
        action = pb.GenerateAction(
            prompt=prompt,
            max_chars=max_chars,
            sampling=sampling_message(options),
            stop=list(options.get("stop", ())),
        )
        self._send(pb.SessionRequest(generate=action))
        return Generation(self._generation_events())

    def _generation_events(self) -> Iterator[Any]:
        """Session events of one generation, shaped like GenerateResponse (text, then done)."""
        while True:
            event = self._receive()
            kind = event.WhichOneof("event")
            if kind == "text":
                yield pb.GenerateResponse(text=event.text)
            elif kind == "done":
                yield pb.GenerateResponse(done=event.done)
                return

    def cancel(self) -> None:
        """Stop the running generation; it ends with finish reason "cancelled"."""
        self._send(pb.SessionRequest(cancel=pb.CancelAction()))

    def token(self) -> bytes:
        self._send(pb.SessionRequest(token=pb.TokenAction()))
        return bytes(self._receive().token.resume_token)

    def load(self, *, resume_token: bytes | None = None, session_id: str | None = None) -> None:
        action = (
            pb.LoadAction(resume_token=resume_token)
            if resume_token is not None
            else pb.LoadAction(session_id=session_id or "")
        )
        self._send(pb.SessionRequest(load=action))
        self._receive()

    def reset(self) -> None:
        self._send(pb.SessionRequest(reset=pb.ResetAction()))
        self._receive()

    def close(self) -> None:
        """Half-close (the request iterator ends) and drain until the server ends the stream. Idempotent.

        After an interrupted receive the call is cancelled instead: grpc's iterator would post a second
        ReceiveMessage on the same call (GRPC_CALL_ERROR_TOO_MANY_OPERATIONS, "call error 8")."""
        if self._closed:
            return
        self._closed = True
        self._requests.put(None)  # ends the request iterator, so its consumer thread (greenlet) exits
        if self._receiving:
            self.abort()
            return
        with contextlib.suppress(grpc.RpcError):
            for _ in self._responses:
                pass

    def abort(self) -> None:
        """Cancel the stream without reading the rest (the server sees CANCELLED); from the caller's thread."""
        self._closed = True
        self._requests.put(None)
        self._responses.cancel()

    def __enter__(self) -> SessionClient:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        """A block left by an exception abandons the session (no draining of a generation nobody reads)."""
        if ev is not None and not self._closed:
            self.abort()
        else:
            self.close()
