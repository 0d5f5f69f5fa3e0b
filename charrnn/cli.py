"""The `charrnn` command: one entry point, subcommands registered by each part.

Each part (training, service, analysis) exposes ``register(subparsers)`` in a light module
that imports nothing heavy at import time; handlers import torch / grpc / onnxruntime
only when they run, so `charrnn serve` works in an environment without torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from charrnn.settings import SettingError

# Modules that contribute subcommands. A part missing from the install is skipped rather than breaking the
# whole command: the serving image has no `training` and no `bench`, a client-only install only the client.
COMMAND_MODULES = ("training.cli", "training.analysis.cli", "service.cli", "charrnn.client.cli", "bench.cli")


# A dependency missing at run time → the extra that brings it (a command of a part installed without its extra).
_EXTRAS = {"grpc": "client", "grpc_health": "client", "google": "client", "onnxruntime": "serve",
           "aiohttp": "serve", "prometheus_client": "serve", "torch": "train", "onnx": "train",
           "matplotlib": "train", "locust": "load"}  # fmt: skip


class _Parser(argparse.ArgumentParser):
    """A command-line mistake is one line naming the problem and where the help is, exit code 2 (argparse
    prints the whole usage block first); subcommands' parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="charrnn",
        description="Character-level RNN language model: train, export, serve, analyze.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        result = args.handler(args)
    except SettingError as exc:  # a malformed flag or CHARRNN_* variable: the user's to fix
        print(f"charrnn {args.command}: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        extra = _EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"charrnn {args.command}: needs the {extra!r} extra: pip install 'charrnn[{extra}]'", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
