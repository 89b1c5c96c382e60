"""Fault drills on ingestion (drills 1-3) as plain functions that return their figures:
the tests assert on them, `streamrec bench drills` writes them to bench/reports/.

1. SIGKILL the worker three times during a 20k-event replay.
2. Restart Redis (with its append-only file) in the middle of a replay.
3. A poison flood: 10k bad messages at full speed into a steady stream of 5k good ones.
7. Redis full (`maxmemory` reached, `noeviction`) in the middle of a replay, then
   its memory raised (drills 4-6 are the serving ones and the soak).
8. A second worker joins a replay over 4 partitions and later leaves it.
"""

from __future__ import annotations

import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from bench.scenarios.workers import (
    applied_count,
    bad_message,
    paced_producer,
    produce_raw,
    read_topic,
    start_worker,
    state_client,
    taobao_events,
    wait_counted,
    wait_until,
)
from devtools.devstack import free_port, wait_for_port
from devtools.processes import ServiceProcess
from devtools.scrape import events_by_type_and_outcome, gauge_samples
from streamrec.events import Event, RejectReason
from streamrec.producer import topic_for
from streamrec.settings import Settings
from streamrec.topics import ensure_topics

Message = tuple[str, bytes | None, bytes]


def lost_and_duplicated(settings: Settings, events: list[Event]) -> tuple[int, int]:
    """Events missing from, and applied more than once to, the per-user counts in Redis."""
    wanted: Counter[tuple[str, str]] = Counter()
    for event in {e.event_id: e for e in events}.values():
        wanted[(event.user_id, event.type.value)] += 1
    client = state_client(settings)
    users = sorted({user for user, _ in wanted})
    pipe = client.pipeline(transaction=False)
    for user in users:
        pipe.hgetall(f"sr:u:{{{user}}}:meta")
    got: Counter[tuple[str, str]] = Counter()
    for user, meta in zip(users, pipe.execute(), strict=True):
        for key, value in meta.items():
            if key.startswith(b"n:"):
                got[(user, key.decode()[2:])] = int(value)
    lost = sum(max(0, n - got[key]) for key, n in wanted.items())
    duplicated = sum(max(0, n - wanted[key]) for key, n in got.items())
    return lost, duplicated


def dlq_count(settings: Settings) -> int:
    return len(read_topic(settings, settings.topic_dlq, expected=0, timeout_s=1))


def messages_for(events: list[Event], settings: Settings) -> list[Message]:
    return [(topic_for(e.type, settings), e.user_id.encode(), e.to_json()) for e in events]


def _applied_at_least(client: redis.Redis, count: int) -> Callable[[], bool]:
    return lambda: applied_count(client) >= count


def _counted(worker: ServiceProcess) -> float:
    return sum(events_by_type_and_outcome(worker.metrics_text()).values())


def _counted_any(worker: ServiceProcess) -> Callable[[], bool]:
    return lambda: _counted(worker) > 0


@dataclass
class IngestDrill:
    """What every ingestion drill reports; `recovery_s` per fault, from the fault to
    state moving again."""

    events: int
    lost: int = 0
    duplicated: int = 0
    dlq: int = 0
    recovery_s: list[float] = field(default_factory=list)


def kill_drill(settings: Settings, workdir: Path) -> IngestDrill:
    """Drill 1: a paced 20k-event replay; the worker is SIGKILLed after 4k, 9k and 14k
    events are applied, and a new one started each time.

    The replay goes in four segments (to 6k, 11k, 16k, 20k); each next one starts right
    after a kill, while no worker runs, as a live stream keeps coming during an outage.
    So every new worker has events no one has applied yet, however fast the last one
    was, and its first one times the recovery."""
    ensure_topics(settings)
    events = taobao_events(10_000, 20_000)
    messages = messages_for(events, settings)
    client = redis.Redis.from_url(settings.redis_url)
    drill = IngestDrill(len(events))
    producers: list[threading.Thread] = []
    worker: ServiceProcess | None = None
    killed_at: float | None = None
    segments = ((0, 6_000, 4_000), (6_000, 11_000, 9_000), (11_000, 16_000, 14_000))
    try:
        for start, end, kill_at in (*segments, (16_000, len(events), None)):
            producers.append(paced_producer(settings, messages[start:end]))
            worker = start_worker(settings, workdir)
            if killed_at is not None:
                wait_until(_counted_any(worker), 120, "the new worker's first event")
                drill.recovery_s.append(round(time.monotonic() - killed_at, 2))
            if kill_at is None:
                break
            wait_until(_applied_at_least(client, kill_at), 120, f"{kill_at} events applied")
            worker.kill()
            killed_at = time.monotonic()
        wait_until(lambda: applied_count(client) >= len(events), 180, "every event applied")
        time.sleep(1.0)  # anything applied twice would show up now
    finally:
        for producer in producers:
            producer.join()
        if worker is not None:
            worker.stop()
    drill.lost, drill.duplicated = lost_and_duplicated(settings, events)
    drill.dlq = dlq_count(settings)
    return drill


