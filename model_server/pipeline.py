"""One request's path: the user's state from Redis → user vector (ONNX encoder) →
FAISS candidates → ranking features (streamrec.features) → ONNX ranker →
filters → top-k; the fallbacks (trending, retrieval order); and /score."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np

from model_server.loaded import ServedModel
from streamrec import features
from streamrec import state as redis_state
from streamrec.events import EventType
from streamrec.metrics import ServeMetrics
from streamrec.settings import Settings
from streamrec.state import StateStore

Fallback = Literal["trending", "retrieval"]
TYPE_IDS = features.ENCODER_TYPE_IDS  # the ids training used: one table, never two
TRENDING_TYPES = (EventType.CLICK, EventType.PURCHASE)
# Weight of the newest ranking time in the running estimate of the next one.
RANK_ESTIMATE_WEIGHT = 0.1


@dataclass(frozen=True)
class RankedItem:
    item_id: str
    score: float
    features: Mapping[str, float] | None = None


@dataclass(frozen=True)
class Recommendation:
    items: list[RankedItem]
    model_version: str
    fallback: Fallback | None
    candidates: int


@dataclass(frozen=True)
class ItemScore:
    item_id: str
    score: float | None  # None: the model does not know the item


@dataclass(frozen=True)
class Scores:
    items: list[ItemScore]
    model_version: str


def feature_user(user: redis_state.UserState) -> features.UserState:
    """The state store's view of a user, in the shape `ranking_features` takes."""
    return features.UserState(
        recent_events=tuple(
            features.RecentEvent(e.item_id, e.type, e.ts_ms) for e in user.recent_events
        ),
        purchased=user.purchased,
        item_counts={
            item_id: {EventType(t): n for t, n in by_type.items()}
            for item_id, by_type in user.item_counts.items()
        },
    )


