"""Read metric values from a registry or a /metrics page, as tests need them.

A series that does not exist is an error, never a 0: a misspelt metric or label would otherwise pass
every "== 0" check. (The server creates the series of its known label values at start, so a counter
that has not counted yet exists and reads 0.)
"""

from __future__ import annotations

import urllib.request

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families


class MissingSeries(AssertionError):
    """The series asked for is not there (misspelt name or label, or a series not created yet)."""


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels` (one series, or a metric's series
    of every model when `model` is left out); MissingSeries (naming the series that do exist) when none does."""
    matching = [
        s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    ]
    if matching:
        return sum(matching)
    present = sorted(str(s.labels) for family in registry.collect() for s in family.samples if s.name == name)
    where = f"series of {name}: {', '.join(present[:8])}" if present else f"no sample is named {name}"
    raise MissingSeries(f"no series {name}{labels} ({where})")


SUFFIXES = ("", "_total", "_created", "_bucket", "_count", "_sum", "_info")  # a family's sample names


def series(registry: CollectorRegistry, name: str) -> list[dict[str, str]]:
    """The label sets of the samples named `name` (an empty list before the first event), or MissingSeries
    when no registered metric has that name: "none counted yet" must not pass for a misspelt name."""
    families = list(registry.collect())
    if not any(name == f.name + suffix for f in families for suffix in SUFFIXES):
        raise MissingSeries(f"no metric has samples named {name}")
    return [dict(s.labels) for f in families for s in f.samples if s.name == name]


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample on a /metrics page, keyed by (name, labels); a missing key is a KeyError."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str) -> float:
    """The sum of a scraped page's samples named `name` over every label set (each served model's, say);
    MissingSeries when there is none."""
    values = [v for (n, _), v in samples.items() if n == name]
    if not values:
        raise MissingSeries(f"no sample is named {name}")
    return sum(values)
