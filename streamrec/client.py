"""A small Python client for the model server's /recommend and /score, sync and async,
with retries and failover over several servers.

with RecommenderClient(["http://10.0.0.1:8000", "http://10.0.0.2:8000"]) as client:
    answer = client.recommend("user-1", k=10)

Both calls only read, so retrying them is safe. One request walks the servers in
turn (each request starts one further along, spreading load) for at most
`RetryPolicy.attempts` tries, waiting a short jittered backoff between tries. It
retries when a server cannot be reached, resets the connection, times out, or
answers 502/503/504; any other answer (a 4xx above all) is final. A server that
just failed is tried last for `RetryPolicy.cooldown_s`. When every try fails the
call raises `RequestRejected` (the last answer was an error status) or
`ServersUnavailable` (no server answered). The sync and async clients share this
policy: `_attempts` decides, they only send.

The records (`Recommendations`, `ScoredItem`, `Scores`, `ItemScore`, `Similar`,
`SimilarItem`) carry the fields of the OpenAPI schemas of the answers, by the same
names (tests/model_server/test_client_records.py holds them together).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeAlias

import httpx

from streamrec.errors import RequestRejected, ServersUnavailable

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_CONNECT_TIMEOUT_S = 1.0
RETRY_STATUSES = frozenset({502, 503, 504})
# Not reaching a server, losing it mid-answer, or waiting too long: another may answer.
RETRY_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


@dataclass(frozen=True, slots=True)
class ScoredItem:
    item_id: str
    score: float
    features: Mapping[str, float] | None = None  # only with explain=true


@dataclass(frozen=True, slots=True)
class ItemScore:
    item_id: str
    score: float | None  # None for an item the model does not know
    error: str | None = None  # "unknown_item" then


@dataclass(frozen=True)
class SimilarItem:
    item_id: str
    score: float  # on its source's scale
    source: str  # covis, vector, category or trending


@dataclass(frozen=True)
class Similar:
    item_id: str
    items: tuple[SimilarItem, ...]
    model_version: str | None  # None: no model loaded yet (no vector neighbours)
    short: bool = False

    @property
    def item_ids(self) -> list[str]:
        return [item.item_id for item in self.items]


@dataclass(frozen=True, slots=True)
class Recommendations:
    user_id: str
    items: tuple[ScoredItem, ...]
    model_version: str | None  # None: no model loaded yet, the items are trending
    fallback: str | None  # "trending" or "retrieval" when the ranker did not order them
    short: bool = False  # fewer than k: the filters and the catalogue left no more
    # Only with explain=True: the user's recent events, oldest first.
    history: tuple[Mapping[str, object], ...] | None = None
    arm: str | None = None  # the user's experiment arm; None without an experiment

    @property
    def item_ids(self) -> list[str]:
        return [item.item_id for item in self.items]


@dataclass(frozen=True, slots=True)
class Scores:
    user_id: str
    items: tuple[ItemScore, ...]
    model_version: str
    arm: str | None = None  # the user's experiment arm; None without an experiment

    @property
    def unknown(self) -> list[str]:
        return [item.item_id for item in self.items if item.score is None]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How one request is retried. `attempts` counts every try, the first included
    (1 = never retry); the wait before try n+1 is uniform in [0, min(backoff_max_s,
    backoff_s * 2**(n-1))] ("full jitter"), so clients that failed together do not
    come back together."""

    attempts: int = 3
    backoff_s: float = 0.05
    backoff_max_s: float = 1.0
    cooldown_s: float = 5.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be at least 1, got {self.attempts}")

    def wait_s(self, failures: int) -> float:
        """The pause after `failures` failed tries (>= 1)."""
        ceiling = min(self.backoff_max_s, self.backoff_s * 2 ** (failures - 1))
        return random.uniform(0.0, ceiling)


class _Servers:
    """The base URLs a client spreads its requests over, and which ones failed lately."""

    def __init__(self, base_urls: str | Sequence[str], cooldown_s: float) -> None:
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not urls:
            raise ValueError("a client needs at least one server base URL")
        self.urls = [url.rstrip("/") for url in urls]
        self.cooldown_s = cooldown_s
        self._turn = itertools.count()
        self._failed_until: dict[str, float] = {}

    def order(self) -> list[str]:
        """Every server once, starting one further along than the last request; those
        that failed within the cooldown go last."""
        start = next(self._turn) % len(self.urls)
        turn = self.urls[start:] + self.urls[:start]
        now = time.monotonic()
        return sorted(turn, key=lambda url: self._failed_until.get(url, 0.0) > now)

    def failed(self, url: str) -> None:
        self._failed_until[url] = time.monotonic() + self.cooldown_s

    def answered(self, url: str) -> None:
        self._failed_until.pop(url, None)


