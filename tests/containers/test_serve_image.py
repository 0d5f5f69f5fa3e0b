"""The serving image: what it holds, and that it serves under exactly the constraints the Kubernetes
Deployment declares (user, read-only root, no capabilities, no privilege escalation, limits, env, Secret
file), with its own HEALTHCHECK turning healthy, a Generate streaming, a completion streaming server-sent
events through the published HTTP port (where the readiness probe's /health answers) and /metrics answering."""

from __future__ import annotations

import json
import math
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from packaging.markers import default_environment
from packaging.utils import canonicalize_name
from packaging.version import Version

from charrnn.client import Client
from deploy.slim_venv import PACKAGING_TOOLS
from tests.containers.deployment import ContainerRun, quantity
from tests.containers.engine import Engine
from tests.containers.running import Container
from tests.deploy.tools import MAX_SERVE_ENV_BYTES, REPO
from tests.http import sse
from tests.observability.scrape import scrape, total
from tests.test_locks import pinned, read_lock

pytestmark = [pytest.mark.containers, pytest.mark.timeout(900)]

MODEL_BYTES = sum(p.stat().st_size for p in (REPO / "models" / "default").iterdir())

CONTENTS = """
import importlib.util as u, json, pathlib, sys, sysconfig
site = pathlib.Path(sysconfig.get_paths()["purelib"])
print(json.dumps({
    "importable": {m: u.find_spec(m) is not None for m in ("charrnn", "service", "training", "bench", "torch", "pip")},
    "prefix": sys.prefix,
}))
"""


