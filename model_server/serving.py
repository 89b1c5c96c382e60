"""What one running app holds between start-up and shutdown, and the HTTP plumbing
its endpoints share: JSON bodies in and out, problems as 4xx/5xx, per-endpoint timing."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from model_server.answers import AnswerWriter
from model_server.limits import BodyTooLarge
from model_server.pipeline import Recommender
from model_server.schemas import RequestModels
from streamrec.loaded import ModelHolder
from streamrec.metrics import ServeMetrics
from streamrec.settings import Settings
from streamrec.state import StateStore

log = logging.getLogger(__name__)
Body = TypeVar("Body", bound=BaseModel)
Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Serving:
    settings: Settings
    store: StateStore
    holder: ModelHolder
    recommender: Recommender
    metrics: ServeMetrics
    requests: RequestModels
    answers: AnswerWriter


def serving_of(request: Request) -> Serving:
    serving: Serving = request.app.state.serving
    return serving


class Problem(Exception):
    """An answer other than 2xx, with a reason a caller can act on."""

    def __init__(
        self, status_code: int, error: str, detail: Any, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{status_code} {error}: {detail}")
        self.status_code = status_code
        self.error = error
        self.detail = detail
        self.headers = headers

    def response(self) -> Response:
        body = {"error": self.error, "detail": self.detail}
        return json_response(body, self.status_code, self.headers)


def json_response(
    body: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(body), status_code, headers, media_type="application/json")


async def parse_body(request: Request, model: type[Body], empty_ok: bool = False) -> Body:
    try:
        raw = await request.body()
    except BodyTooLarge:
        limit = serving_of(request).settings.serve_max_body_bytes
        raise Problem(
            413, "body_too_large", f"request bodies are limited to {limit} bytes"
        ) from None
    if not raw.strip() and empty_ok:
        raw = b"{}"
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        if any(e["type"] == "json_invalid" for e in errors):
            raise Problem(400, "malformed_json", "the body must be one JSON object") from None
        raise Problem(422, "invalid_request", _readable(errors)) from None


def _readable(errors: list[Any]) -> list[dict[str, object]]:
    return [
        {"field": ".".join(str(part) for part in e["loc"]) or "body", "message": e["msg"]}
        for e in errors
    ]


def measured(endpoint: str, handler: Handler) -> Handler:
    """Time the handler, turn a Problem into its answer, count answers by status class."""

    async def wrapped(request: Request) -> Response:
        metrics = serving_of(request).metrics
        started = time.perf_counter()
        try:
            response = await handler(request)
        except Problem as problem:
            response = problem.response()
        except RedisError as exc:
            log.warning("%s: Redis unavailable: %s", endpoint, exc)
            response = Problem(503, "state_unavailable", f"Redis: {exc}").response()
        except Exception:
            log.exception("%s failed", endpoint)
            response = Problem(500, "internal_error", "see the server log").response()
        metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - started)
        metrics.requests.labels(endpoint, f"{response.status_code // 100}xx").inc()
        return response

    return wrapped
