"""The Faust app: built from `Settings` by `create_app`, never at import time.

One agent consumes both input topics (`clicks`, `purchases`) in batches and
hands them to `stream.ingest.Ingestor`; another applies the `items` topic to the
catalogue (`stream.catalogue`); a third forgets users (`stream.forget`), each
after the user's earlier events; the worker's web server exports
/metrics; a timer publishes consumer lag. With a model in the registry, the
batches' users get fresh cached vectors (`stream.vectors`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import faust
from aiokafka.errors import KafkaError
from faust.types import EventT
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from redis.exceptions import RedisError

from stream.canary_check import CanaryCheck
from stream.catalogue import CatalogueIngestor, item_message
from stream.forget import add_forget_agent
from stream.ingest import Ingestor, IngestPolicy
from stream.lag import ConsumerLag
from stream.overlap import OverlappedWriter, raw_message
from stream.readiness import BrokerContact, readiness
from stream.retrain_trigger import RetrainTrigger
from stream.transport import transport_with_fetch_wait
from stream.vectors import VectorRefresher
from streamrec.archive import ArchiveWriter, prune
from streamrec.catalogue import Catalogue
from streamrec.errors import BundleError
from streamrec.kafka_client import kafka_python_options, ssl_context
from streamrec.loaded import ModelHolder
from streamrec.metrics import IngestMetrics
from streamrec.notices import StateChanges
from streamrec.producer import SCHEMA_HEADERS
from streamrec.redact import redacted
from streamrec.settings import Settings
from streamrec.state import StateStore

log = logging.getLogger(__name__)


def faust_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """The same security as `streamrec.kafka_client` gives kafka-python."""
    protocol = settings.kafka_security_protocol
    context = ssl_context(settings)
    if protocol.startswith("SASL"):
        kafka_python_options(settings)  # validates: a username is required
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.get_secret_value(),
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def faust_broker_url(bootstrap: str) -> str:
    return ";".join(f"kafka://{host.strip()}" for host in bootstrap.split(","))


def create_app(
    settings: Settings, *, noop: bool = False, registry: CollectorRegistry = REGISTRY
) -> faust.App:
    """The worker app. `noop=True` consumes and counts only: the benchmark's floor."""
    app = faust.App(
        settings.app_id,
        broker=faust_broker_url(settings.kafka_bootstrap),
        store="memory://",
        # web_host is only the name Faust advertises; web_bind is where it listens.
        web_host=settings.worker_web_host,
        web_bind=settings.worker_web_host,
        web_port=settings.worker_web_port,
        topic_partitions=settings.input_partitions,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=settings.commit_interval_s,
        producer_acks=-1,
        # The DLQ cuts its records to this (stream/dead_letter.py).
        producer_max_request_size=settings.dlq_max_record_bytes,
        broker_session_timeout=settings.consumer_session_timeout_s,
        broker_rebalance_timeout=settings.consumer_rebalance_timeout_s,
        broker_heartbeat_interval=settings.consumer_heartbeat_s,
        web_in_thread=False,
        broker_credentials=faust_credentials(settings),
    )
    transport_class = transport_with_fetch_wait(settings.consumer_fetch_max_wait_ms)
    app.transport = transport_class(app.conf.broker_consumer, app)
    metrics = IngestMetrics(registry)
    source = app.topic(
        *settings.input_topics,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    dlq = app.topic(settings.topic_dlq, key_serializer="raw", value_serializer="raw")
    state = StateStore(settings)

    async def send_dlq(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        sent = await dlq.send(key=key, value=value, headers=headers)
        await sent

    changes = app.topic(settings.topic_state_changes, key_serializer="raw", value_serializer="raw")

    async def notify_changes(notices: list[StateChanges]) -> None:
        sent = [
            await changes.send(value=n.to_json(), partition=n.partition, headers=SCHEMA_HEADERS)
            for n in notices
        ]
        await asyncio.gather(*sent)

    archive = ArchiveWriter(settings.archive_root) if settings.archive_enabled else None
    vectors = None
    if settings.worker_refresh_vectors and not noop:
        vectors = VectorRefresher(state, ModelHolder(settings.registry, metrics), metrics)
    ingestor = Ingestor(
        state,
        metrics,
        send_dlq,
        IngestPolicy.from_settings(settings),
        archive,
        notify_changes if settings.emit_state_changes else None,
        vectors.add if vectors is not None else None,
    )
    batch_max, within_s = settings.batch_max_events, settings.batch_within_ms / 1000

    def batches(stream: faust.StreamT[bytes]) -> AsyncIterator[Sequence[EventT[bytes]]]:
        # take_events acks a batch only when the loop body has finished with it.
        return cast(faust.Stream[bytes], stream).take_events(batch_max, within=within_s)

    if noop:

        @app.agent(source, name="ingest")
        async def ingest_noop(stream: faust.StreamT[bytes]) -> None:
            async for events in batches(stream):
                metrics.events.labels("noop", "accepted").inc(len(events))

    else:

        @app.agent(source, name="ingest", concurrency=settings.agent_concurrency)
        async def ingest(stream: faust.StreamT[bytes]) -> None:
            writer = OverlappedWriter(app, ingestor.handle_batch, raw_message)
            await writer.consume(batches(stream), settings.worker_shutdown_timeout_s / 3)

        items_source = app.topic(
            settings.topic_items,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )
        catalogue = CatalogueIngestor(
            Catalogue(settings, client=state.redis),
            metrics,
            send_dlq,
            IngestPolicy.from_settings(settings),
            ingestor.waits,  # one outage, one gauge and one /readyz for both agents
        )

        @app.timer(interval=settings.lag_poll_s)
        async def catalogue_gauges() -> None:
            try:
                items, unavailable = await catalogue.catalogue.counts()
            except RedisError as exc:
                log.warning("catalogue gauges not read: %s", exc)
                return
            metrics.catalogue_items.set(items)
            metrics.catalogue_unavailable.set(unavailable)

        @app.agent(items_source, name="catalogue")
        async def apply_catalogue(stream: faust.StreamT[bytes]) -> None:
            # Held like the events: acked only once written, even if the agent stops.
            writer = OverlappedWriter(app, catalogue.handle_batch, item_message)
            await writer.consume(batches(stream), settings.worker_shutdown_timeout_s / 3)

        forgetter = add_forget_agent(
            app, settings, state, archive, metrics, send_dlq, ingestor.waits, changes, batches
        )

        @app.task
        async def check_redis() -> None:
            # Fail fast: a worker that cannot reach Redis must not look healthy.
            await state.ping()
            log.info("Redis reachable at %s", redacted(settings.redis_url))

    @app.task
    async def freeze_startup_objects() -> None:
        # What start-up built (~100k+ objects: modules, Faust's and aiokafka's
        # machinery, the model) lives until shutdown: out of the collector's sight.
        # Full collections under load took 67-125 ms (median 84, every few
        # seconds), a pause every event in flight waited for (one-off probe during
        # `streamrec bench ingest`, 2026-11-30).
        gc.collect()
        gc.freeze()

    if vectors is not None:
        refresher = vectors

        @app.task
        async def refresh_vectors() -> None:
            await refresher.run()

        @app.task
        async def follow_registry() -> None:
            # Ingest never waits for a model: without one (or with a refused one)
            # the worker only skips the refresh; the watcher loads the next version.
            try:
                await refresher.holder.load()
            except (BundleError, OSError) as exc:
                log.warning("user vectors not refreshed until a model loads: %s", exc)
            await refresher.holder.follow(settings)

    if archive is not None:
        archive_writer = archive

        @app.timer(interval=600.0)
        async def prune_archive() -> None:
            removed = prune(
                settings.archive_root, settings.archive_retention_s, writer=archive_writer
            )
            if removed:
                log.info("archive retention: removed segments %s", removed)
            if not noop:
                await forgetter.full_pass()

    if not noop and (settings.retrain_every_s > 0 or settings.retrain_every_events > 0):
        trigger = RetrainTrigger(settings, state, metrics)

        @app.timer(interval=10.0, on_leader=True)
        async def retrain_when_due() -> None:
            await trigger.tick()

    if not noop and settings.canary_check_s > 0:
        canary = CanaryCheck(settings, state, metrics)

        @app.timer(interval=settings.canary_check_s, on_leader=True)
        async def judge_canary() -> None:
            await canary.tick()

    broker = BrokerContact(max(settings.worker_broker_timeout_s, 2 * settings.lag_poll_s))

    lag = ConsumerLag(app, metrics)

    @app.timer(interval=settings.lag_poll_s)
    async def consumer_lag() -> None:
        # Also the broker probe /readyz reads: the consumer keeps its assignment
        # while the broker is gone.
        try:
            answered = await asyncio.wait_for(lag.publish(), broker.timeout_s)
        except (KafkaError, TimeoutError) as exc:
            log.warning(
                "the broker did not answer the lag poll (%r); silent for %.0f s",
                exc, broker.silent_s,
            )  # fmt: skip
            return
        if answered:
            broker.answered()

    @app.page("/healthz")
    async def healthz(web: faust.web.View, request: faust.web.Request) -> Any:
        return web.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(web: faust.web.View, request: faust.web.Request) -> Any:
        assigned = [tp for tp in app.consumer.assignment() if tp.topic in settings.input_topics]
        unavailable = None if noop else ingestor.state_unavailable
        body = readiness(len(assigned), bool(app.rebalancing), broker, unavailable)
        return web.json(body, status=200 if body["ready"] else 503)

    @app.page("/metrics")
    async def metrics_page(web: faust.web.View, request: faust.web.Request) -> Any:
        # aiohttp refuses a charset inside content_type; the exposition format is UTF-8 anyway.
        return web.bytes(generate_latest(registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    return app
