"""The catalogue batch handler against real Redis, without Faust: outages are waited out
as on the event path, a record Redis refuses reaches the DLQ alone."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import redis
from prometheus_client import CollectorRegistry

from stream.catalogue import CatalogueIngestor, ItemMessage
from stream.ingest import IngestPolicy, RawMessage
from stream.redis_waits import RedisWaits
from streamrec.catalogue import Catalogue
from streamrec.items import ItemRecord
from streamrec.metrics import IngestMetrics
from streamrec.settings import Settings
from tests.stream.test_ingest_unit import SentToDlq, own_redis  # noqa: F401 (a fixture)


def ingestor_for(settings: Settings) -> tuple[CatalogueIngestor, IngestMetrics, SentToDlq]:
    sent: SentToDlq = []

    async def send_dlq(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        sent.append((key, value, dict(headers)))

    metrics = IngestMetrics(CollectorRegistry())
    policy = IngestPolicy(retry_max_s=0.2)
    waits = RedisWaits(metrics, policy.retry_max_s)
    ingestor = CatalogueIngestor(Catalogue(settings), metrics, send_dlq, policy, waits)
    return ingestor, metrics, sent


def message(offset: int, record: ItemRecord) -> ItemMessage:
    raw = RawMessage("items", 0, offset, record.item_id.encode(), record.to_json(), None)
    return ItemMessage(raw)


async def test_redis_out_of_memory_is_waited_out_not_dead_lettered(own_redis: Settings) -> None:  # noqa: F811
    ingestor, metrics, sent = ingestor_for(own_redis)
    admin = redis.Redis.from_url(own_redis.redis_url)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", 1)
    records = [ItemRecord(f"i{n}", 1_000 + n, categories=("c",)) for n in range(150)]
    task = asyncio.create_task(
        ingestor.handle_batch([message(n, r) for n, r in enumerate(records)])
    )
    try:
        await asyncio.sleep(1.0)
        assert not task.done(), "the batch must wait while Redis takes no writes"
        assert ingestor.waits.unavailable == "oom"
        assert metrics.state_write_blocked.labels("oom")._value.get() == 1
    finally:
        admin.config_set("maxmemory", 0)
    await asyncio.wait_for(task, timeout=20)
    assert sent == []
    assert metrics.item_records.labels("applied")._value.get() == 150
    assert metrics.state_write_blocked.labels("oom")._value.get() == 0
    assert await ingestor.catalogue.items_in_category("c", 200) == [
        f"i{n}" for n in reversed(range(150))
    ]
    await ingestor.catalogue.close()


async def test_a_record_redis_refuses_goes_to_the_dlq_and_the_rest_lands(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings("catalogue-unit")
    ingestor, metrics, sent = ingestor_for(settings)
    client = redis.Redis.from_url(settings.redis_url)
    client.set("sr:c:{poisoned}:avail", "not a sorted set")  # written by hand, against the rules
    records = [
        ItemRecord("a", 1_000, categories=("fine",)),
        ItemRecord("b", 1_000, categories=("poisoned",)),
        ItemRecord("c", 1_000, categories=("fine",)),
    ]
    await ingestor.handle_batch([message(n, r) for n, r in enumerate(records)])
    assert [(key, h["streamrec.reason"], h["streamrec.source.offset"]) for key, _, h in sent] == [
        (b"b", b"state_write_failed", b"1")
    ]
    assert metrics.item_records.labels("rejected")._value.get() == 1
    # The script call stopped at b: a was in, so applied again it is a duplicate.
    applied = metrics.item_records.labels("applied")._value.get()
    assert applied + metrics.item_records.labels("duplicate")._value.get() == 2
    assert await ingestor.catalogue.items_in_category("fine", 5) == ["c", "a"]
    assert client.exists("sr:i:{b}:info") == 0
    client.flushdb()
    await ingestor.catalogue.close()
