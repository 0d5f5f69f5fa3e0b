"""`make install` installs its lock, hashes checked, and never a CUDA build of torch: checked with pip's own
resolver, as a dry run of the Makefile's own commands.

- torch alone from locks/torch.txt (the only step that asks PyTorch's index; hash-checked wherever its
  entry has a hash), then `pip install --require-hashes --no-deps -r locks/dev.txt`, then the project alone. What
  the lock pins (a `+cpu` torch, no nvidia-*, triton or CUDA package) and that the environment holds
  exactly that are tests/test_locks.py's.
- The hashes are the mechanism: the step on the lock's own torch entry resolves (the control); with that
  entry's hash changed it is refused before anything installs.
- It cannot show what download.pytorch.org or PyPI serve to a machine on the internet.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def install_commands(venv: Path, *make_vars: str) -> list[str]:
    """The shell commands `make install` runs for a fresh environment at `venv` (continuations joined)."""
    done = subprocess.run(
        ["make", "-n", "--no-print-directory", f"VENV={venv}", f"PYTHON={sys.executable}", *make_vars,
         f"{venv}/.installed"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return [line.strip() for line in done.stdout.replace("\\\n", " ").splitlines() if line.strip()]


def pip_installs(commands: list[str]) -> list[str]:
    """The `pip install` lines, in order."""
    return [c for c in commands if "/bin/pip install" in c]


def dry_run(command: str, report: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run a Makefile pip command as a dry run that reports its resolution to `report`."""
    args = " ".join(shlex.quote(a) for a in ("--dry-run", "--ignore-installed", "--report", str(report), *extra))
    return subprocess.run(f"{command} {args}", shell=True, cwd=REPO, capture_output=True, text=True, timeout=600)


def installed(report: Path) -> dict[str, dict[str, Any]]:
    """{normalised name: report item} for everything the dry run would install."""
    items = json.loads(report.read_text())["install"]
    return {canonicalize_name(item["metadata"]["name"]): item for item in items}


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A fresh environment made by the Makefile's own commands, up to (not including) the installs."""
    path = tmp_path_factory.mktemp("install") / "venv"
    commands = install_commands(path)
    for command in commands:
        if command in pip_installs(commands) or command.startswith("touch "):
            continue
        subprocess.run(command, shell=True, cwd=REPO, check=True, capture_output=True, timeout=300)
    return path, commands


def test_make_install_installs_the_lock_with_hashes_checked_then_only_the_project(
    venv: tuple[Path, list[str]],
) -> None:
    _, commands = venv
    torch_step, lock_step, project_step = pip_installs(commands)
    assert "--require-hashes" in lock_step and "--no-deps" in lock_step and "-r locks/dev.txt" in lock_step
    # torch's step turns hash checking on by itself where its entry has a hash (the test below shows it).
    assert "--no-deps" in torch_step and "-r locks/torch.txt" in torch_step
    # Only the torch step asks PyTorch's index: pip retries an unreachable index for every package it looks up.
    assert ("download.pytorch.org" in torch_step) == (sys.platform == "linux")
    assert "download.pytorch.org" not in lock_step
    assert "--no-deps" in project_step and project_step.endswith("-e .")


def test_a_lock_whose_hash_does_not_match_is_refused(venv: tuple[Path, list[str]], tmp_path: Path) -> None:
    _, commands = venv
    lock = (REPO / "locks" / "torch.txt").read_text()
    entry = re.search(r"^torch==[^\n]*\+cpu[^\n]*\n\s*--hash=sha256:([0-9a-f]{64})\n", lock, re.MULTILINE)
    assert entry, "locks/torch.txt has no hashed +cpu torch"
    step = pip_installs(commands)[0]
    for name, text in (("locked", entry.group(0)), ("tampered", entry.group(0).replace(entry.group(1), "0" * 64))):
        (tmp_path / f"{name}.txt").write_text(text)
    control = dry_run(step.replace("-r locks/torch.txt", f"-r {tmp_path / 'locked.txt'}"), tmp_path / "locked.json")
    assert control.returncode == 0, control.stderr[-2000:]
    assert installed(tmp_path / "locked.json")["torch"]["metadata"]["version"].endswith("+cpu")
    refused = dry_run(step.replace("-r locks/torch.txt", f"-r {tmp_path / 'tampered.txt'}"), tmp_path / "refused.json")
    assert refused.returncode != 0 and "DO NOT MATCH THE HASHES" in refused.stderr, refused.stderr[-2000:]
    assert not (tmp_path / "refused.json").exists()
