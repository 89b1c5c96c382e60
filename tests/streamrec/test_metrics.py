"""Counters an alert watches for its first increase are exported at 0 from the start
(deploy/prometheus/rules.yml: `increase(...) > 0` never sees a series born at 1)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from streamrec.metrics import IngestMetrics, ServeMetrics


def test_swap_and_retrain_outcomes_are_exported_at_zero() -> None:
    serve, worker = CollectorRegistry(), CollectorRegistry()
    ServeMetrics(serve)
    IngestMetrics(worker)
    served = generate_latest(serve).decode()
    worked = generate_latest(worker).decode()
    assert 'streamrec_model_swaps_total{outcome="refused"} 0.0' in served
    assert 'streamrec_worker_model_swaps_total{outcome="refused"} 0.0' in worked
    for outcome in ("published", "rejected", "skipped", "failed"):
        assert f'streamrec_retrain_total{{outcome="{outcome}"}} 0.0' in worked
