"""What one running app holds between start-up and shutdown, and the HTTP plumbing
its endpoints share: JSON bodies in and out, problems as 4xx/5xx, per-endpoint timing."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from model_server.event_intake import EventIntake

if TYPE_CHECKING:
    from model_server.access import Access
from model_server.limits import BodyTooLarge
from model_server.recommender import Recommender
from model_server.request_ids import request_id
from model_server.schemas import RequestModels
from model_server.write_back import WriteBackQueue
from streamrec.errors import NoModel
from streamrec.loaded import ModelHolder
from streamrec.metrics import ServeMetrics
from streamrec.settings import Settings
from streamrec.state import StateStore

log = logging.getLogger(__name__)
Body = TypeVar("Body", bound=BaseModel)
Handler = Callable[[Request], Awaitable[Response]]
CLIENT_CLOSED_REQUEST = 499
# A 503 says when to ask again (clients move on to another server at once).
RETRY_AFTER = {"Retry-After": "1"}
# While Redis is down every request would log the same line.
REDIS_WARNING_EVERY_S = 10.0


class InFlight:
    """The requests one process works on at once; past `limit` the next is refused at
    once (503), before its body is read, rather than queued behind the others."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    # `with in_flight:` holds a slot; methods, not a generator: contextlib's
    # `contextmanager` cost 1.5 µs a request against 0.3 µs.
    def __enter__(self) -> None:
        if self.count >= self.limit:
            raise Problem(
                503,
                "overloaded",
                f"this server already works on {self.limit} requests; ask again",
                RETRY_AFTER,
            )
        self.count += 1

    def __exit__(self, *exc_info: object) -> None:
        self.count -= 1


@dataclass(frozen=True)
class Serving:
    settings: Settings
    store: StateStore
    holder: ModelHolder
    recommender: Recommender
    metrics: ServeMetrics
    requests: RequestModels
    write_back: WriteBackQueue
    in_flight: InFlight
    intake: EventIntake
    access: Access


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
    raw = await read_body(request)
    if not raw.strip() and empty_ok:
        raw = b"{}"
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        if any(e["type"] == "json_invalid" for e in errors):
            raise Problem(400, "malformed_json", "the body must be one JSON object") from None
        raise Problem(422, "invalid_request", _readable(errors)) from None


async def read_body(request: Request) -> bytes:
    """The whole body; too large or cut off by the client is the caller's Problem."""
    try:
        return await _whole_body(request)
    except BodyTooLarge:
        limit = request.scope.get("state", {}).get(
            "max_body_bytes", serving_of(request).settings.serve_max_body_bytes
        )
        raise Problem(
            413, "body_too_large", f"request bodies are limited to {limit} bytes"
        ) from None
    except ClientDisconnect:
        # Nginx's 499: the client closed the connection (or its body timed out,
        # connections.py) before the body was in. Its doing, so a 4xx; the answer
        # goes nowhere.
        raise Problem(
            CLIENT_CLOSED_REQUEST, "client_closed_request", "the body did not arrive whole"
        ) from None


async def _whole_body(request: Request) -> bytes:
    """What `request.body()` gives, read with a plain loop: its async generator and
    `aclosing` cost 4 µs of a request whose body comes in one message. Kept where
    Starlette keeps it, so a later `request.body()` or `stream()` gives it again."""
    chunks: list[bytes] = []
    while True:
        message = await request.receive()
        if message["type"] == "http.request":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    request._body = body
    return body


def _readable(errors: list[Any]) -> list[dict[str, object]]:
    return [
        {"field": ".".join(str(part) for part in e["loc"]) or "body", "message": e["msg"]}
        for e in errors
    ]


class Measured:
    """An endpoint that times its handler, turns a Problem into its answer and counts
    answers by status class. `capped`: the request takes one of the process's
    `InFlight` slots or is shed.

    A plain ASGI app, not a function for `Route` to wrap in `request_response`: that
    wrapped each request in a second exception handler besides the app's own (the
    same handlers, so what it caught the app's catches), 2 µs a request."""

    def __init__(self, endpoint: str, handler: Handler, capped: bool = False) -> None:
        self.endpoint = endpoint
        self.handler = handler
        self.capped = capped
        self._redis_warnings = _Throttled(REDIS_WARNING_EVERY_S)
        self._answers: _Answers | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.answer(Request(scope, receive, send))
        await response(scope, receive, send)

    async def answer(self, request: Request) -> Response:
        serving = serving_of(request)
        started = time.perf_counter()
        try:
            if self.capped:
                with serving.in_flight:
                    response = await self.handler(request)
            else:
                response = await self.handler(request)
        except Problem as problem:
            response = problem.response()
        except NoModel as exc:
            response = Problem(503, "no_model", str(exc), {"Retry-After": "5"}).response()
        except RedisError as exc:
            if (suppressed := self._redis_warnings.due()) is not None:
                log.warning(
                    "%s (request %s): Redis unavailable: %s (%d more like it not logged)",
                    self.endpoint,
                    request_id(request),
                    exc,
                    suppressed,
                )
            response = Problem(
                503, "state_unavailable", "Redis did not answer in time", RETRY_AFTER
            ).response()
        except Exception:
            log.exception("%s failed (request %s)", self.endpoint, request_id(request))
            response = Problem(500, "internal_error", "see the server log").response()
        answers = self._answers
        if answers is None or answers.metrics is not serving.metrics:
            answers = self._answers = _Answers(serving.metrics, self.endpoint)
        answers.observe(time.perf_counter() - started, response.status_code)
        return response


class _Answers:
    """One endpoint's time and answer counts, each series looked up once (by the
    first answer that needs it: no series shows before it has counted one); two
    `labels()` calls were 3 µs of every request."""

    def __init__(self, metrics: ServeMetrics, endpoint: str) -> None:
        self.metrics = metrics
        self.endpoint = endpoint
        self._seconds: Histogram | None = None
        self._by_class: dict[int, Counter] = {}

    def observe(self, seconds: float, status_code: int) -> None:
        if self._seconds is None:
            self._seconds = self.metrics.request_seconds.labels(self.endpoint)
        self._seconds.observe(seconds)
        status_class = status_code // 100
        answered = self._by_class.get(status_class)
        if answered is None:
            answered = self.metrics.requests.labels(self.endpoint, f"{status_class}xx")
            self._by_class[status_class] = answered
        answered.inc()


class _Throttled:
    """At most one log line per `every_s`; `due()` says how many were held back."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self.next_s = 0.0
        self.held = 0

    def due(self) -> int | None:
        now_s = time.monotonic()
        if now_s < self.next_s:
            self.held += 1
            return None
        held, self.held, self.next_s = self.held, 0, now_s + self.every_s
        return held
