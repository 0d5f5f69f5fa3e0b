"""`charrnn serve`: flags and environment variables from `ServerConfig` (charrnn.settings), then the server.

Imported by charrnn/cli.py at startup, so it imports nothing heavy: grpc and onnxruntime load when the
handler runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from charrnn.settings import add_flags, build
from service.config import ServerConfig


def register(sub: Any) -> None:
    """Add `serve` to `charrnn`."""
    p = sub.add_parser(
        "serve",
        help="serve the model over gRPC (continuous batching)",
        description="Every flag also reads CHARRNN_<FLAG> (shown in brackets) when not given.",
    )
    add_flags(p, ServerConfig)
    p.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from charrnn.artifact import ArtifactError
    from service.config import ConfigError
    from service.server import serve

    config = build(ServerConfig, args)
    try:
        return asyncio.run(serve(config))
    except (ArtifactError, ConfigError, OSError) as exc:
        print(f"charrnn serve: cannot start: {exc}", file=sys.stderr)
        return 2
