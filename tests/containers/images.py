"""Building deploy/Dockerfile's targets in an Engine, tagged as docker-compose.yml names them, and the
local stand-in for the Prometheus image Docker Hub would provide."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.containers.engine import Engine, EngineError
from tests.deploy.tools import DOCKERFILE, REPO, compose_config

WHEELS_DIR = REPO / "deploy" / "wheels"
HERE = Path(__file__).resolve().parent
STANDINS = HERE / "standins"
COMPOSE_OVERRIDE = HERE / "compose.override.yml"


def compose_images() -> dict[str, str]:
    """Build target -> image reference, as docker-compose.yml's services name them (default tag)."""
    services = compose_config("train", "load", env={"CHARRNN_HMAC_KEY": "unused"})["services"]
    return {s["build"]["target"]: s["image"] for s in services.values() if "build" in s}


def torch_requirement() -> str:
    """The torch pin of the `train` extra (pyproject.toml is its one source)."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (pin,) = [r for r in extras["train"] if re.match(r"torch\b", r)]
    return pin.split("#")[0].strip()


@contextlib.contextmanager
def torch_build_args() -> Iterator[list[str]]:
    """The build arguments for the train target. Where pip's configured find-links hold this machine's torch
    wheel, it goes into deploy/wheels/ (as docs/deploy.md tells offline users to) for the build, which then
    uses no index (TORCH_INDEX_URL=); it is removed afterwards. Elsewhere: none, so the Dockerfile's default
    CPU index is used."""
    before = set(WHEELS_DIR.glob("*.whl"))
    download = [sys.executable, "-m", "pip", "download", torch_requirement(), "--no-deps", "--no-index"]
    result = subprocess.run([*download, "-d", str(WHEELS_DIR)], capture_output=True, text=True, timeout=300)
    added = sorted(set(WHEELS_DIR.glob("*.whl")) - before)
    try:
        local = result.returncode == 0 and bool(added or before)
        yield ["--build-arg", "TORCH_INDEX_URL="] if local else []
    finally:
        for wheel in added:
            wheel.unlink(missing_ok=True)


@dataclass
class Build:
    image: str
    seconds: float
    log: str


def build(engine: Engine, target: str, image: str, base: str, *extra: str) -> Build:
    """`docker build` one target of deploy/Dockerfile from the repository root on the base `base`."""
    args = ["build", "-f", str(DOCKERFILE), "--target", target, "--build-arg", f"PYTHON_IMAGE={base}"]
    args += [*extra, "--progress", "plain", "-t", image, str(REPO)]
    start = time.monotonic()
    result = engine.docker(*args, timeout=900)
    return Build(image, time.monotonic() - start, result.stderr)


def build_target(engine: Engine, target: str, base: str) -> Build:
    """Build a target under compose's image name; the train target takes torch as `torch_build_args` says."""
    image = compose_images()[target]
    if target != "train":
        return build(engine, target, image, base)
    with torch_build_args() as extra:
        return build(engine, target, image, base, *extra)


def build_prometheus_standin(engine: Engine, base: str) -> str:
    """Prometheus from Debian's `prometheus` package on the Debian base, laid out like prom/prometheus,
    under the name the compose override gives it."""
    image = str(yaml.safe_load(COMPOSE_OVERRIDE.read_text())["services"]["prometheus"]["image"])
    binary = shutil.which("prometheus")
    if binary is None:
        raise EngineError("prometheus not installed (Debian package prometheus)")
    with tempfile.TemporaryDirectory(prefix="charrnn-prometheus-") as context:
        shutil.copy2(binary, Path(context) / "prometheus")
        engine.docker(
            "build", "-f", str(STANDINS / "prometheus.Dockerfile"), "--build-arg", f"BASE={base}",
            "-t", image, context, timeout=300,
        )  # fmt: skip
    return image
