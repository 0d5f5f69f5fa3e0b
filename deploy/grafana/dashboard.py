"""Generates dashboards/charrnn.json: `python deploy/grafana/dashboard.py` (a test checks it is fresh).

Written as code so every quantile panel is built the same way; Grafana loads the JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards" / "charrnn.json"
SEL = 'job=~"$job"'
MODEL_SEL = 'model=~"$model"'
RATE = "[$__rate_interval]"
QUANTILES = (0.5, 0.9, 0.99)
# charrnn_ series without a `model` label: the server's own (sessions are shared by its models). Every other
# charrnn_ series is the served model's, so the dashboard's model picker filters it.
SERVER_WIDE = ("charrnn_sessions", "charrnn_session_streams", "charrnn_session_evictions_total", "charrnn_serving")


def selector(metric: str, extra: str = "") -> str:
    """`{job=~"$job"[,model=~"$model"][,extra]}` for `metric` (a bucket, sum or count series included)."""
    per_model = metric.startswith("charrnn_") and not metric.startswith(SERVER_WIDE)
    return "{" + ",".join(filter(None, [SEL, MODEL_SEL if per_model else "", extra])) + "}"


def rate(metric: str, by: str = "", extra: str = "") -> str:
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({metric}{selector(metric, extra)}{RATE}))"


def gauge(metric: str, by: str = "") -> str:
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} ({metric}{selector(metric)})"


def quantile(q: float, histogram: str, by: str = "") -> str:
    return f"histogram_quantile({q}, {rate(histogram + '_bucket', ', '.join(filter(None, [by, 'le'])))})"


def target(expr: str, legend: str, ref: int, **extra: Any) -> dict[str, Any]:
    return {
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "expr": expr,
        "legendFormat": legend,
        "refId": chr(ord("A") + ref),
        **extra,
    }


def panel(
    title: str,
    targets: list[tuple[str, str]],
    unit: str,
    description: str,
    kind: str = "timeseries",
    **target_extra: Any,
) -> dict[str, Any]:
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [target(expr, legend, i, **target_extra) for i, (expr, legend) in enumerate(targets)],
    }


def quantile_panel(title: str, histogram: str, description: str, by: str = "") -> dict[str, Any]:
    label = " ".join(f"{{{{{name.strip()}}}}}" for name in by.split(",")) + " " if by else ""
    return panel(
        title,
        [(quantile(q, histogram, by), f"{label}p{round(q * 100)}") for q in QUANTILES],
        "s",
        description,
    )


def panels() -> list[dict[str, Any]]:
    service = 'grpc_service="charrnn.v1.CharRNN"'
    rows = [
        [
            panel(
                "Requests/s by method",
                [(rate("grpc_server_started_total", "grpc_method", service), "{{grpc_method}}")],
                "reqps",
                "RPCs started per second.",
            ),
            panel(
                "Errors/s by code",
                [(rate("grpc_server_handled_total", "grpc_code", 'grpc_code!="OK"'), "{{grpc_code}}")],
                "reqps",
                "RPCs that ended with a status other than OK.",
            ),
            panel(
                "Characters/s",
                [
                    (rate("charrnn_generated_chars_total", "model"), "{{model}} generated"),
                    (rate("charrnn_prefilled_chars_total", "model"), "{{model}} prefilled"),
                ],
                "short",
                "Throughput by model: characters sampled, and prompt characters run through the model.",
            ),
        ],
        [
            quantile_panel(
                "Time to first character",
                "charrnn_time_to_first_char_seconds",
                "Submission to first character, queueing and prefill included, by model.",
                by="model",
            ),
            quantile_panel(
                "Inter-chunk gap",
                "charrnn_inter_chunk_gap_seconds",
                "Between a stream's flushes; about --flush-interval-ms when healthy.",
            ),
            quantile_panel("Stream duration", "charrnn_stream_duration_seconds", "Submission to end of stream."),
        ],
        [
            panel(
                "Live and queued streams",
                [
                    (gauge("charrnn_live_streams", "model"), "{{model}} live"),
                    (gauge("charrnn_queued_streams", "model"), "{{model}} queued"),
                ],
                "short",
                "By model (each has its own slots). Queued > 0 for long means every slot is busy (CharRNNSaturated).",
            ),
            panel(
                "Batch size per step",
                [
                    (quantile(0.5, "charrnn_batch_size", "model"), "{{model}} p50"),
                    (
                        rate("charrnn_batch_size_sum", "model") + " / " + rate("charrnn_batch_size_count", "model"),
                        "{{model}} mean",
                    ),
                    (quantile(0.99, "charrnn_batch_size", "model"), "{{model}} p99"),
                ],
                "short",
                "Rows advanced together by one decode step, by model (rows of different models never share one).",
            ),
            quantile_panel(
                "Step time by phase",
                "charrnn_step_duration_seconds",
                "One decode step: the ONNX Runtime call and vectorised sampling.",
                by="phase",
            ),
        ],
        [
            panel(
                "Rejections/s by reason",
                [(rate("charrnn_rejections_total", "model, reason"), "{{model}} {{reason}}")],
                "reqps",
                "Streams refused at admission, by model.",
            ),
            panel(
                "Sessions",
                [
                    (gauge("charrnn_sessions"), "open"),
                    (rate("charrnn_session_evictions_total", "reason"), "evicted/s {{reason}}"),
                    (
                        rate("charrnn_resume_tokens_refused_total", "model, reason"),
                        "tokens refused/s {{model}} {{reason}}",
                    ),
                ],
                "short",
                "Server-side sessions, evictions and refused resume tokens.",
            ),
            quantile_panel(
                "gRPC handling time by method",
                "grpc_server_handling_seconds",
                "Start to status; whole stream for streaming RPCs.",
                by="grpc_method",
            ),
        ],
        [
            panel(
                "Model",
                [("charrnn_model_info" + selector("charrnn_model_info"), "")],
                "none",
                "The served models on each replica.",
                kind="table",
                instant=True,
                format="table",
            ),
        ],
    ]
    out: list[dict[str, Any]] = []
    for y, row in enumerate(rows):
        width = 24 // len(row)
        for x, p in enumerate(row):
            out.append({**p, "id": len(out) + 1, "gridPos": {"h": 8, "w": width, "x": x * width, "y": y * 8}})
    return out


def label_variable(name: str, label: str, query: str) -> dict[str, Any]:
    """A dashboard variable over a label's values, multi-select with "All" (as a regex of every value)."""
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": query, "refId": name},
        "definition": query,
        "includeAll": True,
        "multi": True,
        "current": {"text": "All", "value": "$__all"},
        "refresh": 2,
    }


def dashboard() -> dict[str, Any]:
    return {
        "uid": "charrnn",
        "title": "charrnn",
        "tags": ["charrnn", "grpc"],
        "timezone": "",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "templating": {
            "list": [
                {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus"},
                label_variable("job", "Job", "label_values(charrnn_model_info, job)"),
                label_variable("model", "Model", 'label_values(charrnn_model_info{job=~"$job"}, model)'),
            ]
        },
        "panels": panels(),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
