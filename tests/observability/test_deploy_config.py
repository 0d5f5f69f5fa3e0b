"""Prometheus config, alert rules (with their unit tests) and the Grafana dashboard, checked with promtool."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from deploy.grafana import dashboard as dashboard_source
from tests.observability.promtool import DASHBOARD, grafana_to_promql, promtool

METRIC_PREFIXES = ("charrnn_", "grpc_server_", "up")


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query in the dashboard, Grafana variables substituted."""
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return [(p["title"], grafana_to_promql(t["expr"])) for p in data["panels"] for t in p["targets"]]


def test_prometheus_config_is_valid() -> None:
    out = promtool("check", "config", "prometheus.yml")
    assert "1 rule files found" in out


def test_alert_rules_are_valid_and_their_unit_tests_pass() -> None:
    promtool("check", "rules", "alerts.yml")
    out = promtool("test", "rules", "alerts_test.yml")
    assert "SUCCESS" in out


def test_every_alert_has_a_unit_test() -> None:
    from tests.observability.promtool import PROMETHEUS_DIR

    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())
    tested = {t["alertname"] for case in tests["tests"] for t in case["alert_rule_test"] if t.get("exp_alerts")}
    assert alerts == tested


def test_dashboard_json_is_generated_and_fresh() -> None:
    assert DASHBOARD.read_text() == dashboard_source.render(), "run: python deploy/grafana/dashboard.py"
    data = json.loads(DASHBOARD.read_text())
    titles = [p["title"] for p in data["panels"]]
    assert len(titles) == len(set(titles))
    for wanted in ("Time to first character", "Inter-chunk gap", "Live and queued streams", "Errors/s by code"):
        assert wanted in titles
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))


def test_every_per_model_series_on_the_dashboard_follows_the_model_picker() -> None:
    """A series the server labels by model is filtered by the dashboard's `$model` and a server-wide one is not
    (it has no such label: the filter would empty its panel). Which is which comes from the server's metrics."""
    from prometheus_client import CollectorRegistry

    from service.metrics import Metrics

    per_model = {d.name for family in Metrics(CollectorRegistry())._per_model() for d in family.describe()}
    data = json.loads(DASHBOARD.read_text())
    assert {v["name"] for v in data["templating"]["list"]} >= {"job", "model"}
    checked = set()
    for panel in data["panels"]:
        for target in panel["targets"]:
            for metric, labels in re.findall(r"(charrnn_\w+)\{([^}]*)\}", target["expr"]):
                name = re.sub(r"(_total|_bucket|_sum|_count)$", "", metric)
                if name in per_model:
                    assert 'model=~"$model"' in labels, (panel["title"], target["expr"])
                else:
                    assert "model" not in labels, (panel["title"], target["expr"])
                checked.add(name)
    assert len(checked & per_model) >= 8 and checked - per_model, checked


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    """promtool parses each panel's PromQL as a recording rule; a syntax error fails with the query."""
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    for _, expr in exprs:
        assert any(prefix in expr for prefix in METRIC_PREFIXES), expr
    rules = {
        "groups": [
            {"name": "dashboard", "rules": [{"record": f"dashboard:q{i}", "expr": e} for i, (_, e) in enumerate(exprs)]}
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    out = promtool("check", "rules", str(path), cwd=tmp_path)
    assert f"SUCCESS: {len(exprs)} rules found" in out
