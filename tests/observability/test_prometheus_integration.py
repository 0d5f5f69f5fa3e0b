"""A real Prometheus scrapes a real server: counters arrive and the TTFC p99 query returns a number.

Also runs every Grafana panel's query against it (variables substituted): each must evaluate.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from charrnn.client import Client
from tests.observability.promtool import require
from tests.observability.test_deploy_config import dashboard_exprs
from tests.service.harness import ServerThread

TTFC_P99 = "histogram_quantile(0.99, sum by (le) (rate(charrnn_time_to_first_char_seconds_bucket[1m])))"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    def __init__(self, url: str):
        self.url = url

    def query(self, expr: str) -> dict[str, Any]:
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body: dict[str, Any] = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def poll(self, expr: str, ok: Any, timeout: float = 25.0) -> list[dict[str, Any]]:
        """Query until `ok(result)` holds; the last result otherwise (the assertion shows it)."""
        deadline = time.monotonic() + timeout
        while True:
            result: list[dict[str, Any]] = self.query(expr)["result"]
            if ok(result) or time.monotonic() > deadline:
                return result
            time.sleep(0.5)


@pytest.fixture
def prometheus(tmp_path: Path, server: ServerThread) -> Iterator[Prometheus]:
    binary = require("prometheus")
    assert server.server is not None and server.server.metrics_http is not None
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: charrnn\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{server.server.metrics_http.port}']}}]\n"
    )
    port = free_port()
    logfile = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        prom = Prometheus(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    output = (tmp_path / "prometheus.log").read_text()
                    raise RuntimeError(f"prometheus did not start:\n{output}") from None
                time.sleep(0.2)
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        logfile.close()


def scalar(result: list[dict[str, Any]]) -> float | None:
    """The single sample's value, or None when there is none or it is NaN."""
    if len(result) != 1:
        return None
    value = float(result[0]["value"][1])
    return None if value != value else value


@pytest.mark.slow
def test_prometheus_scrapes_the_server(server: ServerThread, prometheus: Prometheus) -> None:
    up = prometheus.poll('up{job="charrnn"}', lambda r: scalar(r) == 1)
    assert scalar(up) == 1, up
    with Client(server.target, timeout=30) as client:
        # Traffic across two scrapes, so rate() over the window has two points either side.
        for round_ in range(2):
            for i in range(4):
                client.generate("def f(x):\n", max_chars=200, seed=10 * round_ + i).text()
            client.score("import os\n")
            time.sleep(1.5)
    generated = prometheus.poll("sum(charrnn_generated_chars_total)", lambda r: (scalar(r) or 0) >= 1600)
    assert scalar(generated) == 1600, generated
    started = prometheus.poll(
        'sum(grpc_server_handled_total{grpc_method="Generate",grpc_code="OK"})', lambda r: (scalar(r) or 0) >= 8
    )
    assert scalar(started) == 8, started
    p99 = prometheus.poll(TTFC_P99, lambda r: scalar(r) is not None)
    value = scalar(p99)
    assert value is not None and 0 < value < 10, p99
    print(f"\nprometheus: {TTFC_P99} -> {json.dumps(p99)}")
    info = prometheus.query("charrnn_model_info")["result"]
    assert len(info) == 1 and info[0]["metric"]["sha256"], info
    # Every dashboard panel's query evaluates against the live data (status success, no error).
    for title, expr in dashboard_exprs():
        data = prometheus.query(expr)
        assert data["resultType"] == "vector", (title, expr)
