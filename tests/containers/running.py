"""Server containers the tests start from a Deployment's `docker run` options: ports, health, logs, state."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from tests.containers.deployment import ContainerRun
from tests.containers.engine import Engine, EngineError

# The image's HEALTHCHECK probes every 10 s after a 30 s start period; the first healthy report can take
# the start-up plus one interval.
HEALTHY_WITHIN_S = 90.0


@dataclass
class Container:
    engine: Engine
    name: str
    run: ContainerRun

    @property
    def state(self) -> dict[str, Any]:
        return dict(self.engine.inspect(self.name)[0]["State"])

    def port(self, name: str) -> int:
        """The 127.0.0.1 port published for the container port called `name` in the manifest."""
        return self.engine.published_port(self.name, self.run.ports[name])

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port('grpc')}"

    def logs(self) -> str:
        result = self.engine.docker("logs", self.name, check=False)
        return result.stdout + result.stderr

    def exec_python(self, code: str) -> str:
        """Run Python inside the container (as its user, under its constraints); returns stdout."""
        return self.engine.docker("exec", self.name, "python", "-c", code).stdout

    def wait_healthy(self, timeout: float = HEALTHY_WITHIN_S) -> float:
        """Seconds from now until the image's HEALTHCHECK reports healthy."""
        start = time.monotonic()
        while True:
            state = self.state
            status = state.get("Health", {}).get("Status")
            if status == "healthy":
                return time.monotonic() - start
            if not state["Running"] or status == "unhealthy" or time.monotonic() - start > timeout:
                raise EngineError(f"{self.name}: {status or state['Status']} after {timeout:.0f} s\n{self.logs()}")
            time.sleep(0.2)

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.port('metrics')}/metrics"


def start(engine: Engine, run: ContainerRun, name: str) -> Container:
    """`docker run -d` with the Deployment's options (its Secret files written first)."""
    run.write_files()
    engine.docker("run", "--detach", "--name", name, *run.options, run.image, *run.command)
    return Container(engine, name, run)