@dataclass
class RedisOutageDrill(IngestDrill):
    outage_s: float = 0.0
    write_retries: float = 0.0


@dataclass
class RedisRestartDrill(RedisOutageDrill):
    pass


def _after_the_outage(
    drill: RedisOutageDrill,
    settings: Settings,
    worker: ServiceProcess,
    producer: threading.Thread,
    events: list[Event],
    applied_then: int,
    fault_at: float,
    check_state: Callable[[Settings, list[Event]], None] | None,
) -> None:
    """Once Redis takes writes again: the recovery time, then, with every event of the
    replay (`events`, sent by `producer`) applied, what was lost or doubled and the
    worker's write retries."""
    client = redis.Redis.from_url(settings.redis_url)

    def moved() -> bool:
        # Or done: on a loaded machine the worker's retries can apply every event
        # before `applied_then` is read, and then the state never moves again.
        applied = applied_count(client)
        return applied > applied_then or applied >= len(events)

    wait_until(moved, 60, "state to move again")
    drill.recovery_s.append(round(time.monotonic() - fault_at, 2))
    producer.join()
    wait_until(lambda: applied_count(client) >= len(events), 120, "every event applied")
    time.sleep(1.0)  # anything applied twice would show up now
    drill.lost, drill.duplicated = lost_and_duplicated(settings, events)
    if check_state is not None:
        check_state(settings, events)
    drill.write_retries = sum(
        float(line.split()[1])
        for line in worker.metrics_text().splitlines()
        if line.startswith("streamrec_state_write_retries_total ")
    )


def redis_restart_drill(
    settings: Settings,
    workdir: Path,
    check_state: Callable[[Settings, list[Event]], None] | None = None,
) -> RedisRestartDrill:
    """Drill 2: the worker writes to a Redis of its own (append-only file, fsync always),
    which is shut down cleanly after 2k of 8k events and started again 2 s later.
    `check_state(settings, events)` runs while that Redis still exists."""
    port = free_port()
    data_dir = workdir / "redis"
    data_dir.mkdir()
    argv = [
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
        "--appendonly", "yes", "--appendfsync", "always", "--save", "",
    ]  # fmt: skip

    def start_redis() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        wait_for_port(port)
        probe = redis.Redis(port=port)
        wait_until(lambda: _pings(probe), 30, "Redis to load its append-only file")
        return proc

    redis_proc = start_redis()
    settings = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0"})
    ensure_topics(settings)
    events = taobao_events(30_000, 8_000)
    drill = RedisRestartDrill(len(events))
    client = redis.Redis.from_url(settings.redis_url)
    worker: ServiceProcess | None = None
    try:
        worker = start_worker(settings, workdir)
        producer = paced_producer(settings, messages_for(events, settings))
        wait_until(lambda: applied_count(client) >= 2_000, 60, "2,000 events applied")
        client.shutdown(nosave=False)  # a clean restart: the append-only file keeps every write
        redis_proc.wait()
        down_at = time.monotonic()
        time.sleep(2.0)  # the worker meets a dead Redis and retries meanwhile
        redis_proc = start_redis()
        drill.outage_s = round(time.monotonic() - down_at, 2)
        applied_then = applied_count(client)
        _after_the_outage(
            drill, settings, worker, producer, events, applied_then, down_at, check_state
        )
    finally:
        if worker is not None:
            worker.stop()
        redis_proc.terminate()
        redis_proc.wait()
    drill.dlq = dlq_count(settings)
    return drill


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.exceptions.BusyLoadingError:
        return False


@dataclass
class PoisonDrill(IngestDrill):
    bad: int = 0
    rejected: float = 0.0
    dlq_reasons: dict[str, int] = field(default_factory=dict)
    expected_reasons: dict[str, int] = field(default_factory=dict)
    offered_rate: float = 0.0  # good events/s sent
    good_rate_during_flood: float = 0.0  # good events/s applied
    normal_rate: float | None = None  # the same, with no poison, when measured
    flood_seconds: float = 0.0  # from the first bad message sent until all are counted


