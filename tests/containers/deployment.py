"""`docker run` options for a container of a rendered Kubernetes Deployment: the same user, filesystem,
capabilities, privileges, seccomp profile, environment, volumes, CPU and memory limits and stop grace.

The options are derived from the manifest (`kubectl kustomize` output), never written by hand, so a change
to the Deployment changes what the container tests run. A field this translation does not know is an error,
not silently dropped: a new constraint in the manifest must be taught here before the tests pass again.

What Docker cannot reproduce is left out and named in docs/deploy.md: probes (the tests check the same gRPC
health, and send the readiness probe's HTTP GET, from outside), the preStop hook, service-account and
Service environment variables, scheduling.
"""

from __future__ import annotations

import base64
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OVERLAY = "dev"  # the overlay whose Deployment the container tests reproduce (1 CPU, 512 MiB, one replica)
# Container fields that have a translation below or do not change how the process runs in isolation.
KNOWN_CONTAINER_FIELDS = {
    "name", "image", "imagePullPolicy", "ports", "envFrom", "env", "resources", "startupProbe",
    "readinessProbe", "livenessProbe", "lifecycle", "securityContext", "volumeMounts", "command", "args",
}  # fmt: skip
KNOWN_SECURITY_FIELDS = {
    "runAsUser", "runAsGroup", "runAsNonRoot", "fsGroup", "seccompProfile", "allowPrivilegeEscalation",
    "readOnlyRootFilesystem", "capabilities",
}  # fmt: skip
QUANTITY = re.compile(r"^([0-9.]+)(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
UNITS = {
    None: 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


class UnsupportedManifest(ValueError):
    """The manifest uses a field the translation does not know."""


def quantity(value: str | int | float) -> float:
    """A Kubernetes resource quantity ("250m", "512Mi", "2") as a number."""
    match = QUANTITY.match(str(value))
    if match is None:
        raise UnsupportedManifest(f"quantity {value!r}")
    return float(match.group(1)) * UNITS[match.group(2)]


@dataclass
class ContainerRun:
    """What `docker run` needs for one container of the pod."""

    image: str
    options: list[str]
    command: list[str]  # arguments after the image (the container's `args`), empty for the image's CMD
    ports: dict[str, int]  # port name -> container port
    stop_timeout: int  # terminationGracePeriodSeconds
    env: dict[str, str]
    user: tuple[int, int]
    files: dict[Path, tuple[bytes, int, int]] = field(default_factory=dict)  # host file -> (content, mode, gid)

    def write_files(self) -> None:
        """Create the host side of the Secret volumes (owned by root, group fsGroup, the Secret's mode)."""
        for path, (content, mode, gid) in self.files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            os.chown(path, 0, gid)
            path.chmod(mode)


def _one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    if len(matches) != 1:
        raise UnsupportedManifest(f"{kind}/{name}: {len(matches)} objects in the manifest")
    return matches[0]


def _check_known(what: str, keys: set[str], known: set[str]) -> None:
    unknown = sorted(keys - known)
    if unknown:
        raise UnsupportedManifest(f"{what}: no docker translation for {unknown}")


def container_run(objects: list[dict[str, Any]], deployment: str, container: str, volumes_dir: Path) -> ContainerRun:
    """Translate container `container` of Deployment `deployment`; Secret volumes are written under
    `volumes_dir` by `ContainerRun.write_files`."""
    pod = _one(objects, "Deployment", deployment)["spec"]["template"]["spec"]
    (spec,) = [c for c in pod["containers"] if c["name"] == container]
    _check_known(f"container {container}", set(spec), KNOWN_CONTAINER_FIELDS)
    options: list[str] = []

    # Identity and privileges: the container's securityContext overrides the pod's.
    pod_sc, sc = pod.get("securityContext", {}), spec.get("securityContext", {})
    _check_known("securityContext", set(pod_sc) | set(sc), KNOWN_SECURITY_FIELDS)
    merged = {**pod_sc, **sc}
    if "runAsUser" not in merged or "runAsGroup" not in merged:
        raise UnsupportedManifest("the translation needs runAsUser and runAsGroup (the image's USER is not read)")
    user = (int(merged["runAsUser"]), int(merged["runAsGroup"]))
    if merged.get("runAsNonRoot") and user[0] == 0:
        raise UnsupportedManifest("runAsNonRoot with runAsUser 0: the kubelet would refuse to start the pod")
    options += ["--user", f"{user[0]}:{user[1]}"]
    fs_group = pod_sc.get("fsGroup")
    if fs_group is not None:
        options += ["--group-add", str(fs_group)]
    if merged.get("readOnlyRootFilesystem"):
        options.append("--read-only")
    if merged.get("allowPrivilegeEscalation") is False:
        options += ["--security-opt", "no-new-privileges"]
    capabilities = merged.get("capabilities", {})
    options += [f"--cap-drop={c}" for c in capabilities.get("drop", [])]
    options += [f"--cap-add={c}" for c in capabilities.get("add", [])]
    seccomp = merged.get("seccompProfile", {}).get("type", "RuntimeDefault")
    if seccomp == "Unconfined":
        options += ["--security-opt", "seccomp=unconfined"]
    elif seccomp != "RuntimeDefault":  # RuntimeDefault is Docker's default profile: no option
        raise UnsupportedManifest(f"seccompProfile {seccomp}")

    # Resources: the limits are what the container gets; requests only steer scheduling.
    limits = spec.get("resources", {}).get("limits", {})
    if "cpu" in limits:
        options += ["--cpus", f"{quantity(limits['cpu']):g}"]
    if "memory" in limits:
        options += ["--memory", str(int(quantity(limits["memory"])))]

    # Environment: envFrom ConfigMaps first, then env (which wins).
    env: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        if set(source) != {"configMapRef"}:
            raise UnsupportedManifest(f"envFrom {source}")
        env.update(_one(objects, "ConfigMap", source["configMapRef"]["name"]).get("data", {}))
    for item in spec.get("env", []):
        env[item["name"]] = _env_value(item, spec)
    for name, value in env.items():
        options += ["--env", f"{name}={value}"]

    # Volumes: emptyDir -> tmpfs of the same size limit; Secret -> its items as files, mounted read-only.
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    files: dict[Path, tuple[bytes, int, int]] = {}
    for mount in spec.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        target = mount["mountPath"]
        if "emptyDir" in volume:
            size = volume["emptyDir"].get("sizeLimit")
            tmpfs = f"type=tmpfs,destination={target},tmpfs-mode=1777"
            options += ["--mount", tmpfs + (f",tmpfs-size={int(quantity(size))}" if size else "")]
        elif "secret" in volume:
            secret_spec = volume["secret"]
            secret = _one(objects, "Secret", secret_spec["secretName"])
            host_dir = volumes_dir / mount["name"]
            mode = int(secret_spec.get("defaultMode", 0o644))
            items = secret_spec.get("items") or [{"key": k, "path": k} for k in secret["data"]]
            for item in items:
                content = base64.b64decode(secret["data"][item["key"]])
                files[host_dir / item["path"]] = (content, int(item.get("mode", mode)), int(fs_group or 0))
            options += ["--mount", f"type=bind,source={host_dir},destination={target},readonly"]
            if not mount.get("readOnly"):
                raise UnsupportedManifest(f"Secret volume {mount['name']} mounted writable")
        else:
            raise UnsupportedManifest(f"volume {mount['name']}: {sorted(volume)}")

    # Ports on the loopback only (ephemeral host ports), and the stop grace.
    ports = {p["name"]: int(p["containerPort"]) for p in spec.get("ports", [])}
    for port in ports.values():
        options += ["--publish", f"127.0.0.1::{port}"]
    stop_timeout = int(pod.get("terminationGracePeriodSeconds", 30))
    options += ["--stop-timeout", str(stop_timeout)]
    if "command" in spec:
        options += ["--entrypoint", spec["command"][0]]
        command = [*spec["command"][1:], *spec.get("args", [])]
    else:
        command = list(spec.get("args", []))
    return ContainerRun(spec["image"], options, command, ports, stop_timeout, env, user, files)


def _env_value(item: dict[str, Any], spec: dict[str, Any]) -> str:
    if "value" in item:
        return str(item["value"])
    source = item.get("valueFrom", {})
    ref = source.get("resourceFieldRef")
    if ref is None or set(source) != {"resourceFieldRef"}:
        raise UnsupportedManifest(f"env {item['name']}: {source}")
    if ref.get("containerName", spec["name"]) != spec["name"]:
        raise UnsupportedManifest(f"env {item['name']}: another container's resources")
    section, _, resource = ref["resource"].partition(".")
    value = quantity(spec["resources"][section][resource]) / quantity(ref.get("divisor", "1"))
    return str(math.ceil(value))  # the kubelet rounds a resource field up to the divisor
