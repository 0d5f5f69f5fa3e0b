"""The tests' metric reader: a series that does not exist fails, it never reads as 0."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from service.metrics import Metrics
from tests.observability.scrape import MissingSeries, series, value


def _registry() -> CollectorRegistry:
    metrics = Metrics()
    metrics.model("m")  # a served model's series start at 0
    return metrics.registry


def test_a_missing_series_fails_and_an_existing_zero_reads_zero() -> None:
    reg = _registry()
    assert value(reg, "charrnn_rejections_total", model="m", reason="queue_full") == 0  # not counted yet
    with pytest.raises(MissingSeries, match="no sample is named charrnn_rejection_total"):
        value(reg, "charrnn_rejection_total", reason="queue_full")  # misspelt name
    with pytest.raises(MissingSeries, match=r"series of charrnn_rejections_total: .*queue_full"):
        value(reg, "charrnn_rejections_total", reason="queue-full")  # misspelt label value


def test_series_lists_none_before_the_first_event_and_fails_on_an_unknown_name() -> None:
    reg = _registry()
    assert series(reg, "grpc_server_started_total") == []  # registered, no call yet
    assert {"model": "m", "reason": "queue_full"} in series(reg, "charrnn_rejections_total")
    with pytest.raises(MissingSeries, match="no metric has samples named grpc_server_started_totl"):
        series(reg, "grpc_server_started_totl")
