"""The model server app, built from `Settings` by `create_app`, never at import time.

Start-up fails fast: Redis must answer and the registry's current version must
load (checksums, smoke inference) before /readyz says yes; with
`serve_wait_for_model` a registry without a loadable version is no failure: the
server answers trending until one loads. A watcher follows the registry's current
pointer and swaps new versions in.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import redis.asyncio as aioredis
from prometheus_client import REGISTRY, CollectorRegistry
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from model_server import admin, endpoints
from model_server.access import Access
from model_server.catalogue_mirror import CatalogueMirror
from model_server.event_intake import EventIntake
from model_server.experiment_figures import ExperimentFigures
from model_server.limits import BodySizeLimit
from model_server.live_items import LiveItems
from model_server.openapi import openapi_document
from model_server.popularity import PopularityTable
from model_server.prewarm import Prewarm
from model_server.recommender import Recommender
from model_server.request_ids import RequestIds
from model_server.schemas import request_models
from model_server.serving import InFlight, Measured, Serving, json_response
from model_server.write_back import WriteBackQueue
from streamrec import __version__
from streamrec.errors import BundleError, StateError
from streamrec.loaded import ModelHolder
from streamrec.metrics import ServeMetrics
from streamrec.pipelined import PipelinedConnection
from streamrec.redact import redacted
from streamrec.settings import Settings
from streamrec.state import RedisClient, StateStore, cluster_client

log = logging.getLogger(__name__)

# The longest any Redis call waits (to connect, for a reply, for a free pooled
# connection). Requests bound theirs to STREAMREC_SERVE_REDIS_TIMEOUT_MS on top; this
# is for the work behind them: the popularity table, the answers written back.
REDIS_CALL_TIMEOUT_S = 5.0
WARM_UP_USER = "streamrec-warm-up"  # read at start-up; no one has state under it


def _redis_client(settings: Settings) -> RedisClient:
    """The server's pooled client: waits for a free connection instead of failing when
    all are busy (on a Redis Cluster, per node)."""
    if settings.redis_is_cluster:
        return cluster_client(
            settings,
            max_connections=settings.serve_redis_connections,
            socket_timeout=REDIS_CALL_TIMEOUT_S,
            socket_connect_timeout=REDIS_CALL_TIMEOUT_S,
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.serve_redis_connections,
        timeout=REDIS_CALL_TIMEOUT_S,
        socket_timeout=REDIS_CALL_TIMEOUT_S,
        socket_connect_timeout=REDIS_CALL_TIMEOUT_S,
    )
    return aioredis.Redis(connection_pool=pool)


def _pipelined_reads(settings: Settings) -> PipelinedConnection | None:
    """Each request's state read shares one pipelined connection (a tenth of a
    request's CPU less than through the pool); everything else uses the pool. A
    cluster's reads go through its client (one call per slot)."""
    if settings.redis_is_cluster or not PipelinedConnection.supports(settings.redis_url):
        return None
    return PipelinedConnection(settings.redis_url)


