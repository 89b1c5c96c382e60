"""Fault drills on ingestion (real broker, real Redis): nothing lost, nothing doubled.

1. SIGKILL the worker three times during a 20k-event replay.
2. Restart Redis (with its append-only file) in the middle of a replay.
3. A poison flood: 10k bad messages at full speed among 5k good ones.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from streamrec.devstack import free_port, wait_for_port
from streamrec.events import RejectReason
from streamrec.producer import topic_for
from streamrec.settings import Settings
from streamrec.topics import ensure_topics
from tests.pipeline import (
    assert_archive_is_exact,
    assert_state_is_exact,
    bad_message,
    produce_raw,
    read_topic,
    start_worker,
    taobao_events,
    wait_counted,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def applied_count(client: redis.Redis) -> int:
    total = 0
    for key in client.scan_iter("sr:u:*:meta", count=1000):
        total += sum(int(v) for k, v in client.hgetall(key).items() if k.startswith(b"n:"))
    return total


def paced_producer(
    settings: Settings, messages: list[tuple[str, bytes | None, bytes]]
) -> threading.Thread:
    def run() -> None:
        for start in range(0, len(messages), 500):
            produce_raw(settings, messages[start : start + 500])
            time.sleep(0.1)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.exceptions.BusyLoadingError:
        return False


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_three_sigkills_during_a_20k_replay(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings("drill-kill", commit_interval_s=2.0, batch_max_events=200)
    ensure_topics(settings)
    events = taobao_events(10_000, 20_000)
    messages = [(topic_for(e.type, settings), e.user_id.encode(), e.to_json()) for e in events]
    client = redis.Redis.from_url(settings.redis_url)
    producer = paced_producer(settings, messages)
    try:
        for kill_at in (4_000, 9_000, 14_000):
            worker = start_worker(settings, tmp_path)
            wait_until(
                lambda k=kill_at: applied_count(client) >= k, 120, f"{kill_at} events applied"
            )
            worker.kill()
    finally:
        producer.join()
    worker = start_worker(settings, tmp_path)
    try:
        wait_until(lambda: applied_count(client) >= len(events), 180, "every event applied")
        time.sleep(1.0)
        assert_state_is_exact(settings, events)
        assert_archive_is_exact(settings, events)
    finally:
        worker.stop()


def test_a_redis_restart_mid_replay_loses_nothing(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    port = free_port()
    data_dir = tmp_path / "redis"
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
    settings = make_settings("drill-redis", redis_url=f"redis://127.0.0.1:{port}/0")
    ensure_topics(settings)
    events = taobao_events(30_000, 8_000)
    messages = [(topic_for(e.type, settings), e.user_id.encode(), e.to_json()) for e in events]
    client = redis.Redis.from_url(settings.redis_url)
    worker = start_worker(settings, tmp_path)
    try:
        producer = paced_producer(settings, messages)
        wait_until(lambda: applied_count(client) >= 2_000, 60, "2,000 events applied")
        client.shutdown(nosave=False)  # a clean restart: the append-only file keeps every write
        redis_proc.wait()
        time.sleep(2.0)  # the worker meets a dead Redis and retries meanwhile
        redis_proc = start_redis()
        producer.join()
        wait_until(lambda: applied_count(client) >= len(events), 120, "every event applied")
        time.sleep(1.0)
        assert_state_is_exact(settings, events)
        retries = [
            line for line in worker.metrics_text().splitlines()
            if line.startswith("streamrec_state_write_retries_total ")
        ]  # fmt: skip
        assert retries and float(retries[0].split()[1]) >= 1, "the outage was never noticed"
    finally:
        worker.stop()
        redis_proc.terminate()
        redis_proc.wait()


def test_a_poison_flood_lands_whole_in_the_dlq_while_good_events_flow(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings("drill-poison")
    ensure_topics(settings)
    events = taobao_events(50_000, 5_000)
    good = [(topic_for(e.type, settings), e.user_id.encode(), e.to_json()) for e in events]
    kinds = list(RejectReason)
    poison = [
        (settings.input_topics[n % 2], f"p{n}".encode(), bad_message(kinds[n % len(kinds)], n))
        for n in range(10_000)
    ]
    # Two bad messages after every good one, at full speed.
    mixed: list[tuple[str, bytes | None, bytes]] = []
    for n, message in enumerate(good):
        mixed += [message, *poison[2 * n : 2 * n + 2]]
    worker = start_worker(settings, tmp_path)
    try:
        produce_raw(settings, mixed)
        counted = wait_counted(worker, total=len(mixed), timeout_s=240)
        assert counted[("invalid", "rejected")] == len(poison)
        assert_state_is_exact(settings, events)
    finally:
        worker.stop()
    dlq = read_topic(settings, settings.topic_dlq, expected=len(poison), timeout_s=60)
    assert len(dlq) == len(poison)
    reasons = Counter(r.headers["streamrec.reason"] for r in dlq)
    assert reasons == Counter(kinds[n % len(kinds)].value for n in range(len(poison)))
