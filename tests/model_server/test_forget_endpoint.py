"""DELETE /v1/admin/users/{user_id} and `streamrec forget` against the real broker: the
request lands on users.forget keyed by the user, with its horizon; a bad id is a
4xx (exit 1 from the command), Kafka away a 503 (exit 1, one line)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from kafka import KafkaAdminClient

from bench.scenarios.workers import read_topic
from streamrec.forget import ForgetRequest, parse_forget, user_partition
from streamrec.settings import Settings
from streamrec.topics import ensure_topics
from tests.model_server.conftest import ADMIN_TOKEN, Served, in_process

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def forget_command(settings: Settings, user_id: str) -> subprocess.CompletedProcess[str]:
    """`streamrec forget`, as an operator runs it (every setting from the environment)."""
    return subprocess.run(
        [sys.executable, "-m", "cli", "forget", user_id],
        capture_output=True,
        text=True,
        env={**os.environ, **settings.to_env()},
        timeout=60,
    )


async def test_a_forget_request_is_on_kafka_keyed_by_the_user_with_its_horizon(
    served: Served,
) -> None:
    settings = served.settings
    ensure_topics(settings)
    async with in_process(settings) as (client, _):
        answer = await client.delete("/v1/admin/users/u 021/x", headers=AUTH)
        assert answer.status_code == 202, answer.text
        body = answer.json()
        # Any characters, as in events: a line break too (no 404 for it).
        odd = await client.delete("/v1/admin/users/a%0Ab%1D", headers=AUTH)
        assert odd.status_code == 202 and odd.json()["user_id"] == "a\nb\x1d"
        unauthorized = await client.delete("/v1/admin/users/u1")
        empty = await client.delete("/v1/admin/users/", headers=AUTH)
        oversized = await client.delete(f"/v1/admin/users/{'u' * 129}", headers=AUTH)
    assert unauthorized.status_code == 401
    for refused in (empty, oversized):
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_user_id"
    assert "empty" in empty.json()["detail"] and "129" in oversized.json()["detail"]
    assert (body["user_id"], body["status"]) == ("u 021/x", "requested")
    partition = user_partition("u 021/x", settings.input_partitions)
    assert body["horizon"] == [
        {"topic": topic, "partition": partition, "offset": 0} for topic in settings.input_topics
    ]

    assert forget_command(settings, "u-cli").returncode == 0
    records = read_topic(settings, settings.topic_users_forget, expected=3)
    by_user = {}
    for record in records:
        assert record.headers == {"schema-version": "1"}
        request = parse_forget(record.key, record.value)
        assert isinstance(request, ForgetRequest)
        by_user[request.user_id] = request
    assert sorted(by_user) == ["a\nb\x1d", "u 021/x", "u-cli"]
    assert by_user["u 021/x"].requested_ms == body["requested_ms"]
    assert [h.topic for h in by_user["u-cli"].horizon] == list(settings.input_topics)


async def test_without_the_topic_the_request_is_refused_not_sent_elsewhere(
    served: Served,
) -> None:
    ensure_topics(served.settings)
    settings = served.settings.model_copy(update={"topic_users_forget": "no-such-forget"})
    async with in_process(settings) as (client, _):
        answer = await client.delete("/v1/admin/users/u1", headers=AUTH)
    assert answer.status_code == 503 and "streamrec topics" in answer.json()["detail"]
    done = forget_command(settings, "u1")
    assert done.returncode == 1 and "'no-such-forget' does not exist" in done.stderr
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        assert "no-such-forget" not in admin.list_topics()  # not auto-created by asking
    finally:
        admin.close()


async def test_without_kafka_the_endpoint_answers_503_and_the_command_exits_1(
    served: Served,
) -> None:
    settings = served.settings.model_copy(update={"kafka_bootstrap": "127.0.0.1:1"})
    started = time.monotonic()
    async with in_process(settings) as (client, _):
        answer = await client.delete("/v1/admin/users/u1", headers=AUTH)
    assert time.monotonic() - started < 30
    assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
    assert answer.json()["error"] == "kafka_unavailable"
    assert "127.0.0.1:1" in answer.json()["detail"] and "not recorded" in answer.json()["detail"]

    for user_id, expected in (("u1", "127.0.0.1:1"), ("", "empty"), ("u" * 129, "129")):
        done = forget_command(settings, user_id)
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
        assert expected in done.stderr
