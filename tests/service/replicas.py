"""Helpers for tests with several replicas: `charrnn serve` processes whose metrics a test can read, and a
TCP proxy that balances connections (not calls) the way a Kubernetes ClusterIP Service does."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

from tests.observability.scrape import scrape
from tests.service.harness import ServerProcess, ServerThread


def started(srv: ServerThread, method: str) -> float:
    """RPCs of `method` an in-process server has started (its `grpc_server_started_total`)."""
    assert srv.server is not None
    return sum(
        sample.value
        for family in srv.server.metrics.registry.collect()
        for sample in family.samples
        if sample.name == "grpc_server_started_total" and sample.labels.get("grpc_method") == method
    )


class Replica(ServerProcess):
    """`charrnn serve` on a loopback port with /metrics on another (both chosen by the system)."""

    def __init__(self, model_dir: Path, tmp: Path, *extra: str):
        self.metrics_port_file = tmp / f"metrics-port-{time.monotonic_ns()}"
        super().__init__(model_dir, tmp, "--metrics-port-file", str(self.metrics_port_file), *extra)

    def started(self, method: str) -> float:
        """RPCs of `method` this replica has started (its `grpc_server_started_total`)."""
        port = int(self.metrics_port_file.read_text())
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
        return sum(
            v for (name, labels), v in samples.items()
            if name == "grpc_server_started_total" and ("grpc_method", method) in labels
        )  # fmt: skip

    def live(self) -> float:
        port = int(self.metrics_port_file.read_text())
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
        return sum(v for (name, _), v in samples.items() if name == "charrnn_live_streams")  # over its models


def start_replicas(model_dir: Path, tmp: Path, n: int, *extra: str) -> list[Replica]:
    """`n` replicas started together (their start-ups overlap)."""
    replicas = [Replica(model_dir, tmp, *extra) for _ in range(n)]
    try:
        for replica in replicas:
            replica.wait_ready()
    except BaseException:
        for replica in replicas:
            replica.proc.kill()
            replica.stop()
        raise
    return replicas


class ConnectionBalancer:
    """A TCP proxy on loopback that sends each new connection to the next backend port in turn.

    Like kube-proxy behind a ClusterIP Service it balances connections, not calls: a client keeps the
    backend its connection reached until that connection closes. `backends` may grow while it runs.
    """

    def __init__(self, backends: list[int]):
        self.backends = backends
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return  # closed
            backend = self.backends[self.connections % len(self.backends)]
            self.connections += 1
            upstream = socket.create_connection(("127.0.0.1", backend))
            for src, dst in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=_pump, args=(src, dst), daemon=True).start()

    def close(self) -> None:
        self._listener.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy bytes one way until either side closes, then close both."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()
