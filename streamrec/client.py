"""A small Python client for the model server's /recommend and /score, sync and async.

with RecommenderClient("http://127.0.0.1:8000") as client:
    answer = client.recommend("user-1", k=10)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import httpx

from streamrec.errors import RequestRejected

DEFAULT_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class ScoredItem:
    item_id: str
    score: float | None  # None in /score answers for items the model does not know
    features: Mapping[str, float] | None = None


@dataclass(frozen=True, slots=True)
class Recommendations:
    user_id: str
    items: tuple[ScoredItem, ...]
    model_version: str
    fallback: str | None  # "trending" or "retrieval" when the ranker did not order them

    @property
    def item_ids(self) -> list[str]:
        return [item.item_id for item in self.items]


@dataclass(frozen=True, slots=True)
class Scores:
    user_id: str
    items: tuple[ScoredItem, ...]
    model_version: str

    @property
    def unknown(self) -> list[str]:
        return [item.item_id for item in self.items if item.score is None]


def _recommend_body(
    user_id: str,
    k: int,
    exclude: Sequence[str],
    context: Mapping[str, str | int | float] | None,
    explain: bool,
) -> dict[str, Any]:
    body: dict[str, Any] = {"user_id": user_id, "k": k}
    if exclude:
        body["exclude"] = list(exclude)
    if context:
        body["context"] = dict(context)
    if explain:
        body["explain"] = True
    return body


def _checked(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise RequestRejected(response.status_code, detail)
    body: dict[str, Any] = response.json()
    return body


def _items(rows: list[dict[str, Any]]) -> tuple[ScoredItem, ...]:
    return tuple(ScoredItem(r["item_id"], r["score"], r.get("features")) for r in rows)


def _recommendations(body: dict[str, Any]) -> Recommendations:
    return Recommendations(
        body["user_id"], _items(body["items"]), body["model_version"], body.get("fallback")
    )


def _scores(body: dict[str, Any]) -> Scores:
    return Scores(body["user_id"], _items(body["items"]), body["model_version"])


class RecommenderClient:
    """Blocking client; one connection pool, close it (or use `with`)."""

    def __init__(self, base_url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=timeout_s)

    def recommend(
        self,
        user_id: str,
        k: int = 20,
        exclude: Sequence[str] = (),
        context: Mapping[str, str | int | float] | None = None,
        explain: bool = False,
    ) -> Recommendations:
        body = _recommend_body(user_id, k, exclude, context, explain)
        return _recommendations(_checked(self.http.post("/recommend", json=body)))

    def score(self, user_id: str, item_ids: Sequence[str]) -> Scores:
        body = {"user_id": user_id, "item_ids": list(item_ids)}
        return _scores(_checked(self.http.post("/score", json=body)))

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncRecommenderClient:
    """The same for asyncio; close it (or use `async with`)."""

    def __init__(self, base_url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.http = httpx.AsyncClient(base_url=base_url, timeout=timeout_s)

    async def recommend(
        self,
        user_id: str,
        k: int = 20,
        exclude: Sequence[str] = (),
        context: Mapping[str, str | int | float] | None = None,
        explain: bool = False,
    ) -> Recommendations:
        body = _recommend_body(user_id, k, exclude, context, explain)
        return _recommendations(_checked(await self.http.post("/recommend", json=body)))

    async def score(self, user_id: str, item_ids: Sequence[str]) -> Scores:
        body = {"user_id": user_id, "item_ids": list(item_ids)}
        return _scores(_checked(await self.http.post("/score", json=body)))

    async def close(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
