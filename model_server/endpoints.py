"""The public endpoints: /v1/recommend, /v1/score, /v1/similar, /v1/events, /v1/model,
/healthz, /readyz, /metrics."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from model_server.event_intake import BatchError, batch_items
from model_server.filters import NO_FILTER, ItemFilter
from model_server.schemas import ItemFilterBody
from model_server.serving import (
    RETRY_AFTER,
    Problem,
    Serving,
    json_response,
    parse_body,
    read_body,
    serving_of,
)
from streamrec.errors import NoModel
from streamrec.loaded import Route
from streamrec.registry import current_version, list_registry
from streamrec.state import WriteBack

log = logging.getLogger(__name__)
T = TypeVar("T")
READY_PING_TIMEOUT_S = 1.0


async def not_found(request: Request, exc: Exception) -> Response:
    """404 in every other error's shape."""
    detail = f"no route {request.method} {request.url.path}; the API is in /openapi.json"
    return Problem(404, "not_found", detail).response()


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    headers = getattr(exc, "headers", None)
    detail = f"{request.url.path} does not take {request.method}"
    return Problem(405, "method_not_allowed", detail, headers).response()


async def events(request: Request) -> Response:
    """POST /v1/events (model_server/event_intake.py)."""
    serving = serving_of(request)
    serving.access.require(request, "write")
    raw = await read_body(request)
    try:
        items = batch_items(raw, serving.settings.serve_max_events)
    except BatchError as exc:
        error, detail = exc.args
        raise Problem(400 if error == "malformed_json" else 422, error, detail) from None
    all_written, outcomes = await serving.intake.take(items)
    counts = Counter(outcome["outcome"] for outcome in outcomes)
    body = {
        "accepted": counts["accepted"],
        "rejected": counts["rejected"],
        "not_written": counts["not_written"],
        "events": outcomes,
    }
    if not all_written:
        return json_response(body, 503, RETRY_AFTER)
    return json_response(body, 202)


async def recommend(request: Request) -> Response:
    serving = serving_of(request)
    serving.access.require(request, "read")
    body = await parse_body(request, serving.requests.recommend)
    if body.explain:
        serving.access.require(request, "explain")  # a user's history and features
    route = routed(serving, body.user_id)
    max_per_category = _or_default(body.max_per_category, serving.settings.serve_max_per_category)
    answer = await serving.recommender.recommend(
        route.model if route else None,
        body.user_id,
        body.k,
        body.exclude,
        body.explain,
        item_filter(body.filter),
        max_per_category,
        _or_default(body.diversity, serving.settings.serve_diversity),
    )
    remember = serving.settings.hit_window_s > 0 and answer.items and answer.has_state
    arm = route.arm if route else None
    if remember or answer.fresh_vector:
        shown = [item.item_id for item in answer.items]
        at_ms = int(time.time() * 1000)
        experiment = route.experiment if route else None
        tag = experiment.arm_tag(arm) if experiment and arm else None
        serving.write_back.add(WriteBack(body.user_id, shown, at_ms, answer.fresh_vector, tag))
    answered = answer.body(body.user_id, body.k, arm)
    if body.explain:
        # The user's recent events, oldest first, as the answer read them.
        answered["history"] = [
            {"item_id": e.item_id, "type": e.type.value, "ts": e.ts_ms} for e in answer.history
        ]
    return json_response(answered)


def routed(serving: Serving, user_id: str) -> Route | None:
    """The model that answers this user (their experiment arm's), counted per arm;
    None before the first version loaded (`serve_wait_for_model`: trending answers)."""
    if serving.holder.held is None:
        return None
    route = serving.holder.route(user_id)
    if route.experiment is not None:
        serving.metrics.experiment_answer(route.experiment.name, route.arm, route.fell_back)
    return route


def _or_default(asked: T | None, setting: T) -> T:
    """What the request asked for, else the setting."""
    return setting if asked is None else asked


def item_filter(body: ItemFilterBody | None) -> ItemFilter:
    if body is None:
        return NO_FILTER
    return ItemFilter(
        include_categories=frozenset(body.include_categories),
        exclude_categories=frozenset(body.exclude_categories),
        price_min=body.price_min,
        price_max=body.price_max,
        attributes=dict(body.attributes),
    )


async def similar(request: Request) -> Response:
    serving = serving_of(request)
    serving.access.require(request, "read")
    body = await parse_body(request, serving.requests.similar)
    max_per_category = _or_default(body.max_per_category, serving.settings.serve_max_per_category)
    # Before the first version: co-visitation, categories and trending, no vectors.
    answer = await serving.recommender.similar(
        serving.holder.held, body.item_id, body.k, item_filter(body.filter), max_per_category
    )
    return json_response(
        {
            "item_id": body.item_id,
            "items": [
                {"item_id": item.item_id, "score": item.score, "source": item.source}
                for item in answer.items
            ],
            "model_version": answer.model_version,
            "short": len(answer.items) < body.k,
        }
    )