def poison_drill(
    settings: Settings,
    workdir: Path,
    good: int = 5_000,
    rate: float = 500.0,
    measure_normal: bool = False,
    kinds: Sequence[RejectReason] = tuple(RejectReason),
) -> PoisonDrill:
    """Drill 3: good events arrive as a live stream at `rate` events/s; once a fifth of
    them are sent, 10k bad messages (every kind of rejection in turn; two per good event
    by default) are loaded at full speed. With `measure_normal`, the same number of
    other good events alone first, at the same rate, on the same worker. Rates are timed
    between 5% and 95% of the good events applied (the worker's own counter), as `bench
    ingest` times its runs."""
    ensure_topics(settings)
    drill = PoisonDrill(good, offered_rate=rate)
    normal: list[Event] = []
    events = taobao_events(50_000, good)
    poison = [
        (settings.input_topics[n % 2], f"p{n}".encode(), bad_message(kinds[n % len(kinds)], n))
        for n in range(2 * good)
    ]
    worker = start_worker(settings, workdir)
    try:
        if measure_normal:
            normal = taobao_events(50_000 + good, good)
            producer = paced_producer(settings, messages_for(normal, settings), 100, rate)
            drill.normal_rate = _good_rate(worker, good)
            producer.join()
        producer = paced_producer(settings, messages_for(events, settings), 100, rate)
        flood = threading.Thread(target=_flood, args=(settings, poison, good / rate / 5))
        flood.start()
        flood_at = time.monotonic() + good / rate / 5
        drill.good_rate_during_flood = _good_rate(worker, good, already=len(normal))
        producer.join()
        flood.join()
        counted = wait_counted(worker, total=len(normal) + good + len(poison), timeout_s=240)
        drill.flood_seconds = round(time.monotonic() - flood_at, 1)
        drill.rejected = counted.get(("invalid", "rejected"), 0.0)
    finally:
        worker.stop()
    drill.bad = len(poison)
    drill.lost, drill.duplicated = lost_and_duplicated(settings, normal + events)
    dlq = read_topic(settings, settings.topic_dlq, expected=len(poison), timeout_s=60)
    drill.dlq = len(dlq)
    drill.dlq_reasons = dict(Counter(r.headers["streamrec.reason"] for r in dlq))
    drill.expected_reasons = dict(Counter(kinds[n % len(kinds)].value for n in range(len(poison))))
    return drill


def _flood(settings: Settings, poison: list[Message], after_s: float) -> None:
    time.sleep(after_s)
    produce_raw(settings, poison)


def _good_rate(
    worker: ServiceProcess, good: int, already: int = 0, timeout_s: float = 240
) -> float:
    """Good events/s as the worker applies `good` more of them (it had accepted `already`),
    between 5% and 95%."""
    low, high = already + 0.05 * good, already + 0.95 * good
    marks: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    while "high" not in marks:
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {high:.0f} good events applied in {timeout_s} s")
        counted = events_by_type_and_outcome(worker.metrics_text())
        accepted = sum(n for (kind, outcome), n in counted.items() if outcome == "accepted")
        now = time.monotonic()
        if accepted >= low:
            marks.setdefault("low", now)
        if accepted >= high:
            marks["high"] = now
        time.sleep(0.1)  # each scrape costs the worker CPU
    return round(0.9 * good / max(marks["high"] - marks["low"], 0.02), 1)


@dataclass
class RedisFullDrill(RedisOutageDrill):
    applied_during_outage: int = 0  # events written while Redis was full: 0
    blocked_reason: str = ""  # what streamrec_state_write_blocked said during the outage
    ready_status_during: int = 0  # the worker's /readyz status during the outage


