"""`charrnn bench sessions`: what a server-side session costs in RSS, next to its raw state bytes.

A server process creates `--sessions` sessions (Generate with create_session, one character each), and the
RSS growth per session is compared with the bytes of the state it holds (every state tensor of one row:
layers x hidden x 4 bytes each).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.proctree import rss_bytes
from bench.serve import ServerProcess
from charrnn.artifact import load_manifest
from charrnn.client import Client

WARM_UP = 200


def run(args: argparse.Namespace) -> dict[str, Any]:
    manifest = load_manifest(args.model)
    layers, hidden = manifest.state_shape
    state_bytes = len(manifest.onnx.states) * layers * hidden * 4
    flags = ["--max-sessions", str(args.sessions + WARM_UP + 10), "--session-memory-mb", "100000"]
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="charrnn-sessions-") as tmp:
        server = ServerProcess(args.model, Path(tmp), "sessions", flags)
        try:
            with Client(server.target, timeout=60) as client:
                for i in range(WARM_UP):  # allocator pools and code paths warmed before the baseline
                    client.generate("x", max_chars=1, seed=i, create_session=True).text()
                time.sleep(0.5)
                before = rss_bytes(server.pid)
                for i in range(args.sessions):
                    client.generate("x", max_chars=1, seed=i, create_session=True).text()
                time.sleep(0.5)
                after = rss_bytes(server.pid)
        finally:
            server.close()
    per_session = (after - before) / args.sessions
    return {
        "model": str(args.model),
        "sessions": args.sessions,
        "state_bytes": state_bytes,
        "rss_per_session_bytes": round(per_session),
        "ratio": round(per_session / state_bytes, 3),
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg()[0],
    }


def main(args: argparse.Namespace) -> int:
    report = run(args)
    print(f"{'sessions':>8} {'state B':>8} {'RSS B/session':>14} {'ratio':>6}  (goal <= 1.3)")
    print(f"{report['sessions']:>8} {report['state_bytes']:>8} {report['rss_per_session_bytes']:>14} "
          f"{report['ratio']:>6.2f}")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench-sessions.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0