async def score(request: Request) -> Response:
    serving = serving_of(request)
    serving.access.require(request, "read")
    body = await parse_body(request, serving.requests.score)
    route = routed(serving, body.user_id)
    if route is None:
        raise NoModel("no model version is loaded yet: scores are the ranker's")  # a 503
    answer = await serving.recommender.score(route.model, body.user_id, body.item_ids)
    items = [
        {"item_id": s.item_id, "score": s.score}
        if s.score is not None
        else {"item_id": s.item_id, "score": None, "error": "unknown_item"}
        for s in answer.items
    ]
    return json_response(
        {
            "user_id": body.user_id,
            "items": items,
            "model_version": answer.model_version,
            "arm": route.arm,
        }
    )


async def model_info(request: Request) -> Response:
    """Why a version was refused or a swap failed is for operators (the admin
    scope): other callers see that it happened, not the error text."""
    serving = serving_of(request)
    operator = "admin" in serving.access.require(request, "read").scopes
    model = serving.holder.current
    manifest = model.bundle.manifest
    root = serving.settings.registry
    return json_response(
        {
            "model_version": model.version,
            "parent": manifest.parent,
            "created_at": manifest.created_at,
            "loaded_at_s": model.loaded_at_s,
            "items": len(model.bundle.item_ids),
            "index": manifest.index,
            "feature_schema_version": manifest.feature_schema_version,
            "metrics": manifest.metrics,
            "data_window": {
                key: without_paths(value, root) if isinstance(value, str) else value
                for key, value in manifest.data_window.items()
            },
            "refused": {
                version: without_paths(reason, root) if operator else "refused"
                for version, reason in serving.holder.refused.items()
            },
            "swaps": [
                {
                    k: (without_paths(v, root) if operator else "withheld")
                    if k == "reason" and isinstance(v, str)
                    else v
                    for k, v in entry.items()
                }
                for entry in serving.holder.history
            ],
        }
    )


async def versions(request: Request) -> Response:
    """GET /v1/versions: the registry's versions, oldest first, with their lineage
    and gate figures; which one CURRENT names and which one this process serves."""
    serving = serving_of(request)
    operator = "admin" in serving.access.require(request, "read").scopes
    root = serving.settings.registry
    listing = await asyncio.to_thread(list_registry, root)
    current = await asyncio.to_thread(current_version, root)
    return json_response(
        {
            "current": current,
            "served": serving.holder.held.version if serving.holder.held else None,
            "versions": [
                {
                    "version": m.version,
                    "parent": m.parent,
                    "created_at": m.created_at,
                    "events": m.data_window.get("events"),
                    "validation": m.metrics.get("validation", {}),
                }
                for m in listing.versions
            ],
            "unreadable": {
                name: without_paths(reason, root) if operator else "unreadable"
                for name, reason in listing.unreadable.items()
            },
        }
    )


# An absolute path inside a message: from a slash that does not follow a word, a
# dot or another slash, up to the next space, quote, comma or colon.
_ABSOLUTE_PATH = re.compile(r"(?<![\w./])/[^\s'\",:;]+")


def without_paths(text: str, registry_root: Path) -> str:
    """`text` as endpoints that need no token show it: a path inside the registry
    relative to it (`v2/manifest.json`), any other by its last part only."""
    inside = f"{registry_root}/"

    def shortened(match: re.Match[str]) -> str:
        path = match.group(0)
        return path.removeprefix(inside) if path.startswith(inside) else Path(path).name

    return _ABSOLUTE_PATH.sub(shortened, text)


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    serving = serving_of(request)
    try:
        async with asyncio.timeout(READY_PING_TIMEOUT_S):
            await serving.store.ping()
    except (RedisError, TimeoutError) as exc:
        # A probe needs no token: a reason code; the address and the error go to the log.
        log.warning("not ready: Redis did not answer a ping: %s", exc or type(exc).__name__)
        return json_response({"ready": False, "reason": "redis_unavailable"}, 503)
    held = serving.holder.held
    if held is None:
        # Started with `serve_wait_for_model` before the registry had a version: ready,
        # /recommend answers trending until the watcher loads the first one.
        return json_response({"ready": True, "model_version": None, "serving": "trending"})
    return json_response({"ready": True, "model_version": held.version, "serving": "model"})


def metrics_page(
    registry: CollectorRegistry, shared_dir: Path | None = None
) -> Callable[[Request], Awaitable[Response]]:
    """This process's metrics, or with `shared_dir` (`--workers N`) every worker's,
    summed from the files prometheus_client's multiprocess mode keeps there."""
    if shared_dir is not None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(shared_dir))  # type: ignore[no-untyped-call]

    async def page(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return page
