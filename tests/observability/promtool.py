"""promtool helpers for the tests; they skip (saying why) when Prometheus is not installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "charrnn.json"

# Grafana's variables, replaced by values Prometheus accepts so the PromQL itself can be checked.
# `$model` as Grafana's "All" expands it, an alternation of the values: it matches no series without the label.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m", "$job": ".*", "$model": ".+"}


def require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed (Debian package 'prometheus'; .ci/run installs it)")
    return path


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> str:
    """Run promtool; fail the test with its output when it exits non-zero."""
    result = subprocess.run([require("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def grafana_to_promql(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unhandled Grafana variable in {expr!r}"
    return expr
