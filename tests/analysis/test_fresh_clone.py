"""The analyses docs/rnn.md shows, run as a newcomer runs them: from a clean copy of the repository.

The copy holds what a clone holds (tracked files, and files not yet committed but not ignored): no
runs/, no training run behind models/default. Each command runs with its default paths from the
copy's root, as the doc writes it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    )  # fmt: skip
    root = tmp_path_factory.mktemp("clone")
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    assert not (root / "runs").exists()
    where = charrnn(root, "-c", "import charrnn, training; print(charrnn.__file__, training.__file__)", module=False)
    assert where.stdout.count(str(root)) == 2, f"the copy's code is not the code that runs: {where.stdout}"
    return root


def charrnn(cwd: Path, *args: str, module: bool = True) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "charrnn.cli", *args] if module else [sys.executable, *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_progression_of_the_shipped_models_works_from_the_clone_alone(clone: Path) -> None:
    """The lecture's picture needs no training run: both shipped manifests carry their samples."""
    for model in ("default", "shakespeare"):
        manifest = json.loads((clone / "models" / model / "manifest.json").read_text())
        steps = [sample["step"] for sample in manifest["training"]["samples"]]
        assert steps[0] == 0 and len(steps) >= 2 and steps == sorted(steps), steps  # from noise, then on
        out = clone / "runs" / "analysis" / f"progression-{model}"
        shown = charrnn(clone, "analyze", "progression", "--model", f"models/{model}", "--out", str(out))
        assert shown.returncode == 0, shown.stderr
        assert "| step | val bits/char |" in shown.stdout
        page = (out / "progression.html").read_text()
        assert all(f"<tr><td>{step}</td>" in page for step in steps), "a sample of the manifest is missing"
    default = charrnn(clone, "analyze", "progression")  # no arguments: models/default, as docs/rnn.md runs it
    assert default.returncode == 0, default.stderr


def test_hello_and_gates_with_their_default_paths(clone: Path) -> None:
    hello = charrnn(clone, "analyze", "hello")
    assert hello.returncode == 0, hello.stderr
    assert (clone / "runs" / "analysis" / "hello" / "hello.txt").read_text() in hello.stdout

    elsewhere = clone / "elsewhere"
    assert charrnn(clone, "analyze", "hello", "--out", str(elsewhere)).returncode == 0
    assert (elsewhere / "hello.txt").is_file()

    gates = charrnn(clone, "analyze", "gates", "--chars", "3000")  # models/default, its held-out files
    assert gates.returncode == 0, gates.stderr
    assert (clone / "runs" / "analysis" / "gates" / "gates.png").is_file()
