"""Fixtures of the container suite: the suite's own Docker engine, the base image, the built targets, and
server containers run with the constraints of the rendered Kubernetes Deployment (dev overlay).

Skipped, saying why, where the engine cannot run (no root, no docker.io / mmdebstrap / kubectl, no Compose);
.ci/run installs the Debian packages and warns when kubectl is missing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.containers.base_image import import_base
from tests.containers.deployment import OVERLAY, ContainerRun, container_run
from tests.containers.engine import Engine, engine_in_tempdir, missing
from tests.containers.images import build_target
from tests.containers.running import Container, start
from tests.deploy.tools import K8S, kustomize


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "containers: builds and runs the images in the suite's own Docker engine")


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    reason = missing()
    if reason is not None:
        pytest.skip(reason)
    with engine_in_tempdir() as started:
        yield started


@pytest.fixture(scope="session")
def base_image(engine: Engine) -> str:
    return import_base(engine)


@pytest.fixture(scope="session")
def serve_image(engine: Engine, base_image: str) -> str:
    return build_target(engine, "serve", base_image).image


@pytest.fixture(scope="session")
def load_image(engine: Engine, base_image: str) -> str:
    return build_target(engine, "load", base_image).image


@pytest.fixture(scope="session")
def train_image(engine: Engine, base_image: str) -> str:
    return build_target(engine, "train", base_image).image


@pytest.fixture(scope="session")
def deployment_objects() -> list[dict[str, Any]]:
    return kustomize(K8S / "overlays" / OVERLAY)


@pytest.fixture
def server_run(deployment_objects: list[dict[str, Any]], serve_image: str, tmp_path: Path) -> ContainerRun:
    """The server container of the overlay's Deployment as `docker run` options."""
    run = container_run(deployment_objects, "charrnn", "server", tmp_path / "volumes")
    assert run.image == serve_image, "the overlay's image is not the one docker-compose.yml builds"
    return run


@pytest.fixture
def launch(engine: Engine, server_run: ContainerRun) -> Iterator[Callable[[str], Container]]:
    """launch(name) starts a server container like a pod of the Deployment; all are removed afterwards."""
    started: list[Container] = []

    def launch(name: str) -> Container:
        container = start(engine, server_run, name)
        started.append(container)
        return container

    yield launch
    for container in started:
        engine.docker("rm", "--force", container.name, check=False)
