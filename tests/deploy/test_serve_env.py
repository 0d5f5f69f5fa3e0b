"""The serving image's promise, checked without Docker.

deploy/Dockerfile's serving stage installs only the `serve` extra's lock (locks/serve.txt) and the project
from the files its build stages copy. This test does the same into a fresh virtual environment (real
downloads from the package index, hashes checked), starts `charrnn serve` from it on the shipped default
model, streams a generation with the project's client from that environment, scrapes /metrics, and checks
torch is not importable there.

The environment is cached under the system temp dir, keyed by a hash of everything the install reads (the
COPY sources and the Python version), so a change to the code or to pyproject.toml builds a new one; set
CHARRNN_FRESH_SERVE_VENV=1 to force a rebuild. Building it takes about a minute on a fresh machine (mostly
downloads), so the test is marked slow; CI runs it (see docs/deploy.md).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.tools import (
    DOCKERFILE,
    MAX_SERVE_ENV_BYTES,
    REPO,
    context_copy_sources,
    parse_dockerfile,
    stage_chain,
)

pytestmark = pytest.mark.slow

CACHE_ROOT = Path(tempfile.gettempdir()) / "charrnn-serve-venv"
STALE_AFTER_S = 24 * 3600


def serve_build_sources() -> list[str]:
    """What the stages up to `serve-build` copy from the context: exactly what the install sees."""
    return context_copy_sources(stage_chain(parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8")), "serve-build"))


def _fingerprint(sources: list[str]) -> str:
    digest = hashlib.sha256(sys.version.encode())
    for source in sources:
        path = REPO / source
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            if "__pycache__" in f.parts or f.suffix == ".pyc":
                continue
            digest.update(f.relative_to(REPO).as_posix().encode())
            digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def _build(venv: Path, sources: list[str]) -> None:
    context = venv.parent / f"{venv.name}.context"
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir()
    for source in sources:
        if (REPO / source).is_dir():
            shutil.copytree(REPO / source, context / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            (context / source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / source, context / source)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    pip = [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", "--no-deps"]
    # As the Dockerfile's serve-deps stage does: the lock, hashes checked, then the project built by it.
    for args in (["--require-hashes", "-r", "locks/serve.txt"], ["--no-build-isolation", "."]):
        subprocess.run([*pip, *args], check=True, timeout=900, env=env, cwd=context)
    shutil.rmtree(context, ignore_errors=True)
    # As the Dockerfile's serving stage does: the measured environment is the image's.
    subprocess.run([sys.executable, str(REPO / "deploy" / "slim_venv.py"), str(venv)], check=True, timeout=120)


def _prune(keep: Path) -> None:
    """Drop environments for other fingerprints that nobody has touched for a day."""
    for entry in CACHE_ROOT.iterdir():
        if entry.is_dir() and entry != keep and time.time() - entry.stat().st_mtime > STALE_AFTER_S:
            shutil.rmtree(entry, ignore_errors=True)


@pytest.fixture(scope="module")
def serve_venv() -> Iterator[Path]:
    sources = serve_build_sources()
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    venv = CACHE_ROOT / _fingerprint(sources)
    with open(CACHE_ROOT / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per fingerprint; others wait and reuse
        complete = venv / ".complete"
        if os.environ.get("CHARRNN_FRESH_SERVE_VENV") == "1" or not complete.exists():
            shutil.rmtree(venv, ignore_errors=True)
            _build(venv, sources)
            complete.touch()
        os.utime(venv)
        _prune(venv)
        yield venv


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def _isolated_env() -> dict[str, str]:
    """No PYTHONPATH (the repo must not leak in) and no CHARRNN_* settings from the caller."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "CHARRNN_"))}


def _python(venv: Path, code: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "python"), "-c", code, *args],
        cwd=cwd, env=_isolated_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip


WHERE_AND_TORCH = """
import importlib.util, json, service, charrnn
found = {name: importlib.util.find_spec(name) is not None for name in ("torch", "training", "bench")}
print(json.dumps({"service": service.__file__, **found}))
"""

STREAM = """
import json, sys
from charrnn.client import Client
with Client(sys.argv[1], timeout=60) as c:
    health = c.health()
    gen = c.generate("def main():\\n", max_chars=300, temperature=0.8, seed=5)
    chunks = list(gen)
print(json.dumps({"health": health, "chunks": len(chunks), "text": "".join(chunks),
                  "finish": gen.result.finish_reason, "generated": gen.result.generated_chars}))
"""


def test_the_serve_extra_alone_serves_the_default_model_without_torch(serve_venv: Path, tmp_path: Path) -> None:
    where = _python(serve_venv, WHERE_AND_TORCH, tmp_path)
    assert where.returncode == 0, where.stderr
    facts = json.loads(where.stdout)
    assert facts["torch"] is False, "torch is importable in the serve-only environment"
    assert facts["training"] is False and facts["bench"] is False, "training or benchmark code in the serving env"
    assert Path(facts["service"]).is_relative_to(serve_venv), f"imported the repo's code: {facts['service']}"
    size = tree_bytes(serve_venv)
    assert size < MAX_SERVE_ENV_BYTES, f"the serve-only environment grew to {size / 1e6:.0f} MB"

    port_file, metrics_file, log = tmp_path / "port", tmp_path / "metrics-port", tmp_path / "server.log"
    cmd = [str(serve_venv / "bin" / "charrnn"), "serve", "--model", str(REPO / "models" / "default"), "--dev",
           "--host", "127.0.0.1", "--port", "0", "--port-file", str(port_file),
           "--metrics-port", "0", "--metrics-port-file", str(metrics_file)]  # fmt: skip
    with open(log, "wb") as out:
        server = subprocess.Popen(cmd, cwd=tmp_path, env=_isolated_env(), stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 90
            while not port_file.exists() and server.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert port_file.exists(), f"server did not start:\n{log.read_text(errors='replace')}"
            target = f"127.0.0.1:{int(port_file.read_text())}"

            stream = _python(serve_venv, STREAM, tmp_path, target)
            assert stream.returncode == 0, stream.stderr
            result = json.loads(stream.stdout)
            assert result["health"] == "SERVING"
            assert result["finish"] == "length" and result["generated"] == 300 and len(result["text"]) == 300
            assert result["chunks"] >= 1

            metrics_port = int(metrics_file.read_text())
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
                body = response.read().decode()
            assert "charrnn_generated_chars_total" in body and "charrnn_live_streams" in body
        finally:
            server.terminate()
            server.wait(timeout=60)
    assert server.returncode == 0, log.read_text(errors="replace")
