"""The model repository: which artifact folders a server serves, under which names, with which limits.

A repository is a directory whose sub-folders each hold one artifact (`model.onnx` + `manifest.json`). A
model is served under its folder's name, not the manifest's `model.name` (exports often share one, such as
`charrnn`; folder names are unique by construction and the operator chooses them). `--model DIR` is a
repository of one: DIR's own name. An optional `serving.json` beside a manifest overrides some of the
server's `Limits` for that model alone, and its number of engine processes. Light on purpose (no
onnxruntime): it only reads the file system.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charrnn.artifact import MANIFEST_FILE, ArtifactError
from charrnn.quoting import quote
from service.config import ConfigError, Limits

SERVING_FILE = "serving.json"
# A served name: what requests' `model` field, metric labels and URLs carry.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# The name chosen as the default when several models are served and --default-model is unset.
DEFAULT_NAME = "default"
# `Limits` fields a model's serving.json may override: what one model's requests and scheduler use. The
# others (sessions, Session streams, the retry hint) are the server's, shared by all its models.
PER_MODEL_LIMITS = (
    "max_live_streams",
    "max_queued_streams",
    "max_prompt_chars",
    "max_request_chars",
    "default_max_chars",
    "max_stop_strings",
    "max_stop_chars",
    "max_score_chars",
    "max_watched_units",
    "min_checkpoint_chars",
)
# serving.json's other key: how many engine processes step this model's rows (else --engines). Each engine
# holds its own copy of the graph, so a small or rarely used model beside a busy one can be given one.
ENGINES_KEY = "engines"
_MINIMUM = {"max_live_streams": 1, "default_max_chars": 1, "min_checkpoint_chars": 1, ENGINES_KEY: 1}


@dataclass(frozen=True)
class ModelServing:
    """What serving one model takes: its limits, and its engine processes."""

    limits: Limits
    engines: int


@dataclass(frozen=True)
class Repository:
    """Where the served artifacts are: every artifact folder under `root`, or the one folder `single`."""

    root: Path
    single: bool = False  # --model DIR: `root` is the artifact itself

    def scan(self) -> dict[str, Path]:
        """Served name → artifact folder, sorted by name. ConfigError for a name that cannot be served
        (bad characters, or two folders that differ only in case); folders without a manifest are skipped."""
        if not self.root.is_dir():
            raise ConfigError(f"model directory {self.root} does not exist")
        if self.single:
            folders = [self.root]
        else:
            folders = sorted(p for p in self.root.iterdir() if p.is_dir() and (p / MANIFEST_FILE).is_file())
        found: dict[str, Path] = {}
        for folder in folders:
            name = folder.resolve().name
            if not NAME_PATTERN.fullmatch(name):
                raise ConfigError(
                    f"{folder}: {quote(name)} cannot be a model name (letters, digits, '.', '_', '-'; at most 64, "
                    "starting with a letter or digit): rename the folder"
                )
            clash = next((other for other in found if other.lower() == name.lower()), None)
            if clash is not None:
                raise ConfigError(f"{found[clash]} and {folder} both claim the model name {name!r}: rename one")
            found[name] = folder
        if not found:
            raise ConfigError(f"{self.root} holds no model artifact (a folder with {MANIFEST_FILE} and its graph)")
        return found


def choose_default(names: list[str], wanted: str | None) -> str:
    """The model a request without `model` goes to: `wanted`, else the only one, else the one named `default`."""
    served = ", ".join(names)
    if wanted is not None:
        if wanted not in names:
            raise ConfigError(f"--default-model {quote(wanted)} is not in the repository (models: {served})")
        return wanted
    if len(names) == 1:
        return names[0]
    if DEFAULT_NAME in names:
        return DEFAULT_NAME
    raise ConfigError(f"{len(names)} models and none is named {DEFAULT_NAME!r}: pass --default-model (one of {served})")


def model_serving(folder: Path, base: Limits, engines: int) -> ModelServing:
    """`base` limits and `engines` with the overrides of `folder`'s serving.json (none when absent); ArtifactError
    in one line naming the file and the field when it is not a JSON object of known keys in range."""
    path = folder / SERVING_FILE
    if not path.is_file():
        return ModelServing(base, engines)
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ArtifactError(f'{path} must hold a JSON object of limits, e.g. {{"max_live_streams": 8}}')
    overrides = _overrides(path, data)
    engines = overrides.pop(ENGINES_KEY, engines)
    limits = dataclasses.replace(base, **overrides)
    if limits.default_max_chars > limits.max_request_chars:
        raise ArtifactError(
            f"{path}: default_max_chars {limits.default_max_chars} exceeds max_request_chars {limits.max_request_chars}"
        )
    return ModelServing(limits, engines)


def _overrides(path: Path, data: Mapping[str, Any]) -> dict[str, int]:
    out = {}
    for key, value in data.items():
        if key not in PER_MODEL_LIMITS and key != ENGINES_KEY:
            known = ", ".join((*PER_MODEL_LIMITS, ENGINES_KEY))
            raise ArtifactError(f"{path}: {quote(key)} is not a per-model setting (one of {known})")
        if isinstance(value, bool) or not isinstance(value, int) or value < _MINIMUM.get(key, 0):
            raise ArtifactError(f"{path}: {key} must be an integer >= {_MINIMUM.get(key, 0)}, got {value!r}"[:300])
        out[key] = value
    return out


def fingerprint(repository: Repository) -> tuple[tuple[str, int, int], ...]:
    """What changes when a folder is added, removed or rewritten (names, sizes, modification times): cheap to
    poll (`--watch-repository`) without hashing any graph."""
    root = repository.root
    try:
        folders = [root] if repository.single else sorted(p for p in root.iterdir() if p.is_dir())
    except OSError:
        return ()
    stamps = []
    for folder in folders:
        try:
            files = sorted(p for p in folder.iterdir() if p.is_file())
            stamps += [(str(p), (st := p.stat()).st_size, st.st_mtime_ns) for p in files]
        except OSError:
            continue  # removed while we looked: the next poll sees it gone
    return tuple(stamps)