def encoder_inputs(
    model: ServedModel, recent: Sequence[features.RecentEvent]
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(item_ids, type_ids, mask) for one user, as training's left padding makes them;
    None when no recent item is known to the model."""
    rows = model.bundle.rows
    known = [(rows[e.item_id], TYPE_IDS[e.type]) for e in recent if e.item_id in rows]
    known = known[-model.bundle.max_len :]
    if not known:
        return None
    item_ids = np.array([[row for row, _ in known]], dtype=np.int64)
    type_ids = np.array([[type_id for _, type_id in known]], dtype=np.int64)
    return item_ids, type_ids, np.ones(item_ids.shape, dtype=np.float32)


def popularity_by_type(
    rows: Sequence[redis_state.ItemPopularity],
) -> dict[str, dict[EventType, float]]:
    return {p.item_id: {EventType(t): v for t, v in p.by_type.items()} for p in rows}


class Recommender:
    """Answers /recommend and /score from Redis state and one served model."""

    def __init__(self, settings: Settings, store: StateStore, metrics: ServeMetrics) -> None:
        self.store = store
        self.metrics = metrics
        self.candidates = settings.retrieval_candidates
        self.budget_s = settings.serve_budget_ms / 1000
        self.half_life_s = settings.popularity_half_life_s
        self._rank_estimate_s = 0.0

    @contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.metrics.stage_seconds.labels(name).observe(time.perf_counter() - started)

    async def recommend(
        self,
        model: ServedModel,
        user_id: str,
        k: int,
        exclude: Collection[str] = (),
        explain: bool = False,
    ) -> Recommendation:
        deadline = time.perf_counter() + self.budget_s
        now_ms = int(time.time() * 1000)
        with self._stage("redis"):
            stored = await self.store.read_user(user_id)
        removed = stored.purchased | set(exclude)
        user = feature_user(stored)
        inputs = encoder_inputs(model, user.recent_events)
        if inputs is None:
            self.metrics.fallbacks.labels("trending").inc()
            return Recommendation(await self.trending(k, removed), model.version, "trending", 0)

        with self._stage("encode"):
            user_vector = model.bundle.user_vectors(*inputs)
        with self._stage("retrieve"):
            scores, rows = model.bundle.search(user_vector, min(self.candidates, model.n_items))
        found = rows[0] > 0
        candidate_ids = [model.bundle.item_ids[row - 1] for row in rows[0][found]]
        dots = scores[0][found]
        self.metrics.candidates.observe(len(candidate_ids))

        ranked = await self._rank(model, candidate_ids, dots, user, now_ms, deadline)
        if ranked is None:
            self.metrics.fallbacks.labels("retrieval").inc()
            items = [RankedItem(i, float(s)) for i, s in zip(candidate_ids, dots, strict=True)]
            return Recommendation(
                _top(items, k, removed), model.version, "retrieval", len(candidate_ids)
            )
        rank_scores, feature_rows = ranked
        order = np.argsort(-rank_scores, kind="stable")
        items = [
            RankedItem(
                candidate_ids[i],
                float(rank_scores[i]),
                _explained(feature_rows[i], float(dots[i])) if explain else None,
            )
            for i in order
        ]
        return Recommendation(_top(items, k, removed), model.version, None, len(candidate_ids))

    async def _rank(
        self,
        model: ServedModel,
        candidate_ids: list[str],
        dots: np.ndarray,
        user: features.UserState,
        now_ms: int,
        deadline: float,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Ranker scores and feature rows, or None when the budget cannot cover them."""
        started = time.perf_counter()
        if deadline - started <= self._rank_estimate_s:
            return None
        # The read is not cancelled at the deadline: cancelling a Redis call midway
        # can leave its connection out of step with its replies.
        with self._stage("features"):
            popularity = await self.store.read_item_popularity(candidate_ids, now_ms)
            feature_rows = features.ranking_features(
                candidate_ids, dots, user, popularity_by_type(popularity), now_ms, self.half_life_s
            )
        if time.perf_counter() >= deadline:
            return None
        with self._stage("rank"):
            rank_scores = model.bundle.score(feature_rows)
        spent_s = time.perf_counter() - started
        self._rank_estimate_s += RANK_ESTIMATE_WEIGHT * (spent_s - self._rank_estimate_s)
        return rank_scores, feature_rows

    async def trending(self, k: int, removed: Collection[str] = ()) -> list[RankedItem]:
        """Items by decayed popularity, purchases weighted above clicks."""
        wanted = k + len(removed)
        with self._stage("redis"):
            per_type = await asyncio.gather(
                *(self.store.trending(t, wanted) for t in TRENDING_TYPES)
            )
        combined: dict[str, float] = {}
        for event_type, rows in zip(TRENDING_TYPES, per_type, strict=True):
            for item_id, score in rows:
                combined[item_id] = (
                    combined.get(item_id, 0.0) + features.TYPE_WEIGHTS[event_type] * score
                )
        ordered = sorted(combined.items(), key=lambda pair: -pair[1])
        return _top([RankedItem(i, s) for i, s in ordered], k, removed)

    async def score(self, model: ServedModel, user_id: str, item_ids: Sequence[str]) -> Scores:
        """Ranker scores for the given items; unknown items get None."""
        now_ms = int(time.time() * 1000)
        with self._stage("redis"):
            stored = await self.store.read_user(user_id)
        user = feature_user(stored)
        rows = model.bundle.rows
        known_ids = [i for i in item_ids if i in rows]
        by_item: dict[str, float] = {}
        if known_ids:
            inputs = encoder_inputs(model, user.recent_events)
            with self._stage("encode"):
                if inputs is None:
                    user_vector = np.zeros(model.dim, dtype=np.float32)
                else:
                    user_vector = model.bundle.user_vectors(*inputs)[0]
            dots = model.item_vectors([rows[i] for i in known_ids]) @ user_vector
            with self._stage("features"):
                popularity = await self.store.read_item_popularity(known_ids, now_ms)
                feature_rows = features.ranking_features(
                    known_ids, dots, user, popularity_by_type(popularity), now_ms, self.half_life_s
                )
            with self._stage("rank"):
                rank_scores = model.bundle.score(feature_rows)
            by_item = {i: float(s) for i, s in zip(known_ids, rank_scores, strict=True)}
        return Scores([ItemScore(i, by_item.get(i)) for i in item_ids], model.version)


def _top(items: Sequence[RankedItem], k: int, removed: Collection[str]) -> list[RankedItem]:
    top: list[RankedItem] = []
    seen: set[str] = set()
    for item in items:
        if item.item_id in removed or item.item_id in seen:
            continue
        seen.add(item.item_id)
        top.append(item)
        if len(top) == k:
            break
    return top


def _explained(row: np.ndarray, retrieval_score: float) -> dict[str, float]:
    explained = {name: float(v) for name, v in zip(features.FEATURE_NAMES, row, strict=True)}
    explained["retrieval_score"] = retrieval_score
    return explained