def test_the_serving_image_holds_only_the_serving_environment(
    engine: Engine, serve_image: str, base_image: str
) -> None:
    (image,) = engine.inspect(serve_image)
    (base,) = engine.inspect(base_image)
    config = image["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["charrnn", "serve"]
    assert "Healthcheck" in config and config["Healthcheck"]["Test"][0] == "CMD"
    assert not any(e.startswith(("CHARRNN_HMAC_KEY", "CHARRNN_DEV")) for e in config["Env"])
    result = engine.docker("run", "--rm", "--read-only", "--entrypoint", "python", serve_image, "-c", CONTENTS)
    facts = json.loads(result.stdout)
    assert facts["prefix"] == "/opt/venv"
    importable = facts["importable"]
    assert importable["charrnn"] and importable["service"]
    assert not any(importable[m] for m in ("training", "bench", "torch", "pip")), importable
    # What the image adds to its base: the serving environment (bounded by the serve-env test) and the model.
    added = image["Size"] - base["Size"]
    assert added < MAX_SERVE_ENV_BYTES + MODEL_BYTES, f"the serving image adds {added / 1e6:.0f} MB to its base"


VERSIONS = """
import importlib.metadata as m, json, platform, sys
print(json.dumps({
    "installed": {d.metadata["Name"]: d.version for d in m.distributions()},
    "environment": {"sys_platform": sys.platform, "platform_machine": platform.machine(),
                    "python_full_version": platform.python_version()},
}))
"""


def test_the_serving_image_holds_exactly_the_serve_lock(engine: Engine, serve_image: str) -> None:
    """Every distribution in the image at the version locks/serve.txt pins for the image's platform, and
    nothing else: but the project itself, and the packaging tools deploy/slim_venv.py removes."""
    result = engine.docker("run", "--rm", "--read-only", "--entrypoint", "python", serve_image, "-c", VERSIONS)
    facts = json.loads(result.stdout)
    environment = {**default_environment(), **facts["environment"]}
    environment["python_version"] = ".".join(environment["python_full_version"].split(".")[:2])
    locked = pinned(read_lock(REPO / "locks" / "serve.txt"), environment)
    slimmed = {canonicalize_name(name) for name in PACKAGING_TOOLS}
    expected = {name: version for name, version in locked.items() if name not in slimmed}
    installed = {canonicalize_name(k): Version(v) for k, v in facts["installed"].items() if k != "charrnn"}
    assert installed == expected


def _expected(run_spec: dict[str, Any], pod: dict[str, Any]) -> dict[str, Any]:
    """What the container must observe, read from the manifest (not from the docker options)."""
    sc = {**pod["securityContext"], **run_spec["securityContext"]}
    limits = run_spec["resources"]["limits"]
    (tmp,) = [v for v in pod["volumes"] if v["name"] == "tmp"]
    return {
        "uid": sc["runAsUser"],
        "gid": sc["runAsGroup"],
        "fs_group": pod["securityContext"]["fsGroup"],
        "memory": int(quantity(limits["memory"])),
        "cpus": quantity(limits["cpu"]),
        "tmp_bytes": int(quantity(tmp["emptyDir"]["sizeLimit"])),
    }


OBSERVE = r"""
import errno, json, os
def status(field):
    return next(l.split(":", 1)[1].strip() for l in open("/proc/1/status") if l.startswith(field + ":"))
def cgroup(*names):
    for name in names:
        try:
            return open("/sys/fs/cgroup/" + name).read().split()
        except OSError:
            pass
    return None
try:
    open("/app/probe", "w")
    root_writable = True
except OSError as exc:
    root_writable = exc.errno != errno.EROFS
with open("/tmp/probe", "w") as f:
    f.write("x")
tmp = [l.split() for l in open("/proc/mounts") if l.split()[1] == "/tmp"]
environ = open("/proc/1/environ", "rb").read().split(b"\0")
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
    "cap_eff": status("CapEff"), "no_new_privs": status("NoNewPrivs"), "seccomp": status("Seccomp"),
    "root_writable": root_writable, "tmp": tmp,
    "memory": cgroup("memory/memory.limit_in_bytes", "memory.max"),
    "cpu": cgroup("cpu/cpu.cfs_quota_us", "cpu.max"), "cpu_period": cgroup("cpu/cpu.cfs_period_us"),
    "env": dict(e.decode().split("=", 1) for e in environ if e),
    "key_file": os.access(os.environ["CHARRNN_HMAC_KEY_FILE"], os.R_OK),
}))
"""


def test_the_server_runs_under_the_deployment_constraints(
    launch: Callable[[str], Container], server_run: ContainerRun, deployment_objects: list[dict[str, Any]]
) -> None:
    server = launch("charrnn-constrained")
    server.wait_healthy()
    with Client(server.target, timeout=30) as client:
        assert client.health() == "SERVING"
        gen = client.generate("def main():\n", max_chars=300, temperature=0.8, seed=5)
        chunks = list(gen)
    assert gen.result is not None and gen.result.finish_reason == "length" and len("".join(chunks)) == 300

    (deployment,) = [o for o in deployment_objects if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (spec,) = [c for c in pod["containers"] if c["name"] == "server"]
    # HTTP: the readiness probe's GET as the kubelet sends it, then an SSE stream through the published port.
    probe = spec["readinessProbe"]["httpGet"]
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port(probe['port'])}{probe['path']}", timeout=10) as r:
        assert r.status == 200 and json.loads(r.read()) == {"status": "SERVING"}
    sse.check_stream("127.0.0.1", server.port("http"), "def main():\n", max_tokens=2000)
    assert total(scrape(server.metrics_url), "charrnn_generated_chars_total") >= 2300
    want = _expected(spec, pod)
    seen = json.loads(server.exec_python(OBSERVE))
    assert (seen["uid"], seen["gid"]) == (want["uid"], want["gid"]) and want["fs_group"] in seen["groups"]
    assert int(seen["cap_eff"], 16) == 0, "capabilities left after dropping ALL"
    assert seen["no_new_privs"] == "1" and seen["seccomp"] == "2"  # seccomp 2: filter mode (RuntimeDefault)
    assert seen["root_writable"] is False, "the root filesystem is writable"
    (tmp,) = seen["tmp"]
    assert tmp[2] == "tmpfs" and f"size={want['tmp_bytes'] // 1024}k" in tmp[3]
    assert seen["memory"] is not None and int(seen["memory"][0]) == want["memory"]
    if seen["cpu_period"] is not None:  # cgroup v1: quota / period; v2: "quota period"
        cpus = int(seen["cpu"][0]) / int(seen["cpu_period"][0])
    else:
        cpus = int(seen["cpu"][0]) / int(seen["cpu"][1])
    assert math.isclose(cpus, want["cpus"])
    # The key is a readable file, never an environment variable; the engine processes follow the CPU limit.
    assert seen["key_file"] and "CHARRNN_HMAC_KEY" not in seen["env"]
    assert seen["env"]["CHARRNN_ENGINES"] == str(math.ceil(want["cpus"]))
    for item in spec["env"]:
        assert item["name"] in seen["env"], item["name"]
    for source in spec["envFrom"]:
        (config_map,) = [o for o in deployment_objects if o["metadata"]["name"] == source["configMapRef"]["name"]]
        for name, value in config_map["data"].items():
            assert seen["env"].get(name) == value, name
