"""One declaration per setting: a dataclass field becomes its flag, its environment variable and its doc row.

    @dataclass(frozen=True)
    class Limits:
        max_live_streams: int = setting(64, "rows advanced together per step", aliases=("--max-batch",))

gives `--max-live-streams` (and the alias `--max-batch`), `CHARRNN_MAX_LIVE_STREAMS` (and
`CHARRNN_MAX_BATCH`), the default 64 in `--help`, and a row of `markdown_table`. Nested dataclass fields
(`limits: Limits = field(default_factory=Limits)`) contribute their settings too.

Environment variables are read only for the command that runs, only when its flag is not on the command
line, and after parsing: a variable another program set in the same environment (Kubernetes sets
`<SERVICE>_PORT=tcp://...` for every Service) cannot break an unrelated command, and a malformed value is a
`SettingError` that names the variable.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from charrnn.quoting import quote

ENV_PREFIX = "CHARRNN_"
T = TypeVar("T")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


class SettingError(ValueError):
    """A setting's value cannot be used; the message names the flag or variable and what it expects."""


def setting(
    default: Any,
    help: str,
    *,
    aliases: tuple[str, ...] = (),
    env_only: bool = False,
    shown: str | None = None,
) -> Any:
    """A dataclass field that is also a command-line setting.

    `aliases`: older flag spellings (each also read as an environment variable). `env_only`: no flag, only
    the variable (for secrets that must not show in `ps`). `shown`: how the default reads in docs and --help.
    """
    metadata = {"help": help, "aliases": aliases, "env_only": env_only, "shown": shown}
    if isinstance(default, list | dict | set):
        raise TypeError("mutable defaults are not settings")
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Setting:
    """One flattened setting of a (possibly nested) settings dataclass."""

    path: tuple[str, ...]  # field names from the top dataclass down, e.g. ("limits", "max_live_streams")
    kind: type  # int, float, str, bool or Path (None allowed when `optional`)
    optional: bool
    default: Any
    help: str
    aliases: tuple[str, ...]
    env_only: bool
    shown: str | None

    @property
    def name(self) -> str:
        return self.path[-1]

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def dest(self) -> str:
        return "__".join(self.path)

    @property
    def env(self) -> str:
        return env_name(self.flag)

    @property
    def envs(self) -> tuple[str, ...]:
        return (self.env, *(env_name(a) for a in self.aliases))

    def default_text(self) -> str:
        if self.shown is not None:
            return self.shown
        if self.kind is bool:
            return "on" if self.default else "off"
        return "–" if self.default is None else str(self.default)

    def parse(self, raw: str, source: str) -> Any:
        """Convert a command-line or environment string; SettingError naming `source` when it can't."""
        if self.kind is bool:
            value = raw.strip().lower()
            if value in _TRUE or value in _FALSE:
                return value in _TRUE
            raise SettingError(f"{source}={quote(raw)}: expected 1/true/yes/on or 0/false/no/off")
        if self.optional and raw == "":
            return None
        try:
            return self.kind(raw)
        except ValueError:
            expected = {int: "an integer", float: "a number"}.get(self.kind, self.kind.__name__)
            raise SettingError(f"{source}={quote(raw)} is not {expected} ({self.flag})") from None


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")


def settings_of(cls: type, prefix: tuple[str, ...] = ()) -> Iterator[Setting]:
    """Every setting of `cls`, nested dataclasses flattened, in declaration order."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from settings_of(typing.cast(type, hint), (*prefix, f.name))
            continue
        if "help" not in f.metadata:
            continue
        kind, optional = _kind(hint)
        yield Setting(
            (*prefix, f.name),
            kind,
            optional,
            f.default,
            f.metadata["help"],
            f.metadata["aliases"],
            f.metadata["env_only"],
            f.metadata["shown"],
        )


def _kind(hint: Any) -> tuple[type, bool]:
    """(int, False) for `int`; (Path, True) for `Path | None`."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"unsupported setting type {hint}")
        return inner[0], True
    if hint not in (int, float, str, bool, Path):
        raise TypeError(f"unsupported setting type {hint}")
    return hint, False


def add_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """A flag for every setting of `cls`; defaults stay unset (None) so `build` can tell what was given."""
    for s in settings_of(cls):
        if s.env_only:
            continue
        envs = " / ".join(s.envs)
        text = f"{s.help} [env {envs}; default {s.default_text()}]"
        names = (s.flag, *s.aliases)
        if s.kind is bool:
            parser.add_argument(*names, dest=s.dest, action="store_const", const=True, default=None, help=text)
        else:
            parser.add_argument(*names, dest=s.dest, type=_as_string, default=None, metavar=s.name.upper(), help=text)


def _as_string(raw: str) -> str:
    return raw


def build(cls: Callable[..., T], args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> T:
    """An instance of the settings dataclass `cls`: flags first, then environment variables, then defaults."""
    environ = os.environ if environ is None else environ
    values: dict[tuple[str, ...], Any] = {}
    for s in settings_of(typing.cast(type, cls)):
        raw = None if s.env_only else getattr(args, s.dest, None)
        if raw is True:  # a switch given on the command line
            values[s.path] = True
            continue
        if raw is not None:
            values[s.path] = s.parse(raw, s.flag)
            continue
        env = next((e for e in s.envs if e in environ), None)
        if env is not None:
            values[s.path] = s.parse(environ[env], env)
    return typing.cast(T, _instantiate(typing.cast(type, cls), values, ()))


def _instantiate(cls: type, values: dict[tuple[str, ...], Any], prefix: tuple[str, ...]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        path = (*prefix, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            kwargs[f.name] = _instantiate(typing.cast(type, hints[f.name]), values, path)
        elif path in values:
            kwargs[f.name] = values[path]
    return cls(**kwargs)


def markdown_table(cls: type) -> str:
    """The settings of `cls` as a Markdown table (flag, environment variable, default, meaning)."""
    rows = ["| Flag | Environment | Default | Meaning |", "|---|---|---|---|"]
    for s in settings_of(cls):
        flag = "–" if s.env_only else ", ".join(f"`{f}`" for f in (s.flag, *s.aliases))
        rows.append(f"| {flag} | `{s.env}` | {s.default_text()} | {s.help} |")
    return "\n".join(rows) + "\n"