def redis_full_drill(
    settings: Settings,
    workdir: Path,
    check_state: Callable[[Settings, list[Event]], None] | None = None,
    outage_s: float = 4.0,
) -> RedisFullDrill:
    """Drill 7: a paced 6k-event replay; after 1.5k events are applied, the Redis the
    worker writes to is set to `noeviction` with `maxmemory` below the memory it uses
    (CONFIG SET), so every write is refused with OOM; `outage_s` later its memory is
    raised again. Both settings are restored whatever happens."""
    ensure_topics(settings)
    events = taobao_events(70_000, 6_000)
    drill = RedisFullDrill(len(events))
    client = redis.Redis.from_url(settings.redis_url)
    saved = {name: str(client.config_get(name)[name]) for name in ("maxmemory", "maxmemory-policy")}
    worker = start_worker(settings, workdir)
    producer: threading.Thread | None = None
    try:
        producer = paced_producer(settings, messages_for(events, settings))
        wait_until(_applied_at_least(client, 1_500), 60, "1,500 events applied")
        client.config_set("maxmemory-policy", "noeviction")
        # Below the memory in use, not at it: used memory moves (client buffers), and at
        # the limit some writes would still fit between refusals.
        client.config_set("maxmemory", client.info("memory")["used_memory"] // 2)
        full_at = time.monotonic()
        time.sleep(1.0)  # a write in flight at the moment may still land
        applied_then = applied_count(client)
        wait_until(lambda: _blocked_reason(worker) != "", 30, "the worker to report the outage")
        drill.blocked_reason = _blocked_reason(worker)
        drill.ready_status_during = _ready_status(settings.worker_web_port)
        time.sleep(max(0.0, outage_s - (time.monotonic() - full_at)))
        drill.applied_during_outage = applied_count(client) - applied_then
        client.config_set("maxmemory", saved["maxmemory"])
        drill.outage_s = round(time.monotonic() - full_at, 2)
        _after_the_outage(
            drill, settings, worker, producer, events, applied_then, full_at, check_state
        )
    finally:
        for name, value in saved.items():
            client.config_set(name, value)
        if producer is not None:
            producer.join()
        worker.stop()
    drill.dlq = dlq_count(settings)
    return drill


def _blocked_reason(worker: ServiceProcess) -> str:
    """The reason the worker's writes wait for, from its /metrics ("" for none)."""
    for line in worker.metrics_text().splitlines():
        if line.startswith("streamrec_state_write_blocked{") and line.endswith(" 1.0"):
            return line.split('reason="', 1)[1].split('"', 1)[0]
    return ""


def _ready_status(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as refused:
        return int(refused.code)


LAG_GAUGE = "streamrec_consumer_lag_messages"


@dataclass
class RebalanceDrill(IngestDrill):
    # Partitions (topic, number) each worker reported lag for, read once both
    # workers held partitions; then the first worker's alone after the second left.
    shared_first: set[tuple[str, str]] = field(default_factory=set)
    shared_second: set[tuple[str, str]] = field(default_factory=set)
    alone_lag: dict[tuple[str, str], float] = field(default_factory=dict)
    partitions: set[tuple[str, str]] = field(default_factory=set)


def lag_by_partition(worker: ServiceProcess, topics: Sequence[str]) -> dict[tuple[str, str], float]:
    """The worker's consumer lag gauges of `topics`, by (topic, partition)."""
    return {
        (labels["topic"], labels["partition"]): value
        for labels, value in gauge_samples(worker.metrics_text(), LAG_GAUGE)
        if labels["topic"] in topics
    }


def rebalance_drill(settings: Settings, workdir: Path) -> RebalanceDrill:
    """Drill 8: a paced 12k-event replay over `settings.input_partitions` partitions per
    topic; a second worker of the same group joins once 2k are applied and leaves
    (SIGTERM) once 7k are. Each worker must report lag only for the partitions it
    holds (none left over from before a rebalance), and the first, alone again,
    for every partition, back to 0."""
    ensure_topics(settings)
    events = taobao_events(40_000, 12_000)
    messages = messages_for(events, settings)
    topics = settings.input_topics
    partitions = {(t, str(p)) for t in topics for p in range(settings.input_partitions)}
    client = redis.Redis.from_url(settings.redis_url)
    drill = RebalanceDrill(len(events), partitions=partitions)
    second_settings = settings.model_copy(update={"worker_web_port": free_port()})
    producer = paced_producer(settings, messages, rate=1_000)
    first = start_worker(settings, workdir)
    second: ServiceProcess | None = None
    try:
        wait_until(_applied_at_least(client, 2_000), 120, "2k events applied")
        (workdir / "second").mkdir(exist_ok=True)
        second = start_worker(second_settings, workdir / "second")

        def split() -> bool:
            a, b = lag_by_partition(first, topics), lag_by_partition(second, topics)
            drill.shared_first, drill.shared_second = set(a), set(b)
            return bool(a) and bool(b) and set(a) | set(b) == partitions

        wait_until(split, 120, "both workers holding partitions")
        wait_until(_applied_at_least(client, 7_000), 120, "7k events applied")
        second.stop()
        producer.join()
        wait_until(lambda: applied_count(client) >= len(events), 180, "every event applied")

        def caught_up() -> bool:
            drill.alone_lag = lag_by_partition(first, topics)
            return set(drill.alone_lag) == partitions and not any(drill.alone_lag.values())

        wait_until(caught_up, 60, "the first worker's lag back to 0 on every partition")
        time.sleep(1.0)  # anything applied twice would show up now
    finally:
        producer.join()
        if second is not None:
            second.stop()
        first.stop()
    drill.lost, drill.duplicated = lost_and_duplicated(settings, events)
    drill.dlq = dlq_count(settings)
    return drill