@dataclass(frozen=True, slots=True)
class _Try:
    url: str
    wait_s: float  # pause before sending


# What a try came back with: an answer, or the error that stopped it.
_Outcome: TypeAlias = httpx.Response | httpx.TransportError


def _attempts(
    servers: _Servers, policy: RetryPolicy, path: str
) -> Generator[_Try, _Outcome, dict[str, Any]]:
    """One request's tries: yields where to send next and receives what came back;
    returns the answer's JSON, or raises once retrying is pointless or used up."""
    order = servers.order()
    last: Exception | None = None
    for attempt in range(policy.attempts):
        base = order[attempt % len(order)]
        outcome = yield _Try(f"{base}{path}", policy.wait_s(attempt) if attempt else 0.0)
        if isinstance(outcome, httpx.Response) and outcome.status_code not in RETRY_STATUSES:
            servers.answered(base)
            return _checked(outcome)
        servers.failed(base)
        last = _rejection(outcome) if isinstance(outcome, httpx.Response) else outcome
        log.info("%s%s failed (try %d of %d): %s", base, path, attempt + 1, policy.attempts, last)
    if isinstance(last, RequestRejected):
        raise last
    raise ServersUnavailable(
        f"{path}: no answer from {servers.urls} in {policy.attempts} tries; last: {last!r}"
    ) from last


def _recommend_body(
    user_id: str,
    k: int,
    exclude: Sequence[str],
    context: Mapping[str, str | int | float] | None,
    explain: bool,
    item_filter: Mapping[str, Any] | None = None,
    max_per_category: int | None = None,
    diversity: float | None = None,
) -> dict[str, Any]:
    body = _picked({"user_id": user_id, "k": k}, item_filter, max_per_category)
    if diversity is not None:
        body["diversity"] = diversity
    if exclude:
        body["exclude"] = list(exclude)
    if context:
        body["context"] = dict(context)
    if explain:
        body["explain"] = True
    return body


def _similar_body(
    item_id: str, k: int, item_filter: Mapping[str, Any] | None, max_per_category: int | None
) -> dict[str, Any]:
    return _picked({"item_id": item_id, "k": k}, item_filter, max_per_category)


def _picked(
    body: dict[str, Any], item_filter: Mapping[str, Any] | None, max_per_category: int | None
) -> dict[str, Any]:
    """`body` with the catalogue filter and the per-category cap, when given."""
    if item_filter:
        body["filter"] = dict(item_filter)
    if max_per_category is not None:
        body["max_per_category"] = max_per_category
    return body


def _similar(body: dict[str, Any]) -> Similar:
    items = tuple(SimilarItem(i["item_id"], float(i["score"]), i["source"]) for i in body["items"])
    return Similar(body["item_id"], items, body["model_version"], bool(body.get("short", False)))


def _rejection(response: httpx.Response) -> RequestRejected:
    try:
        body = response.json()
        detail = body.get("detail", response.text) if isinstance(body, dict) else body
    except ValueError:
        detail = response.text
    return RequestRejected(response.status_code, detail)


