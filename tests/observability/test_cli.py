"""`charrnn serve --metrics-port`: the flag, its environment variable, and a real process's /metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from charrnn.cli import build_parser
from charrnn.settings import build
from service.config import ServerConfig
from tests.observability.scrape import scrape
from tests.service.harness import ServerProcess, wait_until


def test_metrics_port_flag_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    def metrics_port(*argv: str) -> int:
        return build(ServerConfig, build_parser().parse_args(["serve", *argv])).metrics_port

    monkeypatch.delenv("CHARRNN_METRICS_PORT", raising=False)
    assert metrics_port() == 9464
    monkeypatch.setenv("CHARRNN_METRICS_PORT", "0")
    assert metrics_port() == 0
    assert metrics_port("--metrics-port", "-1") == -1


def test_served_process_reports_its_metrics_port(model_dir: Path, tmp_path: Path) -> None:
    port_file = tmp_path / "metrics.port"
    server = ServerProcess(model_dir, tmp_path, "--metrics-port", "0", "--metrics-port-file", str(port_file))
    try:
        server.wait_ready()
        assert wait_until(port_file.exists)
        samples = scrape(f"http://127.0.0.1:{int(port_file.read_text())}/metrics")
        assert samples[("charrnn_serving", frozenset())] == 1
        # The CLI serves the default registry, which adds the process collector.
        assert samples[("process_cpu_seconds_total", frozenset())] > 0
        assert "metrics on http://127.0.0.1:" in server.output()
    finally:
        assert server.stop() == 0
