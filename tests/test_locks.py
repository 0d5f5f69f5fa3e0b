"""The dependency locks (locks/*.txt) against pyproject.toml, and against the environments built from them.

- Each lock holds, for every platform the project promises (Linux x86-64 and aarch64, macOS arm64; Python
  3.11 and 3.12), one version of every requirement of its environment, inside pyproject.toml's range, and
  no direct requirement pyproject.toml no longer has: a dependency added to one and not the other fails.
- Every locked package carries its sha256 hashes (installs use --require-hashes).
- The environments built from the locks hold exactly the locked versions: this interpreter's (.venv, by
  `make install`) and .venv-serve (`make serve`; the serving image's test is in tests/containers).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.markers import Marker, default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
LOCKS = REPO / "locks"
PROJECT = "charrnn (pyproject.toml)"
# Which extras each lock resolves (scripts/lock.sh, the Makefile and deploy/Dockerfile install them).
ENVIRONMENTS = {
    "serve": ("serve",),
    "client": ("client",),
    "load": ("serve", "load"),
    "train": ("train",),
    "dev": ("serve", "train", "load", "dev"),
}
PLATFORMS = {
    f"{system}-{machine}-py{python}": {
        "sys_platform": system,
        "platform_system": {"linux": "Linux", "darwin": "Darwin"}[system],
        "platform_machine": machine,
        "os_name": "posix",
        "python_version": python,
        "python_full_version": f"{python}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
    }
    for system, machine in (("linux", "x86_64"), ("linux", "aarch64"), ("darwin", "arm64"))
    for python in ("3.11", "3.12")
}
# `make test-latest` runs this suite in an environment resolved without the locks, on purpose.
UNLOCKED = os.environ.get("CHARRNN_UNLOCKED") == "1"


@dataclass(frozen=True)
class Locked:
    name: str
    version: Version
    marker: Marker | None
    hashes: tuple[str, ...]
    via: tuple[str, ...]

    def applies(self, environment: dict[str, str]) -> bool:
        return self.marker is None or self.marker.evaluate(environment)


def read_lock(path: Path) -> list[Locked]:
    """The entries of a `uv pip compile` requirements file: pin, marker, hashes and `# via` sources."""
    entries: list[Locked] = []
    blocks = re.split(r"\n(?=[A-Za-z0-9])", path.read_text(encoding="utf-8"))
    for block in blocks:
        if not block or block.startswith("#"):
            continue
        first, _, rest = block.partition("\n")
        requirement = Requirement(first.rstrip(" \\"))
        (pin,) = requirement.specifier
        assert pin.operator == "==", f"{path.name}: {first} is not an exact pin"
        via = re.findall(r"#\s+(?:via\s+)?([^\s#].*)", rest)
        entries.append(
            Locked(
                canonicalize_name(requirement.name),
                Version(pin.version),
                requirement.marker,
                tuple(re.findall(r"--hash=sha256:([0-9a-f]{64})", rest)),
                tuple(v.strip() for v in via if v.strip() != "via"),
            )
        )
    return entries


def pinned(entries: list[Locked], environment: dict[str, str]) -> dict[str, Version]:
    """{name: version} that an install of this lock gets on `environment` (markers evaluated)."""
    out: dict[str, Version] = {}
    for entry in entries:
        if entry.applies(environment):
            assert entry.name not in out, f"{entry.name} is pinned twice for {environment['sys_platform']}"
            out[entry.name] = entry.version
    return out


def requirements(extras: tuple[str, ...]) -> list[Requirement]:
    """pyproject.toml's base dependencies, the extras', and locks/build.in's (pip and the build backend)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    build = (LOCKS / "build.in").read_text(encoding="utf-8").splitlines()
    lines += [line for line in build if line.strip() and not line.startswith("#")]
    return [Requirement(line) for line in lines]


