"""Read metric values from a registry or a /metrics page, as tests need them."""

from __future__ import annotations

import urllib.request

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A sample's value (0 when the series does not exist yet)."""
    got = registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample on a /metrics page, keyed by (name, labels)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
