"""Fault drills on ingestion (real broker, real Redis): nothing lost, nothing doubled.
The drills themselves are in `bench/scenarios/ingest.py`; here they must come out exact."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from bench.scenarios.ingest import (
    IngestDrill,
    kill_drill,
    poison_drill,
    rebalance_drill,
    redis_full_drill,
    redis_restart_drill,
)
from bench.scenarios.workers import assert_archive_is_exact, assert_state_is_exact, taobao_events
from streamrec.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def assert_nothing_lost(drill: IngestDrill, faults: int) -> None:
    assert (drill.lost, drill.duplicated) == (0, 0)
    assert len(drill.recovery_s) == faults


def test_three_sigkills_during_a_20k_replay(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings("drill-kill", commit_interval_s=2.0, batch_max_events=200)
    drill = kill_drill(settings, tmp_path)

    assert_nothing_lost(drill, faults=3)
    assert drill.dlq == 0
    events = taobao_events(10_000, 20_000)
    assert_state_is_exact(settings, events)
    assert_archive_is_exact(settings, events)


def test_a_redis_restart_mid_replay_loses_nothing(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    drill = redis_restart_drill(make_settings("drill-redis"), tmp_path, assert_state_is_exact)

    assert_nothing_lost(drill, faults=1)
    assert drill.dlq == 0
    assert drill.write_retries >= 1, "the outage was never noticed"


def test_a_poison_flood_lands_whole_in_the_dlq_while_good_events_flow(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    # The bench's drill with 2k good events and 4k bad (two per good one, every kind
    # of rejection in turn), not 5k and 10k: the same flood, in a third of the time.
    settings = make_settings("drill-poison")
    drill = poison_drill(settings, tmp_path, good=2_000)

    assert_nothing_lost(drill, faults=0)
    assert drill.rejected == drill.bad == drill.dlq == 4_000
    assert drill.dlq_reasons == drill.expected_reasons
    assert_state_is_exact(settings, taobao_events(50_000, 2_000))


def test_a_full_redis_mid_replay_is_an_outage_waited_out_not_a_dlq_flood(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings("drill-oom")
    drill = redis_full_drill(settings, tmp_path, assert_state_is_exact)

    assert_nothing_lost(drill, faults=1)
    assert drill.dlq == 0, "a full Redis is no reason to dead-letter an event"
    assert drill.blocked_reason == "oom"
    assert drill.ready_status_during == 503
    assert drill.applied_during_outage == 0
    assert drill.write_retries >= 1


def test_a_worker_joining_and_leaving_a_replay_over_4_partitions_leaves_exact_state_and_true_lag(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings("drill-rebalance", input_partitions=4, commit_interval_s=1.0)
    drill = rebalance_drill(settings, tmp_path)

    assert_nothing_lost(drill, faults=0)
    assert drill.dlq == 0
    # While both ran, each reported only what it held: no gauge of a revoked partition.
    assert drill.shared_first and drill.shared_second
    assert not drill.shared_first & drill.shared_second
    assert drill.shared_first | drill.shared_second == drill.partitions
    # Alone again: every partition, every lag 0.
    assert set(drill.alone_lag) == drill.partitions
    assert not any(drill.alone_lag.values())
    assert_state_is_exact(settings, taobao_events(40_000, 12_000))
