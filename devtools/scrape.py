"""Reading Prometheus exposition text: what the demo, benchmarks and tests scrape."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def counter_total(metrics_text: str, family_name: str, **labels: str) -> float:
    """Sum of a counter's samples whose labels include `labels`."""
    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        if family.name != family_name:
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                total += sample.value
    return total


def histogram_count(metrics_text: str, family_name: str, **labels: str) -> float:
    """How many observations a histogram's series whose labels include `labels` hold."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics_text)
        if family.name == family_name
        for sample in family.samples
        if sample.name.endswith("_count")
        and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def gauge_samples(metrics_text: str, family_name: str) -> list[tuple[dict[str, str], float]]:
    """A gauge's samples: (labels, value) each."""
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(metrics_text)
        if family.name == family_name
        for sample in family.samples
    ]


def histogram_buckets(metrics_text: str, family_name: str) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) pairs of a histogram, +Inf last."""
    buckets: list[tuple[float, float]] = []
    for family in text_string_to_metric_families(metrics_text):
        if family.name == family_name:
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    buckets.append((float(sample.labels["le"]), sample.value))
    return sorted(buckets)


def histogram_mean(metrics_text: str, family_name: str) -> float | None:
    """A histogram's sum over its count; None before its first observation."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name == family_name:
            for sample in family.samples:
                if sample.name in (f"{family_name}_sum", f"{family_name}_count"):
                    totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    count = totals.get(f"{family_name}_count", 0.0)
    return totals[f"{family_name}_sum"] / count if count else None


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket."""
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for upper_bound, count in buckets:
        if count >= rank:
            if upper_bound == float("inf"):
                return lower_bound
            span = count - lower_count
            fraction = (rank - lower_count) / span if span else 0.0
            return lower_bound + (upper_bound - lower_bound) * fraction
        lower_bound, lower_count = upper_bound, count
    return lower_bound


def events_by_type_and_outcome(metrics_text: str) -> dict[tuple[str, str], float]:
    """`streamrec_events_total` as {(type, outcome): count}."""
    counted: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "streamrec_events":
            for sample in family.samples:
                if sample.name == "streamrec_events_total":
                    counted[(sample.labels["type"], sample.labels["outcome"])] = sample.value
    return counted
