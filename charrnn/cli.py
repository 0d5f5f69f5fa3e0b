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

# Modules that contribute subcommands. A module missing from the install (say, an
# optional part not yet present) is skipped rather than breaking the whole command.
COMMAND_MODULES = ("training.cli", "service.cli", "training.analysis.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="charrnn",
        description="Character-level RNN language model: train, export, serve, analyze.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    bench = sub.add_parser("bench", help="benchmarks (quality, serve, cells, ...)")
    bench_sub = bench.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                continue
            raise
        module.register(sub, bench_sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    result = args.handler(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