def create_app(settings: Settings, registry: CollectorRegistry = REGISTRY) -> Starlette:
    metrics = ServeMetrics(registry)
    requests = request_models(settings)
    schema = openapi_document(requests, __version__, settings.serve_max_events)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store = StateStore(settings, _redis_client(settings), _pipelined_reads(settings))
        watcher: asyncio.Task[None] | None = None
        popularity: PopularityTable | None = None
        refresher: asyncio.Task[None] | None = None
        write_back: WriteBackQueue | None = None
        writer: asyncio.Task[None] | None = None
        live_items: LiveItems | None = None
        mirror: CatalogueMirror | None = None
        mirroring: asyncio.Task[None] | None = None
        intake: EventIntake | None = None
        follower: asyncio.Task[None] | None = None
        figures: ExperimentFigures | None = None
        figures_reader: asyncio.Task[None] | None = None
        try:
            try:
                await store.ping()
                # Opens the pipelined connection and loads the state script, so that
                # the first request's read fits the Redis timeout too.
                await store.read_user(WARM_UP_USER)
            except (RedisError, OSError) as exc:
                raise StateError(
                    f"Redis at {redacted(settings.redis_url)} does not answer: {exc}"
                ) from exc
            holder = ModelHolder(
                settings.registry,
                metrics,
                experiments=True,
                ef_search=settings.serve_hnsw_ef_search,
            )
            await _first_model(holder, settings)
            if settings.serve_popularity_refresh_s > 0:
                popularity = PopularityTable(
                    store, settings.serve_popularity_refresh_s, settings.popularity_half_life_s
                )
                if holder.held is not None:
                    await popularity.refresh(holder.held)
                refresher = asyncio.create_task(popularity.follow(holder))
            prewarm = (
                Prewarm(holder, metrics, settings.serve_prewarm_users)
                if settings.serve_prewarm_users > 0
                else None
            )
            if popularity is not None:
                # After the warm-up: the table the new version starts with is the freshest.
                holder.before_swap.append(popularity.prepare)
                holder.before_arm.append(popularity.hold)
            recommender = Recommender(
                settings,
                store,
                metrics,
                popularity,
                prewarm,
                redis_timeout_s=settings.serve_redis_timeout_ms / 1000,
            )
            mirror = recommender.mirror
            await mirror.catch_up()
            mirroring = asyncio.create_task(mirror.follow())
            holder.before_swap.append(recommender.prepare_catalogue_rows)
            holder.before_arm.append(recommender.prepare_catalogue_rows)
            if holder.held is not None:
                await recommender.prepare_catalogue_rows(holder.held)
            if settings.serve_live_items_poll_s > 0:
                live_items = LiveItems(
                    holder, recommender.mirror, metrics, settings.serve_live_items_poll_s
                )
                if holder.held is not None:
                    await live_items.catch_up(holder.held)
                holder.before_swap.append(live_items.prepare)
                holder.before_arm.append(live_items.prepare)
                follower = asyncio.create_task(live_items.follow())
            # Held from the start: while Redis does not answer, /recommend answers it.
            await recommender.hold_trending(holder.held)
            write_back = WriteBackQueue(store)
            writer = asyncio.create_task(write_back.run())
            intake = EventIntake(settings)
            app.state.serving = Serving(
                settings,
                store,
                holder,
                recommender,
                metrics,
                requests,
                write_back,
                InFlight(settings.serve_max_concurrency),
                intake,
                Access(settings),
            )
            # The running experiment's versions, opened before the first request.
            await holder.hold_experiment()
            watcher = asyncio.create_task(holder.follow(settings))
            if settings.serve_experiment_figures_s > 0:
                figures = ExperimentFigures(
                    holder, store, metrics, settings.serve_experiment_figures_s
                )
                figures_reader = asyncio.create_task(figures.follow())
            # What start-up built (~100k objects the collector tracks: modules, the
            # model) lives until shutdown: out of the collector's sight, a full
            # collection took 4 ms instead of 42-62 ms, which every request waiting
            # behind it used to see (one-off probe, 1,000 req/s).
            gc.collect()
            gc.freeze()
            yield
        finally:
            if write_back is not None and writer is not None:
                write_back.stop()
                await writer
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            if popularity is not None and refresher is not None:
                popularity.stop()
                await refresher
            if live_items is not None and follower is not None:
                live_items.stop()
                await follower
            if mirror is not None and mirroring is not None:
                mirror.stop()
                await mirroring
            if figures is not None and figures_reader is not None:
                figures.stop()
                await figures_reader
            if intake is not None:
                await intake.close()
            await store.close()
            if isinstance(store.redis, aioredis.Redis):  # a pool it was handed stays open
                await store.redis.connection_pool.aclose()

    async def openapi(request: Request) -> Response:
        return json_response(schema)

    # The API's operations under /v1; the unversioned paths they had stay as aliases
    # for one release (docs/serving.md). Probes, metrics and the schema are not
    # versioned: what they answer is not the API.
    operations = [
        ("/recommend", Measured("recommend", endpoints.recommend, capped=True), "POST"),
        ("/score", Measured("score", endpoints.score, capped=True), "POST"),
        ("/similar", Measured("similar", endpoints.similar, capped=True), "POST"),
        ("/model", Measured("model", endpoints.model_info), "GET"),
        ("/versions", Measured("model", endpoints.versions), "GET"),
        ("/admin/reload", Measured("admin", admin.reload), "POST"),
        ("/admin/rollback", Measured("admin", admin.rollback), "POST"),
    ]
    routes = [
        *(Route(f"/v1{path}", handler, methods=[method]) for path, handler, method in operations),
        Route("/v1/events", Measured("events", endpoints.events, capped=True), methods=["POST"]),
        # Any id reaches the handler, which says what is wrong with it: an empty one,
        # or one holding "/" or a line break, which `path` would leave to a 404.
        Route("/v1/admin/experiment", Measured("admin", admin.experiment), methods=["GET"]),
        Route("/v1/admin/experiment", Measured("admin", admin.start_experiment), methods=["PUT"]),
        Route("/v1/admin/experiment", Measured("admin", admin.stop_experiment), methods=["DELETE"]),
        Route(
            "/v1/admin/experiment/promote",
            Measured("admin", admin.promote_experiment),
            methods=["POST"],
        ),
        Route(
            "/v1/admin/users/{user_id:any_text}",
            Measured("admin", admin.forget_user),
            methods=["DELETE"],
        ),
        *(Route(path, handler, methods=[method]) for path, handler, method in operations),
        Route("/healthz", endpoints.healthz, methods=["GET"]),
        Route("/readyz", endpoints.readyz, methods=["GET"]),
        Route(
            "/metrics",
            endpoints.metrics_page(registry, settings.serve_metrics_dir),
            methods=["GET"],
        ),
        Route("/openapi.json", openapi, methods=["GET"]),
        # The operator's console and the API page: static files in the package.
        Route("/ui", static_page(STATIC / "ui" / "index.html"), methods=["GET"]),
        Route("/docs", static_page(STATIC / "docs.html"), methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(RequestIds),
            Middleware(
                BodySizeLimit,
                max_bytes=settings.serve_max_body_bytes,
                by_path={"/v1/events": settings.serve_max_events_body_bytes},
            ),
        ],
        exception_handlers={404: endpoints.not_found, 405: endpoints.method_not_allowed},
        lifespan=lifespan,
    )


STATIC = Path(__file__).parent / "static"


async def _first_model(holder: ModelHolder, settings: Settings) -> None:
    """The registry's current version; with `serve_wait_for_model` and none that
    loads (none yet, or one refused: counted and logged by the holder), nothing:
    /recommend answers trending and the registry watcher (`ModelHolder.follow`)
    loads the first version that opens."""
    try:
        await holder.load()
    except BundleError as exc:
        if not settings.serve_wait_for_model:
            raise
        log.warning(
            "no model version loaded from %s (%s): answering from trending until one is",
            settings.registry,
            exc,
        )


class AnyText(Convertor[str]):
    """A path parameter of any characters (Starlette's `path` stops at a line break):
    a user id may hold any, as the event contract says."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("any_text", AnyText())


def static_page(path: Path) -> Callable[[Request], Awaitable[Response]]:
    async def page(request: Request) -> Response:
        return FileResponse(path, media_type="text/html")

    return page


def app_from_env() -> Starlette:
    """The factory uvicorn's worker processes call (`--factory`)."""
    return create_app(Settings())
