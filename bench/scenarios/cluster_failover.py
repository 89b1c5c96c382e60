"""Drill 9 as a plain function that returns its figures: a Redis Cluster of 3 primaries
with a replica each; during a replay through the worker, with `streamrec serve`
under closed-loop load on the same cluster, one primary is SIGKILLed. Its replica
takes over; the state must come out exact (every event applied once, as the same
replay leaves a single Redis) and the server's 503s must keep to the failover."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis
from redis.exceptions import RedisClusterException

from bench.scenarios.ingest import lost_and_duplicated, messages_for
from bench.scenarios.models import publish
from bench.scenarios.redis_freeze import ClosedLoad, Reply
from bench.scenarios.workers import (
    StateClient,
    applied_count,
    paced_producer,
    state_client,
    taobao_events,
    wait_until,
)
from devtools.processes import ServiceProcess
from devtools.redis_cluster import LocalRedisCluster
from retrain.training import TrainedModels
from streamrec.events import Event
from streamrec.settings import Settings
from streamrec.state import StateStore
from streamrec.topics import ensure_topics

REPLAY_START, REPLAY_EVENTS = 40_000, 8_000
KILL_AFTER_EVENTS = 2_500
REPLAY_RATE = 800.0  # events/s: the replay is still going when the primary dies


@dataclass
class ClusterFailoverDrill:
    events: int
    killed_port: int = 0
    applied_at_kill: int = 0
    promoted_s: float = 0.0  # from the kill to every slot served by a live primary
    state_moved_s: float = 0.0  # from the kill to the worker applying events again
    lost: int = 0
    duplicated: int = 0
    # Users whose state differs from the same replay applied to a single Redis, and
    # items whose popularity does.
    users_differing: int = 0
    items_differing: int = 0
    write_retries: float = 0.0
    killed_at_s: float = 0.0  # on the load's clock
    answers: list[Reply] = field(default_factory=list)

    def unavailable(self) -> list[Reply]:
        return [a for a in self.answers if a.status == 503]

    def during_failover(self) -> list[Reply]:
        """The answers to requests sent from the kill until the replica took over."""
        until_s = self.killed_at_s + self.promoted_s
        return [a for a in self.answers if self.killed_at_s <= a.sent_s < until_s]

    def figures(self) -> dict[str, Any]:
        refused = self.unavailable()
        failover = self.during_failover()
        after = [a.sent_s - self.killed_at_s for a in refused]
        return {
            "events": self.events,
            "applied_at_kill": self.applied_at_kill,
            "promoted_s": self.promoted_s,
            "state_moved_s": self.state_moved_s,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "users_differing": self.users_differing,
            "items_differing": self.items_differing,
            "write_retries": self.write_retries,
            "answers": len(self.answers),
            "by_status": dict(Counter(f"{a.status} {a.kind}" for a in self.answers)),
            "503s": len(refused),
            "503_window_s": [round(min(after), 2), round(max(after), 2)] if after else None,
            # 503s by the second they were sent in, counted from the kill.
            "503_by_second": dict(sorted(Counter(int(s // 1) for s in after).items())),
            "p99_ms": round(float(np.percentile([a.latency_s for a in self.answers], 99)) * 1000)
            if self.answers
            else None,
            "failover_answers": len(failover),
            "failover_by_status": dict(Counter(f"{a.status} {a.kind}" for a in failover)),
            "failover_max_ms": round(max(a.latency_s for a in failover) * 1000)
            if failover
            else None,
        }


def cluster_failover_drill(
    settings: Settings, models: TrainedModels, workdir: Path, concurrency: int = 2
) -> ClusterFailoverDrill:
    """`settings`: the pipeline's own topics, an empty registry, a serve port, and in
    `redis_url` a single Redis database the same replay is applied to, to compare."""
    cluster = LocalRedisCluster(workdir / "cluster", primaries=3, replicas=1).start()
    try:
        standalone = settings
        settings = settings.model_copy(update={"redis_url": cluster.url})
        return _run(cluster, settings, standalone, models, workdir, concurrency)
    finally:
        cluster.stop()


def _run(
    cluster: LocalRedisCluster,
    settings: Settings,
    standalone: Settings,
    models: TrainedModels,
    workdir: Path,
    concurrency: int,
) -> ClusterFailoverDrill:
    ensure_topics(settings)
    publish(models, settings.registry)
    events = taobao_events(REPLAY_START, REPLAY_EVENTS)
    drill = ClusterFailoverDrill(len(events))
    client = state_client(settings)
    users = list(dict.fromkeys(e.user_id for e in events))[:200]
    items = list(models.vocab.item_ids)
    url = f"http://127.0.0.1:{settings.serve_port}"
    with (
        ServiceProcess(settings, ["serve"], workdir / "drill9-serve.log", settings.serve_port),
        ServiceProcess(
            settings, ["worker"], workdir / "drill9-worker.log", settings.worker_web_port
        ) as worker,
        ClosedLoad(url, users, items, concurrency) as load,
    ):
        producer = paced_producer(settings, messages_for(events, settings), rate=REPLAY_RATE)
        try:
            wait_until(lambda: applied_count(client) >= KILL_AFTER_EVENTS, 120, "events applied")
            drill.killed_port = cluster.primary_ports()[0]
            applied_then = drill.applied_at_kill = applied_count(client)
            killed_at = time.monotonic()
            drill.killed_at_s = load.now_s()
            cluster.kill(drill.killed_port)
            wait_until(lambda: _promoted(cluster), 60, "a replica to take over")
            drill.promoted_s = round(time.monotonic() - killed_at, 2)
            wait_until(
                lambda: _applied(client) > applied_then, 60, "the worker to apply events again"
            )
            drill.state_moved_s = round(time.monotonic() - killed_at, 2)
        finally:
            producer.join()
        wait_until(lambda: _applied(client) >= len(events), 180, "every event applied")
        time.sleep(2.0)  # anything applied twice would show up now; the load goes on
        drill.write_retries = sum(
            float(line.split()[1])
            for line in worker.metrics_text().splitlines()
            if line.startswith("streamrec_state_write_retries_total ")
        )
    drill.answers = load.answers
    # The checks' clients start from a node that is alive (the URL's may be the dead one).
    settings = settings.model_copy(update={"redis_url": cluster.url})
    drill.lost, drill.duplicated = lost_and_duplicated(settings, events)
    drill.users_differing, drill.items_differing = asyncio.run(
        _differences(settings, standalone, events, settings.batch_max_events)
    )
    return drill


def _promoted(cluster: LocalRedisCluster) -> bool:
    """Every slot served again: as many live primaries as the cluster was made with,
    and every live node says the cluster is ok."""
    return len(cluster.primary_ports()) >= cluster.primaries and cluster.healthy()


def _applied(client: StateClient) -> int:
    """`applied_count`, or -1 while the scan meets a node that does not answer (the
    client learns the new primary from the next call)."""
    try:
        return applied_count(client)
    except (redis.RedisError, RedisClusterException, OSError):
        return -1


async def _differences(
    cluster: Settings, standalone: Settings, events: list[Event], batch: int
) -> tuple[int, int]:
    """The replay applied again to a single Redis, in batches as a worker would; the
    users and the items whose state differs between it and the cluster."""
    single, on_cluster = StateStore(standalone), StateStore(cluster)
    try:
        for start in range(0, len(events), batch):
            await single.apply_events(events[start : start + batch])
        user_ids = sorted({e.user_id for e in events})
        item_ids = sorted({e.item_id for e in events})
        users_differing = 0
        for start in range(0, len(user_ids), 500):
            chunk = user_ids[start : start + 500]
            mine = await on_cluster.read_users(chunk)
            theirs = await single.read_users(chunk)
            users_differing += sum(
                a.to_json_dict() != b.to_json_dict() for a, b in zip(mine, theirs, strict=True)
            )
        left = await on_cluster.read_stored_popularity(item_ids)
        right = await single.read_stored_popularity(item_ids)
        same = np.isclose(left, right, rtol=1e-9, atol=1e-12).all(axis=(1, 2))
        return users_differing, int((~same).sum())
    finally:
        await single.redis.flushdb()
        await single.close()
        await on_cluster.close()
