"""The recommendations publisher: state-change notices in, each changed user's
fresh top-K out on `recommendations`, rate-limited per user.

It ranks with the model server's own `Recommender` and follows the registry
like a server does, so the topic and `/recommend` give the same answer.
Offsets are committed after the records are acknowledged by the broker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from model_server.pipeline import Recommendation, Recommender
from streamrec.kafka_client import kafka_python_options
from streamrec.loaded import ModelHolder
from streamrec.metrics import PublishMetrics, ServeMetrics
from streamrec.notices import StateChanges
from streamrec.settings import Settings
from streamrec.state import StateStore

log = logging.getLogger(__name__)


def recommendation_record(user_id: str, answer: Recommendation, now_ms: int) -> bytes:
    """What downstream consumers read: the /recommend answer plus when it was made."""
    return orjson.dumps(
        {
            "user_id": user_id,
            "items": [{"item_id": i.item_id, "score": i.score} for i in answer.items],
            "model_version": answer.model_version,
            "fallback": answer.fallback,
            "ts": now_ms,
        }
    )


class Publisher:
    def __init__(self, settings: Settings, registry: CollectorRegistry = REGISTRY) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = PublishMetrics(registry)
        serve_metrics = ServeMetrics(registry)
        self.store = StateStore(settings)
        self.models = ModelHolder(settings.registry, serve_metrics)
        self.recommender = Recommender(settings, self.store, serve_metrics)
        self.ready = False

    async def run(self) -> None:
        s = self.settings
        await self.store.ping()
        await self.models.load()
        kafka = kafka_python_options(s)  # aiokafka takes the same option names
        consumer = AIOKafkaConsumer(
            s.topic_state_changes,
            **kafka,
            group_id=f"{s.app_id}-publisher",
            enable_auto_commit=False,
            auto_offset_reset="latest",
            fetch_max_wait_ms=s.consumer_fetch_max_wait_ms,
        )
        producer = AIOKafkaProducer(**kafka, acks="all", linger_ms=5)
        watcher = asyncio.create_task(self.models.watch(s.registry_poll_s))
        web_runner = await self._serve_web()
        await consumer.start()
        await producer.start()
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=100, max_records=500)
                self.ready = bool(consumer.assignment())
                notices = [
                    StateChanges.from_json(record.value)
                    for records in batches.values()
                    for record in records
                    if record.value is not None
                ]
                if notices:
                    await self.publish(producer, notices)
                    await consumer.commit()
        finally:
            watcher.cancel()
            await consumer.stop()
            await producer.stop()
            await web_runner.cleanup()
            await self.store.close()

    async def publish(self, producer: AIOKafkaProducer, notices: list[StateChanges]) -> None:
        applied_at: dict[str, int] = {}
        for notice in notices:
            for user_id in notice.last_ts_ms:
                applied_at[user_id] = max(applied_at.get(user_id, 0), notice.applied_at_ms)
        users = list(applied_at)
        granted = await self.store.acquire_publish_slots(
            users, self.settings.publish_min_interval_ms
        )
        model = self.models.current
        sends = []
        for user_id, may_publish in zip(users, granted, strict=True):
            if not may_publish:
                self.metrics.published.labels("rate_limited").inc()
                continue
            answer = await self.recommender.recommend(model, user_id, self.settings.publish_k)
            now_ms = int(time.time() * 1000)
            value = recommendation_record(user_id, answer, now_ms)
            sends.append(
                await producer.send(
                    self.settings.topic_recommendations, value, key=user_id.encode()
                )
            )
            self.metrics.change_to_publish.observe(max(0.0, (now_ms - applied_at[user_id]) / 1000))
        # Offsets are committed by the caller only after every record is acknowledged.
        await asyncio.gather(*sends)
        self.metrics.published.labels("published").inc(len(sends))

    async def _serve_web(self) -> web.AppRunner:
        async def metrics(_: web.Request) -> web.Response:
            return web.Response(body=generate_latest(self.registry), content_type="text/plain")

        async def healthz(_: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        async def readyz(_: web.Request) -> web.Response:
            body: dict[str, Any] = {
                "ready": self.ready,
                "model_version": self.models.current.version,
            }
            return web.json_response(body, status=200 if self.ready else 503)

        app = web.Application()
        app.add_routes(
            [web.get("/metrics", metrics), web.get("/healthz", healthz), web.get("/readyz", readyz)]
        )
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.worker_web_host, self.settings.publisher_web_port)
        await site.start()
        return runner


def run_publisher(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    asyncio.run(Publisher(settings).run())
