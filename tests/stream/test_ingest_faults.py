"""The worker against hostile input and failing neighbours (real broker, real Redis):
an oversize message, a broker that goes away, keys that lie about the user."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import orjson
import psutil
import pytest
import redis
from kafka import KafkaProducer

from bench.scenarios.workers import applied_count, read_topic, start_worker, wait_until
from devtools.devstack import DevStack
from streamrec.events import Event, EventType
from streamrec.settings import Settings
from streamrec.topics import ensure_topics

pytestmark = pytest.mark.integration


def good_events(count: int, start_ms: int = 1_700_000_000_000) -> list[Event]:
    return [
        Event(f"g{n}", f"user{n % 7}", f"item{n % 11}", EventType.CLICK, start_ms + n)
        for n in range(count)
    ]


def test_an_oversize_message_reaches_the_dlq_truncated_and_nothing_waits(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """About 1 MB: above the worker's producer request size, accepted by the broker."""
    settings = make_settings("oversize")
    ensure_topics(settings)
    worker = start_worker(settings, tmp_path)
    huge = b'{"event_id": "big", "pad": "' + b"x" * 1_010_000 + b'"}'
    producer = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", max_request_size=4_000_000
    )
    try:
        producer.send(settings.topic_clicks, key=b"big-user", value=huge, partition=0)
        events = good_events(40)
        for n, event in enumerate(events):
            producer.send(
                settings.topic_clicks,
                key=event.user_id.encode(),
                value=event.to_json(),
                partition=n % 2,
            )
        producer.flush()
        client = redis.Redis.from_url(settings.redis_url)
        wait_until(lambda: applied_count(client) >= len(events), 60, "every good event applied")

        (record,) = read_topic(settings, settings.topic_dlq, expected=1)
        assert record.headers["streamrec.reason"] == "too_large"
        assert record.headers["streamrec.truncated"] == str(len(huge))
        assert record.headers["streamrec.source.partition"] == "0"
        assert record.key == b"big-user"
        assert 0 < len(record.value) < 1_000_000 and huge.startswith(record.value)
    finally:
        producer.close()
        started = time.monotonic()
        worker.stop(timeout_s=30)
        stopped_s = time.monotonic() - started
    assert worker.proc is not None and worker.proc.returncode != -9, "SIGTERM did not stop it"
    assert stopped_s < 30
    assert (tmp_path / f"{settings.app_id}.log").read_text().count("Traceback") == 0


def readyz(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as refused:
        return refused.code, orjson.loads(refused.read())


def test_readyz_says_not_ready_once_the_broker_is_gone(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """A broker of this test's own, stopped under a ready worker."""
    redis_url = make_settings("broker-gone").redis_url
    broker = DevStack(tmp_path / "broker")
    status = broker.up(external_redis_url=redis_url)
    try:
        # Short bounds, as waits: not ready 2 s after the last broker answer (the
        # default is 15 s), out 10 s after SIGTERM (30 s) with the broker gone.
        settings = make_settings(
            "broker-gone",
            kafka_bootstrap=status.kafka_bootstrap,
            worker_broker_timeout_s=2.0,
            worker_shutdown_timeout_s=10.0,
        )
        ensure_topics(settings)
        worker = start_worker(settings, tmp_path)
        try:
            assert readyz(settings.worker_web_port)[0] == 200
            broker.down()
            deadline = time.monotonic() + 60
            answer = readyz(settings.worker_web_port)
            while answer[0] == 200 and time.monotonic() < deadline:
                time.sleep(0.5)
                answer = readyz(settings.worker_web_port)
            assert answer[0] == 503, f"still ready 60 s after the broker went: {answer}"
            assert answer[1]["broker"] is False
        finally:
            started = time.monotonic()
            worker.stop(timeout_s=45)
            stopped_s = time.monotonic() - started
        assert worker.proc is not None and worker.proc.returncode != -9, "SIGTERM did not stop it"
        assert stopped_s < 45
    finally:
        broker.down()


def test_the_worker_logs_no_password_and_listens_on_the_host_it_was_given(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    base = make_settings("secrets")
    admin = redis.Redis.from_url(base.redis_url)
    # A user of its own on the tests' Redis: the default user stays without a password.
    admin.acl_setuser(
        "streamrec-test", enabled=True, passwords=["+s3cret-pw"], keys=["*"],
        channels=["*"], categories=["+@all"],
    )  # fmt: skip
    url = base.redis_url.replace("redis://", "redis://streamrec-test:s3cret-pw@", 1)
    settings = base.model_copy(update={"redis_url": url})
    try:
        ensure_topics(settings)
        worker = start_worker(settings, tmp_path)
        try:
            assert worker.proc is not None
            listening = {
                c.laddr.ip
                for c in psutil.Process(worker.proc.pid).net_connections("tcp")
                if c.status == psutil.CONN_LISTEN and c.laddr.port == settings.worker_web_port
            }
            assert listening == {"127.0.0.1"}
        finally:
            worker.stop()
    finally:
        admin.acl_deluser("streamrec-test")
    log = (tmp_path / f"{settings.app_id}.log").read_text()
    assert "s3cret-pw" not in log
    assert "streamrec-test:***@" in log
