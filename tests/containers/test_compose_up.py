"""`docker compose up` for real, from docker-compose.yml plus a test override that only swaps where images
come from (tests/containers/compose.override.yml): `compose build` makes the images the suite built, the
server (gRPC, and server-sent events through its published HTTP port) and Prometheus, Prometheus scraping
the server over the project network, the `load` profile's Locust driving the server and leaving its report in a
volume, and the `train` profile training a tiny model into the `artifacts` volume that the recreated server
then serves. Grafana is not started (no image can be had offline); tests/deploy checks it statically."""

from __future__ import annotations

import csv
import io
import json
import logging
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from charrnn.client import Client
from tests.conftest import TINY_OVERRIDES
from tests.containers.engine import Engine, EngineError
from tests.containers.images import COMPOSE_OVERRIDE, build_prometheus_standin, torch_build_args
from tests.deploy import tools
from tests.http import sse
from tests.observability.scrape import scrape, total

pytestmark = [pytest.mark.containers, pytest.mark.timeout(900)]
log = logging.getLogger(__name__)

KEY = "compose-test-key-not-a-secret"
PROJECT = "charrnn"  # docker-compose.yml's `name`
SCRAPED_WITHIN_S = 60.0  # the scrape interval is 15 s


class Stack:
    """docker-compose.yml + the test override on the suite's engine, every port on a free 127.0.0.1 port."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.env = {k: v for k, v in engine.env.items() if k.startswith("DOCKER_")}
        self.env["CHARRNN_HMAC_KEY"] = KEY
        for name in ("GRPC", "METRICS", "HTTP", "PROMETHEUS", "GRAFANA", "LOCUST"):
            self.env[f"CHARRNN_{name}_PUBLISH"] = "127.0.0.1:"  # "127.0.0.1::PORT": an ephemeral host port

    def compose(self, *args: str, timeout: float = 300, **env: str) -> str:
        result = tools.compose(
            *args, files=(tools.COMPOSE_FILE, COMPOSE_OVERRIDE), env={**self.env, **env}, timeout=timeout
        )
        if result.returncode != 0:
            raise EngineError(f"docker compose {' '.join(args)} exited {result.returncode}:\n{result.stderr[-4000:]}")
        return result.stdout

    def address(self, service: str, port: int) -> str:
        host, _, published = self.compose("port", service, str(port)).strip().rpartition(":")
        assert host == "127.0.0.1", f"{service}:{port} is published on {host}"
        return f"127.0.0.1:{published}"

    def volume_file(self, volume: str, path: str, image: str) -> str:
        """A file from one of the project's named volumes, read by a throwaway container with no network."""
        (name,) = self.engine.docker(
            "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}",
            "--filter", f"label=com.docker.compose.volume={volume}",
        ).stdout.split()  # fmt: skip
        return self.engine.docker(
            "run", "--rm", "--network", "none", "--volume", f"{name}:/volume:ro", "--entrypoint", "cat", image,
            f"/volume/{path}",
        ).stdout  # fmt: skip


@pytest.fixture(scope="module")
def stack(engine: Engine, base_image: str, serve_image: str, load_image: str, train_image: str) -> Iterator[Stack]:
    build_prometheus_standin(engine, base_image)
    running = Stack(engine)
    # Compose's own build sections make the images the suite built: the same layers (all cached); only the
    # labels Compose adds differ.
    built = {image: engine.inspect(image)[0]["RootFS"]["Layers"] for image in (serve_image, load_image, train_image)}
    with torch_build_args() as torch_args:
        running.compose(
            "--profile", "train", "--profile", "load", "build", "--build-arg", f"PYTHON_IMAGE={base_image}",
            *torch_args, "server", "trainer", "locust",
        )  # fmt: skip
    assert {image: engine.inspect(image)[0]["RootFS"]["Layers"] for image in built} == built
    try:
        running.compose("up", "--detach", "--wait", "server", "prometheus")
        yield running
    finally:
        running.compose("--profile", "train", "--profile", "load", "down", "--volumes", "--timeout", "10")


def _prometheus(stack: Stack, path: str, **params: str) -> Any:
    url = f"http://{stack.address('prometheus', 9090)}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]