@pytest.mark.parametrize("lock", sorted(ENVIRONMENTS))
def test_every_lock_agrees_with_pyproject_on_every_platform(lock: str) -> None:
    entries = read_lock(LOCKS / f"{lock}.txt")
    wanted = requirements(ENVIRONMENTS[lock])
    for platform, environment in PLATFORMS.items():
        versions = pinned(entries, environment)
        for requirement in wanted:
            if requirement.marker is not None and not requirement.marker.evaluate(environment):
                continue
            name = canonicalize_name(requirement.name)
            assert name in versions, f"locks/{lock}.txt has no {name} for {platform}: run make lock"
            assert requirement.specifier.contains(versions[name], prereleases=True), (
                f"locks/{lock}.txt pins {name}=={versions[name]} for {platform}, outside pyproject.toml's "
                f"{requirement}: run make lock"
            )
    direct = {canonicalize_name(r.name) for r in wanted}
    for entry in entries:
        if PROJECT in entry.via:
            assert entry.name in direct, f"locks/{lock}.txt still has {entry.name}, which pyproject.toml dropped"


@pytest.mark.parametrize("lock", [*sorted(ENVIRONMENTS), "tools"])
def test_every_locked_package_has_its_hashes(lock: str) -> None:
    entries = read_lock(LOCKS / f"{lock}.txt")
    assert entries
    for entry in entries:
        assert entry.hashes, f"locks/{lock}.txt: {entry.name}=={entry.version} has no hash: run make lock"


def test_torch_is_the_cpu_build_on_linux_and_nothing_pulls_in_cuda() -> None:
    for lock in ("train", "dev"):
        entries = read_lock(LOCKS / f"{lock}.txt")
        for platform, environment in PLATFORMS.items():
            versions = pinned(entries, environment)
            if environment["sys_platform"] == "linux":
                assert versions["torch"].local == "cpu", f"locks/{lock}.txt: torch for {platform}"
            cuda = [n for n in versions if re.match(r"nvidia-|triton$|.*cuda", n)]
            assert not cuda, f"locks/{lock}.txt installs {cuda} on {platform}"


def test_the_torch_lock_pins_the_train_and_dev_locks_torch_on_every_platform() -> None:
    """locks/torch.txt (installed first, alone) pins, on every platform, the version the train and dev locks
    pin; its hashed entries carry their hashes; an entry without one is only the Linux +cpu wheel on the
    platforms `make lock` could not fetch it for (its markers exclude the hashed entry's)."""
    torch = read_lock(LOCKS / "torch.txt")
    others = {lock: read_lock(LOCKS / f"{lock}.txt") for lock in ("train", "dev")}
    for platform, environment in PLATFORMS.items():
        (entry,) = [e for e in torch if e.applies(environment)]
        for lock, entries in others.items():
            (pinned_there,) = [e for e in entries if e.name == "torch" and e.applies(environment)]
            assert entry.version == pinned_there.version, f"locks/{lock}.txt vs locks/torch.txt on {platform}"
            assert set(entry.hashes) <= set(pinned_there.hashes), platform
        if not entry.hashes:
            assert environment["sys_platform"] == "linux" and entry.version.local == "cpu", platform
    assert any(e.hashes and e.version.local == "cpu" for e in torch), "no Linux torch wheel is hashed"


def installed_versions(python: Path | str) -> dict[str, Version]:
    """{name: version} of every distribution in the environment of `python`, but the project itself."""
    code = (
        "import importlib.metadata as m, json; "
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
    )
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout
    found = {canonicalize_name(k): Version(v) for k, v in json.loads(out).items()}
    found.pop("charrnn", None)
    return found


def locked_here(lock: str) -> dict[str, Version]:
    return pinned(read_lock(LOCKS / f"{lock}.txt"), default_environment())


@pytest.mark.skipif(UNLOCKED, reason="make test-latest runs the suite outside the lock, on purpose")
def test_this_environment_holds_exactly_the_dev_lock() -> None:
    assert installed_versions(sys.executable) == locked_here("dev")


def test_the_serve_environment_holds_exactly_the_serve_lock() -> None:
    python = REPO / ".venv-serve" / "bin" / "python"
    if not python.exists():
        if os.environ.get("CI"):
            pytest.fail(".venv-serve is missing: `make test` builds it (make .venv-serve/.installed)")
        pytest.skip(".venv-serve is not built here (make .venv-serve/.installed)")
    assert installed_versions(python) == locked_here("serve")
