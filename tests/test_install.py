"""`make install` never selects a CUDA build of torch, checked offline with pip's own resolver.

The commands are the Makefile's, as `make -n` prints them for a fresh virtual environment, run with
`--dry-run --report` added: pip resolves exactly what they would install, with this machine's pip
configuration (its find-links and local indexes), and writes the choice as JSON.

What this proves and what it cannot:
- The torch step asks for a build PyTorch labels `+cpu`, from PyTorch's CPU index, and whatever pip finds
  for it carries no CUDA: here the CPU index is unreachable, so the local wheel is what it finds.
- The extras, with that torch installed, add no nvidia-*, triton or CUDA package: a dependency that pulls
  one in (onnxruntime-gpu, an unpinned torchvision...) fails the test.
- The label is the mechanism: the local indexes here also hold a CUDA torch (PyPI's build of a newer
  version, which requires nvidia-* wheels). Asked for that version, the torch step finds nothing rather
  than that build; a plain `torch==VERSION` selects it (the control).
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

REPO = Path(__file__).resolve().parents[1]
CUDA_NAMES = re.compile(r"^(nvidia-.*|triton|.*cuda.*|cupy.*|onnxruntime-gpu)$", re.IGNORECASE)

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
    """The `pip install` lines that install packages (not pip's own upgrade)."""
    return [c for c in commands if "/bin/pip install" in c and "--upgrade pip" not in c]


def dry_run(command: str, report: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run a Makefile pip command as a dry run that reports its resolution to `report`."""
    args = " ".join(shlex.quote(a) for a in ("--dry-run", "--ignore-installed", "--report", str(report), *extra))
    return subprocess.run(f"{command} {args}", shell=True, cwd=REPO, capture_output=True, text=True, timeout=600)


def installed(report: Path) -> dict[str, dict[str, Any]]:
    """{normalised name: report item} for everything the dry run would install."""
    items = json.loads(report.read_text())["install"]
    return {item["metadata"]["name"].lower().replace("_", "-"): item for item in items}


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


def test_the_extras_install_a_cpu_torch_and_no_cuda_package(venv: tuple[Path, list[str]], tmp_path: Path) -> None:
    _, commands = venv
    torch_step, extras_step = pip_installs(commands)
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch_step and "--no-deps" in torch_step
    assert re.search(r"'torch==[\d.]+\+cpu'", torch_step), torch_step

    first = dry_run(torch_step, tmp_path / "torch.json")
    assert first.returncode == 0, first.stderr[-2000:]
    torch = installed(tmp_path / "torch.json")
    assert list(torch) == ["torch"] and torch["torch"]["metadata"]["version"].endswith("+cpu")
    wheel = torch["torch"]["download_info"]["url"]
    requires = torch["torch"]["metadata"].get("requires_dist", [])
    assert not [r for r in requires if CUDA_NAMES.match(re.split(r"[\s;<>=!~\[]", r)[0])], requires

    # The extras as they resolve once that torch is in the environment (named here by its wheel).
    second = dry_run(extras_step, tmp_path / "extras.json", wheel)
    assert second.returncode == 0, second.stderr[-2000:]
    everything = installed(tmp_path / "extras.json")
    assert {"torch", "onnxruntime", "locust", "pytest", "grpcio"} <= set(everything)
    assert everything["torch"]["metadata"]["version"] == torch["torch"]["metadata"]["version"]
    assert sorted(n for n in everything if CUDA_NAMES.match(n)) == []


def test_a_torch_only_published_for_cuda_is_refused_not_installed(venv: tuple[Path, list[str]], tmp_path: Path) -> None:
    path, _ = venv
    # The control: the newest torch this machine's indexes offer, as a plain requirement would get it.
    control = subprocess.run(
        [str(path / "bin" / "pip"), "install", "--dry-run", "--ignore-installed", "--no-deps", "--report",
         str(tmp_path / "plain.json"), "torch"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert control.returncode == 0, control.stderr[-2000:]
    plain = installed(tmp_path / "plain.json")["torch"]["metadata"]
    if not any(r.startswith("nvidia-") for r in plain.get("requires_dist", [])):
        pytest.skip(f"the indexes here offer no CUDA build of torch to refuse (newest: {plain['version']})")

    torch_step = pip_installs(install_commands(path, f"TORCH_VERSION={plain['version']}"))[0]
    refused = dry_run(torch_step, tmp_path / "refused.json")
    assert refused.returncode != 0, f"{torch_step} selected {sorted(installed(tmp_path / 'refused.json'))}"
    assert f"torch=={plain['version']}+cpu" in refused.stderr and not (tmp_path / "refused.json").exists()
