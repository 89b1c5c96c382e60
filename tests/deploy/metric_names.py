"""The sample names metric sets export (a counter `x` as `x_total`, a histogram's
`_bucket`, `_sum`, `_count`): what an alert rule or a dashboard may name."""

from __future__ import annotations

from prometheus_client import CollectorRegistry


def sample_names(*metric_sets: type) -> set[str]:
    registry = CollectorRegistry()
    for metric_set in metric_sets:
        metric_set(registry)
    names = set()
    for family in registry.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names |= {f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count")}
    return names
