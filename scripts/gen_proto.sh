#!/usr/bin/env bash
# Regenerate the Python code for proto/charrnn/v1/*.proto into charrnn/v1/ (committed;
# tests/service/test_proto.py fails when it is stale). Run from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
# protoc finds the mypy plugin (protoc-gen-mypy) on PATH, next to the interpreter.
export PATH="$(dirname "$PYTHON"):$PATH"
"$PYTHON" -m grpc_tools.protoc -I proto --python_out=. --grpc_python_out=. --mypy_out=. proto/charrnn/v1/*.proto
