"""The recommendations feed: state-change notices in, each changed user's fresh
top-K out on `recommendations`, at most once per `feed_min_interval_ms` per user.

It ranks with the model server's own `Recommender` and follows the registry
like a server does, so the topic and `/recommend` give the same answer. A
change inside a user's interval is never dropped: it is coalesced with any
later ones and the user's record is sent once when the interval passes, from
the state as it is then, so the last record per user is always their latest
answer. Offsets are committed after the records are acknowledged by the broker,
and never past a notice whose user still waits, so a crash sends again rather
than loses. A notice of a forgotten user drops what waits for them and sends their
tombstone, after any record sent for them before.

Before the first model (`serve_wait_for_model`) it sends what /recommend answers
then: trending, `model_version` null.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from model_server.recommender import Recommendation, Recommender
from streamrec.errors import BundleError
from streamrec.kafka_client import kafka_python_options
from streamrec.loaded import ModelHolder
from streamrec.metrics import FeedMetrics, ServeMetrics
from streamrec.notices import StateChanges
from streamrec.preflight import check_model, check_port, check_redis
from streamrec.producer import SCHEMA_HEADERS
from streamrec.settings import Settings
from streamrec.state import StateStore
from streamrec.topics import ensure_topics

log = logging.getLogger(__name__)


def feed_record(
    user_id: str, answer: Recommendation, k: int, now_ms: int, arm: str | None = None
) -> bytes:
    """What downstream consumers read: the /recommend answer (its experiment arm
    included) plus when it was made."""
    return orjson.dumps({**answer.body(user_id, k, arm), "ts": now_ms})


@dataclass(frozen=True, slots=True)
class Change:
    """One state-change notice and where it was read."""

    notice: StateChanges
    tp: TopicPartition
    offset: int


@dataclass(frozen=True, slots=True)
class Pending:
    """A user's changes waiting for their interval to pass: when it does (ms), the
    newest state write among them, and the earliest notice that named the user
    (offsets are not committed past it)."""

    due_ms: int
    applied_at_ms: int
    tp: TopicPartition
    offset: int

    def merged(self, later: Pending) -> Pending:
        earliest = self if (self.tp, self.offset) <= (later.tp, later.offset) else later
        return Pending(
            self.due_ms, max(self.applied_at_ms, later.applied_at_ms), earliest.tp, earliest.offset
        )


def _now_ms() -> int:
    return int(time.time() * 1000)


class Feed:
    def __init__(self, settings: Settings, registry: CollectorRegistry = REGISTRY) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = FeedMetrics(registry)
        self.serve_metrics = ServeMetrics(registry)
        self.store = StateStore(settings)
        self.models = ModelHolder(
            settings.registry,
            self.serve_metrics,
            experiments=True,
            ef_search=settings.serve_hnsw_ef_search,
        )
        self.recommender = Recommender(settings, self.store, self.serve_metrics)
        self.ready = False
        # Users with a change not yet sent because their interval has not passed.
        self.pending: dict[str, Pending] = {}
        # Per partition of state.changes: the offset after the last notice read.
        self._next_offset: dict[TopicPartition, int] = {}

    async def run(self) -> None:
        s = self.settings
        await self.store.ping()
        await self._first_model()
        # The running experiment's versions: a user's record comes from their arm's,
        # as their /recommend answer does.
        await self.models.hold_experiment()
        kafka = kafka_python_options(s)  # aiokafka takes the same option names
        consumer = AIOKafkaConsumer(
            s.topic_state_changes,
            **kafka,
            # The group keeps the name it had when this was `streamrec publish`: a new
            # group starts at `latest` and would skip the notices of the upgrade.
            group_id=f"{s.app_id}-publisher",
            enable_auto_commit=False,
            auto_offset_reset="latest",
            fetch_max_wait_ms=s.consumer_fetch_max_wait_ms,
            # The group timings the workers' consumers take (STREAMREC_CONSUMER_*).
            session_timeout_ms=round(s.consumer_session_timeout_s * 1000),
            rebalance_timeout_ms=round(s.consumer_rebalance_timeout_s * 1000),
            heartbeat_interval_ms=round(s.consumer_heartbeat_s * 1000),
        )
        producer = AIOKafkaProducer(**kafka, acks="all", linger_ms=5)
        watcher = asyncio.create_task(self.models.follow(s))
        web_runner = await self._serve_web()
        await consumer.start()
        await producer.start()
        try:
            while True:
                wait_ms = self._until_next_due_ms(default_ms=100)
                batches = await consumer.getmany(timeout_ms=wait_ms, max_records=500)
                self.ready = bool(consumer.assignment())
                changes = [
                    Change(StateChanges.from_json(record.value), tp, record.offset)
                    for tp, records in batches.items()
                    for record in records
                    if record.value is not None
                ]
                for tp, records in batches.items():
                    self._next_offset[tp] = records[-1].offset + 1
                self._forget_revoked(consumer.assignment())
                sent = await self.send_changed(producer, changes)
                sent += await self.send_due(producer)
                if batches or sent:
                    await self._commit(consumer)
        finally:
            watcher.cancel()
            await consumer.stop()
            await producer.stop()
            await web_runner.cleanup()
            await self.store.close()

    async def _first_model(self) -> None:
        """The registry's current version; with `serve_wait_for_model` and none that
        loads, nothing: records come from trending until the watcher loads one (as
        the server's answers do)."""
        try:
            await self.models.load()
        except BundleError as exc:
            if not self.settings.serve_wait_for_model:
                raise
            log.warning(
                "no model version loaded from %s (%s): sending trending until one is",
                self.settings.registry,
                exc,
            )

    async def send_changed(self, producer: AIOKafkaProducer, changes: list[Change]) -> int:
        """Send the users of these notices whose interval has passed; coalesce the
        rest into their pending entry. Returns how many users were sent."""
        changed: dict[str, Pending] = {}
        forgotten: list[str] = []
        for change in changes:
            for user_id in change.notice.last_ts_ms:
                entry = Pending(0, change.notice.applied_at_ms, change.tp, change.offset)
                changed[user_id] = changed[user_id].merged(entry) if user_id in changed else entry
            for user_id in change.notice.forgotten:
                # In notice order: a change after the forget is a new event, sent below.
                changed.pop(user_id, None)
                self.pending.pop(user_id, None)
                forgotten.append(user_id)
        await self._send_tombstones(producer, forgotten)
        waiting = [u for u in changed if u in self.pending]
        for user_id in waiting:
            self.pending[user_id] = self.pending[user_id].merged(changed.pop(user_id))
        self.metrics.records.labels("coalesced").inc(len(waiting))
        return await self._send_free(producer, changed)

    async def send_due(self, producer: AIOKafkaProducer) -> int:
        """Send the pending users whose interval has passed, from their state now."""
        now_ms = _now_ms()
        due = {u: p for u, p in self.pending.items() if p.due_ms <= now_ms}
        for user_id in due:
            del self.pending[user_id]
        return await self._send_free(producer, due)

    async def _send_tombstones(self, producer: AIOKafkaProducer, user_ids: list[str]) -> None:
        """A null record per forgotten user: a compacted topic drops their records."""
        sends = [
            await producer.send(
                self.settings.topic_recommendations,
                None,
                key=user_id.encode(),
                headers=SCHEMA_HEADERS,
            )
            for user_id in user_ids
        ]
        await asyncio.gather(*sends)
        self.metrics.records.labels("tombstone").inc(len(sends))

    async def _send_free(self, producer: AIOKafkaProducer, users: dict[str, Pending]) -> int:
        if not users:
            return 0
        # A notice names a user whose state changed; no state now means the user was
        # forgotten since (the forget's own notice follows): send nothing for them.
        present = await self.store.users_with_state(list(users))
        for user_id, has_state in zip(list(users), present, strict=True):
            if not has_state:
                del users[user_id]
                self.metrics.records.labels("forgotten").inc()
        order = list(users)
        waits = await self.store.feed_slots(order, self.settings.feed_min_interval_ms)
        now_ms = _now_ms()
        free = []
        for user_id, wait_ms in zip(order, waits, strict=True):
            if wait_ms:
                self.pending[user_id] = replace(users[user_id], due_ms=now_ms + wait_ms)
                self.metrics.records.labels("rate_limited").inc()
            else:
                free.append(user_id)
        await self._send(producer, {u: users[u].applied_at_ms for u in free})
        return len(free)

    async def _send(self, producer: AIOKafkaProducer, applied_at: dict[str, int]) -> None:
        # The catalogue as it is now: the feed has no one waiting, so it reads the
        # change log before each batch rather than following it.
        await self.recommender.mirror.catch_up()
        sends = []
        for user_id, applied_at_ms in applied_at.items():
            # None before the first version: the answer is trending.
            route = self.models.route(user_id) if self.models.held is not None else None
            if route is not None and route.experiment is not None:
                self.serve_metrics.experiment_answer(
                    route.experiment.name, route.arm, route.fell_back
                )
            # The settings' cap and diversity, as /recommend applies them by default.
            answer = await self.recommender.recommend(
                route.model if route else None,
                user_id,
                self.settings.feed_k,
                max_per_category=self.settings.serve_max_per_category,
                diversity=self.settings.serve_diversity,
            )
            now_ms = _now_ms()
            arm = route.arm if route else None
            value = feed_record(user_id, answer, self.settings.feed_k, now_ms, arm)
            sends.append(
                await producer.send(
                    self.settings.topic_recommendations,
                    value,
                    key=user_id.encode(),
                    headers=SCHEMA_HEADERS,
                )
            )
            self.metrics.change_to_feed.observe(max(0.0, (now_ms - applied_at_ms) / 1000))
        # Offsets are committed by the caller only after every record is acknowledged.
        await asyncio.gather(*sends)
        self.metrics.records.labels("published").inc(len(sends))

    def _until_next_due_ms(self, default_ms: int) -> int:
        if not self.pending:
            return default_ms
        soonest = min(p.due_ms for p in self.pending.values())
        return max(1, min(default_ms, soonest - _now_ms()))

    def _forget_revoked(self, assigned: set[TopicPartition]) -> None:
        """Users of partitions no longer ours: their new owner reads the notices again
        from our last commit, which never passed them."""
        for user_id in [u for u, p in self.pending.items() if p.tp not in assigned]:
            del self.pending[user_id]
        for tp in [tp for tp in self._next_offset if tp not in assigned]:
            del self._next_offset[tp]

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        safe = dict(self._next_offset)
        for entry in self.pending.values():
            safe[entry.tp] = min(safe.get(entry.tp, entry.offset), entry.offset)
        if safe:
            await consumer.commit(safe)

    async def _serve_web(self) -> web.AppRunner:
        async def metrics(_: web.Request) -> web.Response:
            return web.Response(body=generate_latest(self.registry), content_type="text/plain")

        async def healthz(_: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        async def readyz(_: web.Request) -> web.Response:
            held = self.models.held
            body: dict[str, Any] = {
                "ready": self.ready,
                "model_version": held.version if held else None,
                "serving": "model" if held else "trending",
            }
            return web.json_response(body, status=200 if self.ready else 503)

        app = web.Application()
        app.add_routes(
            [web.get("/metrics", metrics), web.get("/healthz", healthz), web.get("/readyz", readyz)]
        )
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.worker_web_host, self.settings.feed_web_port)
        await site.start()
        return runner


def run_feed(settings: Settings) -> None:
    check_redis(settings)
    check_port(settings.worker_web_host, settings.feed_web_port, "STREAMREC_FEED_WEB_PORT")
    if not settings.serve_wait_for_model:
        check_model(settings.registry)
    ensure_topics(settings)
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    asyncio.run(Feed(settings).run())