def test_compose_up_serves_and_prometheus_scrapes_the_server(stack: Stack) -> None:
    with Client(stack.address("server", 50051), timeout=30) as client:
        assert client.health() == "SERVING"
        text = client.generate("import ", max_chars=500, temperature=0.8, seed=3).text()
    assert len(text) == 500
    host, _, port = stack.address("server", 8000).rpartition(":")  # the HTTP face, published by Compose
    sse.check_stream(host, int(port), "import ", max_tokens=1500)
    deadline = time.monotonic() + SCRAPED_WITHIN_S
    while True:
        data = _prometheus(stack, "/api/v1/query", query="charrnn_generated_chars_total")
        if (data["result"] and float(data["result"][0]["value"][1]) >= 2000) or time.monotonic() > deadline:
            break
        time.sleep(1)
    log.info("Prometheus query charrnn_generated_chars_total: %s", json.dumps(data))
    print("charrnn_generated_chars_total ->", json.dumps(data))  # the figure docs/deploy.md quotes
    (sample,) = data["result"]
    assert sample["metric"]["job"] == "charrnn" and sample["metric"]["instance"] == "server:9464"
    assert float(sample["value"][1]) >= 2000, "gRPC's and HTTP's characters"
    (target,) = _prometheus(stack, "/api/v1/targets")["activeTargets"]
    assert target["health"] == "up" and target["scrapeUrl"] == "http://server:9464/metrics"
    groups = _prometheus(stack, "/api/v1/rules")["groups"]
    assert groups and all(g["file"] == "/etc/prometheus/alerts.yml" for g in groups)  # the alert rules loaded


def test_the_load_profile_drives_the_server_and_leaves_its_report_in_a_volume(stack: Stack, load_image: str) -> None:
    metrics = f"http://{stack.address('server', 9464)}/metrics"
    before = total(scrape(metrics), "charrnn_generated_chars_total")
    stack.compose(
        "--profile", "load", "run", "--rm", "locust", "--headless", "--host", "server:50051",
        "--http-host", "http://server:8000", "--users", "4", "--spawn-rate", "4", "--run-time", "10s",
        "--csv", "/results/compose", "--html", "/results/compose.html",
    )  # fmt: skip
    after = total(scrape(metrics), "charrnn_generated_chars_total")
    assert after > before, "Locust's requests did not reach the server"
    rows = list(csv.DictReader(io.StringIO(stack.volume_file("load-results", "compose_stats.csv", load_image))))
    (aggregated,) = [r for r in rows if r["Name"] == "Aggregated"]
    assert int(aggregated["Request Count"]) > 0 and int(aggregated["Failure Count"]) == 0, aggregated
    (http,) = [r for r in rows if r["Type"] == "http" and r["Name"] == "Completion stream"]
    assert int(http["Request Count"]) > 0, "the HTTP user streamed over the project network"
    assert "<html" in stack.volume_file("load-results", "compose.html", load_image).lower()


def test_the_train_profile_trains_into_the_volume_and_the_server_serves_it(stack: Stack, serve_image: str) -> None:
    stack.compose(
        "--profile", "train", "run", "--rm", "trainer", "train", "--out", "/artifacts/runs/compose-test",
        "--export", "/artifacts/models/trained", *TINY_OVERRIDES, "optim.max_steps=20", timeout=600,
    )  # fmt: skip
    manifest = json.loads(stack.volume_file("artifacts", "models/trained/manifest.json", serve_image))
    default = json.loads((tools.REPO / "models" / "default" / "manifest.json").read_text())
    assert manifest["onnx"]["sha256"] != default["onnx"]["sha256"]
    # As docs/deploy.md says: point CHARRNN_MODEL at the volume and recreate the server.
    stack.compose("up", "--detach", "--wait", "server", CHARRNN_MODEL="/artifacts/models/trained")
    with Client(stack.address("server", 50051), timeout=30) as client:
        info = client.info()
        text = client.generate("def ", max_chars=100, temperature=0.8, seed=1).text()
    assert info.sha256 == manifest["onnx"]["sha256"] and info.hidden_size == manifest["model"]["hidden_size"]
    assert len(text) == 100
