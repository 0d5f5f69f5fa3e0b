"""Container figures for docs/benchmarks.md, each against a baseline measured in the same run: image sizes
per target against the base image (and what each layer holds), build times cold (empty engine) against warm
(everything cached), and a server container's start to SERVING and to Docker's `healthy` against the same
server started as a plain process.

    .venv/bin/python -m tests.containers.bench [--starts 3] [--fresh-base] [--out bench-results/containers.json]

Needs what the container tests need (root, docker.io, mmdebstrap, kubectl); it runs its own engine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from charrnn.client import CharRNNError, Client
from tests.containers.base_image import base_tarball, import_base
from tests.containers.deployment import OVERLAY, container_run
from tests.containers.engine import Engine, engine_in_tempdir, missing
from tests.containers.images import build_target
from tests.containers.running import start
from tests.deploy.tools import K8S, REPO, kustomize

log = logging.getLogger("bench.containers")
TARGETS = ("serve", "load", "train")

SITE_PACKAGES = """
import json, os, sysconfig
site = sysconfig.get_paths()["purelib"]
sizes = {}
for entry in os.scandir(site):
    total = entry.stat(follow_symlinks=False).st_size
    for root, _, files in os.walk(entry.path) if entry.is_dir(follow_symlinks=False) else ():
        total += sum(os.lstat(os.path.join(root, f)).st_size for f in files)
    sizes[entry.name] = total
print(json.dumps(sizes))
"""


def _mb(n: float) -> str:
    return f"{n / 1e6:.0f} MB"


def _wait_serving(target: str, deadline: float) -> float:
    with Client(target, timeout=2) as client:
        while time.monotonic() < deadline:
            try:
                if client.health() == "SERVING":
                    return time.monotonic()
            except CharRNNError:
                pass
            time.sleep(0.05)
    raise TimeoutError(f"{target} never reported SERVING")


def container_start(engine: Engine, objects: list[dict[str, Any]], name: str) -> tuple[float, float]:
    """(seconds to SERVING, seconds to Docker's healthy) of one server container run like the Deployment's pod."""
    with tempfile.TemporaryDirectory(prefix="charrnn-bench-") as tmp:
        run = container_run(objects, "charrnn", "server", Path(tmp))
        begin = time.monotonic()
        container = start(engine, run, name)
        try:
            serving = _wait_serving(container.target, begin + 120) - begin
            container.wait_healthy()
            return serving, time.monotonic() - begin
        finally:
            engine.docker("rm", "--force", name, check=False)


def process_start() -> float:
    """Seconds from spawning `charrnn serve` on the host (same model, one ONNX Runtime thread) to SERVING."""
    charrnn = Path(sys.executable).parent / "charrnn"
    with tempfile.TemporaryDirectory(prefix="charrnn-bench-") as tmp:
        port_file = Path(tmp) / "port"
        args = [str(charrnn), "serve", "--model", str(REPO / "models" / "default"), "--dev", "--port", "0",
                "--port-file", str(port_file), "--metrics-port", "-1", "--intra-op-threads", "1"]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHARRNN_")}
        begin = time.monotonic()
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while not port_file.exists():
                if proc.poll() is not None or time.monotonic() - begin > 120:
                    raise RuntimeError("the host server did not start")
                time.sleep(0.01)
            return time.monotonic() - begin
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def measure(starts: int, fresh_base: bool) -> dict[str, Any]:
    result: dict[str, Any] = {"load_start": os.getloadavg(), "cores": os.cpu_count()}
    if fresh_base:
        begin = time.monotonic()
        base_tarball(fresh=True)
        result["base_mmdebstrap_s"] = time.monotonic() - begin
    with engine_in_tempdir() as engine:
        begin = time.monotonic()
        base = import_base(engine)
        result["base_import_s"] = time.monotonic() - begin
        result["cold_s"] = {t: build_target(engine, t, base).seconds for t in TARGETS}
        images = {t: build_target(engine, t, base) for t in TARGETS}
        result["warm_s"] = {t: b.seconds for t, b in images.items()}
        base_size = engine.inspect(base)[0]["Size"]
        result["base_bytes"] = base_size
        result["bytes"] = {t: engine.inspect(b.image)[0]["Size"] for t, b in images.items()}
        fmt = "{{.Size}}\t{{.CreatedBy}}"
        result["history"] = {
            t: engine.docker("history", "--no-trunc", "--format", fmt, b.image).stdout.splitlines()
            for t, b in images.items()
        }
        serve = images["serve"].image
        packages = engine.docker("run", "--rm", "--entrypoint", "python", serve, "-c", SITE_PACKAGES).stdout
        result["serve_site_packages"] = dict(sorted(json.loads(packages).items(), key=lambda kv: -kv[1])[:12])
        objects = kustomize(K8S / "overlays" / OVERLAY)
        runs = [container_start(engine, objects, f"charrnn-bench-{i}") for i in range(starts)]
        result["container_serving_s"] = [r[0] for r in runs]
        result["container_healthy_s"] = [r[1] for r in runs]
    result["process_serving_s"] = [process_start() for _ in range(starts)]
    result["load_end"] = os.getloadavg()
    return result


def report(r: dict[str, Any]) -> str:
    lines = [f"load average at start {r['load_start'][0]:.2f}, at end {r['load_end'][0]:.2f} ({r['cores']} cores)"]
    if "base_mmdebstrap_s" in r:
        lines.append(f"base image: mmdebstrap {r['base_mmdebstrap_s']:.0f} s, import {r['base_import_s']:.1f} s")
    lines += ["", "| target | image | added to the base | x base | build cold | build warm | warm / cold |"]
    lines.append("|---|---|---|---|---|---|---|")
    for t in TARGETS:
        added = r["bytes"][t] - r["base_bytes"]
        lines.append(
            f"| {t} | {_mb(r['bytes'][t])} | {_mb(added)} | {r['bytes'][t] / r['base_bytes']:.2f} | "
            f"{r['cold_s'][t]:.1f} s | {r['warm_s'][t]:.1f} s | {r['warm_s'][t] / r['cold_s'][t]:.3f} |"
        )
    lines.append(f"| (base) | {_mb(r['base_bytes'])} | | 1.00 | | | |")
    serving, healthy = statistics.median(r["container_serving_s"]), statistics.median(r["container_healthy_s"])
    host = statistics.median(r["process_serving_s"])
    lines += [
        "",
        "| start (median of runs) | seconds | x host process |",
        "|---|---|---|",
        f"| host process to SERVING (baseline) | {host:.2f} | 1.00 |",
        f"| container to SERVING | {serving:.2f} | {serving / host:.2f} |",
        f"| container to Docker healthy | {healthy:.2f} | {healthy / host:.2f} |",
        "",
        "serve image layers (size, instruction):",
    ]
    lines += [f"    {line[:150]}" for line in r["history"]["serve"]]
    lines += ["", "serve image, largest site-packages entries:"]
    lines += [f"    {name}: {_mb(size)}" for name, size in r["serve_site_packages"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=3, help="container and process starts to time")
    parser.add_argument("--fresh-base", action="store_true", help="remake the base filesystem (time mmdebstrap)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/containers.json"), help="JSON results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    reason = missing()
    if reason is not None:
        parser.exit(2, f"bench containers: {reason}\n")
    result = measure(args.starts, args.fresh_base)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