def _checked(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 400:
        raise _rejection(response)
    body: dict[str, Any] = response.json()
    return body


def _items(rows: list[dict[str, Any]]) -> tuple[ScoredItem, ...]:
    return tuple(ScoredItem(r["item_id"], r["score"], r.get("features")) for r in rows)


def _recommendations(body: dict[str, Any]) -> Recommendations:
    return Recommendations(
        body["user_id"],
        _items(body["items"]),
        body["model_version"],
        body.get("fallback"),
        bool(body.get("short", False)),
        tuple(body["history"]) if body.get("history") is not None else None,
        body.get("arm"),
    )


def _scores(body: dict[str, Any]) -> Scores:
    items = tuple(ItemScore(r["item_id"], r["score"], r.get("error")) for r in body["items"])
    return Scores(body["user_id"], items, body["model_version"], body.get("arm"))


class _ClientBase:
    """What both clients are given. `base_urls`: one server's base URL or several;
    `timeout_s`: the longest one try waits for an answer, `connect_timeout_s` for a
    connection (short, so a dead host costs little before the next one is tried);
    `retry`: see `RetryPolicy`."""

    def __init__(
        self,
        base_urls: str | Sequence[str],
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy = RetryPolicy(),
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        api_key: str | None = None,
    ) -> None:
        """`api_key`: sent as `Authorization: Bearer <key>` (servers that require
        keys: docs/serving.md, "Access")."""
        self.servers = _Servers(base_urls, retry.cooldown_s)
        self.retry = retry
        self.timeout = httpx.Timeout(timeout_s, connect=min(connect_timeout_s, timeout_s))
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._open_pool()

    def _open_pool(self) -> None:
        raise NotImplementedError


class RecommenderClient(_ClientBase):
    """Blocking client; one connection pool for every server, close it (or use `with`)."""

    http: httpx.Client

    def _open_pool(self) -> None:
        self.http = httpx.Client(timeout=self.timeout, headers=self.headers)

    def recommend(
        self,
        user_id: str,
        k: int = 20,
        exclude: Sequence[str] = (),
        context: Mapping[str, str | int | float] | None = None,
        explain: bool = False,
        item_filter: Mapping[str, Any] | None = None,
        max_per_category: int | None = None,
        diversity: float | None = None,
    ) -> Recommendations:
        """`item_filter`: the request's `filter` object (include_categories,
        exclude_categories, price_min, price_max, attributes; docs/serving.md);
        `diversity`: the re-rank's weight of novelty, 0 to 1."""
        body = _recommend_body(
            user_id, k, exclude, context, explain, item_filter, max_per_category, diversity
        )
        return _recommendations(self._post("/v1/recommend", body))

    def score(self, user_id: str, item_ids: Sequence[str]) -> Scores:
        return _scores(self._post("/v1/score", {"user_id": user_id, "item_ids": list(item_ids)}))

    def similar(
        self,
        item_id: str,
        k: int = 20,
        item_filter: Mapping[str, Any] | None = None,
        max_per_category: int | None = None,
    ) -> Similar:
        """Items like `item_id`; `item_filter` as in `recommend`."""
        return _similar(
            self._post("/v1/similar", _similar_body(item_id, k, item_filter, max_per_category))
        )

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        tries = _attempts(self.servers, self.retry, path)
        step = next(tries)
        while True:
            if step.wait_s:
                time.sleep(step.wait_s)
            outcome: _Outcome
            try:
                outcome = self.http.post(step.url, json=body)
            except RETRY_ERRORS as exc:
                outcome = exc
            try:
                step = tries.send(outcome)
            except StopIteration as done:
                answer: dict[str, Any] = done.value
                return answer

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncRecommenderClient(_ClientBase):
    """The same for asyncio, with the same arguments; close it (or use `async with`)."""

    http: httpx.AsyncClient

    def _open_pool(self) -> None:
        self.http = httpx.AsyncClient(timeout=self.timeout, headers=self.headers)

    async def recommend(
        self,
        user_id: str,
        k: int = 20,
        exclude: Sequence[str] = (),
        context: Mapping[str, str | int | float] | None = None,
        explain: bool = False,
        item_filter: Mapping[str, Any] | None = None,
        max_per_category: int | None = None,
        diversity: float | None = None,
    ) -> Recommendations:
        """`item_filter`: the request's `filter` object (include_categories,
        exclude_categories, price_min, price_max, attributes; docs/serving.md);
        `diversity`: the re-rank's weight of novelty, 0 to 1."""
        body = _recommend_body(
            user_id, k, exclude, context, explain, item_filter, max_per_category, diversity
        )
        return _recommendations(await self._post("/v1/recommend", body))

    async def score(self, user_id: str, item_ids: Sequence[str]) -> Scores:
        body = {"user_id": user_id, "item_ids": list(item_ids)}
        return _scores(await self._post("/v1/score", body))

    async def similar(
        self,
        item_id: str,
        k: int = 20,
        item_filter: Mapping[str, Any] | None = None,
        max_per_category: int | None = None,
    ) -> Similar:
        """Items like `item_id`; `item_filter` as in `recommend`."""
        body = _similar_body(item_id, k, item_filter, max_per_category)
        return _similar(await self._post("/v1/similar", body))

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        tries = _attempts(self.servers, self.retry, path)
        step = next(tries)
        while True:
            if step.wait_s:
                await asyncio.sleep(step.wait_s)
            outcome: _Outcome
            try:
                outcome = await self.http.post(step.url, json=body)
            except RETRY_ERRORS as exc:
                outcome = exc
            try:
                step = tries.send(outcome)
            except StopIteration as done:
                answer: dict[str, Any] = done.value
                return answer

    async def close(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
