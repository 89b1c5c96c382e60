"""One request's path: the user's state from Redis → user vector (ONNX encoder) →
FAISS candidates → ranking features (streamrec.features) → ONNX ranker →
filters → top-k; the fallbacks (trending, retrieval order, and trending before
the first model is loaded); and /score."""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_right
from collections.abc import (
    Awaitable,
    Callable,
    Collection,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, replace
from itertools import repeat
from types import TracebackType
from typing import Any, Literal, TypeVar

import numpy as np
from prometheus_client import Histogram
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from model_server.catalogue_mirror import CatalogueMirror
from model_server.catalogue_rows import CatalogueRows
from model_server.diversity import mmr_order
from model_server.filters import NO_FILTER, ItemFilter, Picker, fill_sources
from model_server.popularity import PopularityTable
from model_server.prewarm import Prewarm
from model_server.trending import TrendingReader
from streamrec import features
from streamrec import state as redis_state
from streamrec.catalogue import Catalogue
from streamrec.covis import covis_scores
from streamrec.loaded import ServedModel
from streamrec.metrics import ServeMetrics
from streamrec.settings import Settings
from streamrec.state import StateStore
from streamrec.user_vectors import (
    EncoderInputs,
    cache_entry,
    cached_user_vector,
    user_encoder_inputs,
)

Fallback = Literal["trending", "retrieval"]
T = TypeVar("T")
# Weight of the newest ranking time in the running estimate of the next one.
RANK_ESTIMATE_WEIGHT = 0.1
STAGES = ("redis", "encode", "retrieve", "features", "rank")


class RankEstimate:
    """A running estimate of what ranking costs, to skip it (retrieval order) when
    the request's remaining budget cannot cover it. A sample counts for at most the
    whole budget, and each skip shrinks the estimate by the newest sample's weight:
    one stalled rank (a GC pause, a frozen Redis) must not keep ranking off for
    good, as it did when only completed ranks moved the estimate."""

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.estimate_s = 0.0

    def covers(self, remaining_s: float) -> bool:
        if remaining_s > self.estimate_s:
            return True
        self.estimate_s *= 1 - RANK_ESTIMATE_WEIGHT
        return False

    def record(self, spent_s: float) -> None:
        sample_s = min(spent_s, self.budget_s)
        self.estimate_s += RANK_ESTIMATE_WEIGHT * (sample_s - self.estimate_s)


# Not frozen: a filtered answer makes several hundred of these, and a frozen
# dataclass took 3 µs each to make against 0.9 µs (a slow day): a tenth of that
# answer's CPU. Nothing changes one after it is made.
@dataclass(slots=True)
class RankedItem:
    item_id: str
    score: float
    features: Mapping[str, float] | None = None
    source: str | None = None  # /similar: which list the item came from


class Offer:
    """Items offered to a filtered answer, in order, made into `RankedItem`s only
    when chosen: the picker reads ids, and making every offered item cost a tenth
    of a filtered answer's CPU (a few hundred offered, twenty chosen)."""

    __slots__ = ("_make", "category", "ids", "included")

    def __init__(
        self,
        ids: list[str],
        make: Callable[[int], RankedItem],
        category: str | None = None,
        included: bool = False,
    ) -> None:
        self.ids = ids
        self._make = make
        self.category = category  # every item is in it: a category's most popular list
        self.included = included  # every item is in one of the filter's included categories

    @classmethod
    def of(cls, items: Sequence[RankedItem]) -> Offer:
        return cls([item.item_id for item in items], items.__getitem__)

    @classmethod
    def scored(
        cls, ids: list[str], score: float, source: str, category: str | None = None
    ) -> Offer:
        return cls(ids, lambda p: RankedItem(ids[p], score, source=source), category)

    def item(self, position: int) -> RankedItem:
        return self._make(position)

    def items(self) -> list[RankedItem]:
        return [self._make(p) for p in range(len(self.ids))]


@dataclass(frozen=True)
class Recommendation:
    items: list[RankedItem]
    model_version: str | None  # None: no model loaded yet, the answer is trending
    fallback: Fallback | None
    candidates: int
    # The user vector this answer computed (the cache had none for this state and
    # version): to be stored after the answer is sent.
    fresh_vector: redis_state.CachedVector | None = None
    # False for a user without state (or whose state did not come in time): nothing
    # of the answer is written back, so made-up user ids cannot fill Redis.
    has_state: bool = True
    # With explain: the user's recent events the answer was computed from.
    history: Sequence[redis_state.StoredEvent] = ()

    def body(self, user_id: str, k: int, arm: str | None = None) -> dict[str, object]:
        """The answer on the wire, the one shape `/recommend` returns and the
        recommendations feed sends (docs/serving.md); `arm`: the user's arm of the
        running experiment, None without one."""
        items = []
        for item in self.items:
            row: dict[str, object] = {"item_id": item.item_id, "score": item.score}
            if item.features is not None:
                row["features"] = item.features
            items.append(row)
        return {
            "user_id": user_id,
            "items": items,
            "model_version": self.model_version,
            "arm": arm,
            "fallback": self.fallback,
            "short": len(items) < k,
        }


@dataclass(frozen=True)
class ItemScore:
    item_id: str
    score: float | None  # None: the model does not know the item


@dataclass(frozen=True)
class ScoreAnswer:
    items: list[ItemScore]
    model_version: str


def feature_user(
    user: redis_state.StoredUser, now_ms: int, covis_half_life_s: float
) -> features.UserState:
    """The state store's view of a user, in the shape `ranking_features` takes, with
    its co-visitation links scored at `now_ms`."""
    covis_total, covis_latest = covis_scores(
        [(links, epoch) for _, links, epoch in user.covis], now_ms, covis_half_life_s
    )
    return features.UserState(
        recent_events=user.recent_events,
        purchased=user.purchased,
        item_counts=user.item_counts,
        covis_total=covis_total,
        covis_latest=covis_latest,
    )


class Recommender:
    """Answers /recommend and /score from Redis state and one served model.

    With `redis_timeout_s` (the model server's requests) every Redis wait is bounded
    and an answer degrades when one runs out: trending as last read, retrieval order.
    Without (the recommendations feed, which has no one waiting) Redis waits as
    long as it takes and its errors propagate."""

    def __init__(
        self,
        settings: Settings,
        store: StateStore,
        metrics: ServeMetrics,
        popularity: PopularityTable | None = None,
        prewarm: Prewarm | None = None,
        redis_timeout_s: float | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.popularity = popularity
        self.prewarm = prewarm
        # Used only for a bundle whose manifest does not say how many the ranker saw.
        self.default_candidates = settings.retrieval_candidates
        self.live_candidates = settings.serve_live_item_candidates
        # The request budget is for someone waiting: the feed (no Redis timeout) ranks
        # every answer, however long its cold first one takes.
        self.budget_s = (
            settings.serve_budget_ms / 1000 if redis_timeout_s is not None else float("inf")
        )
        self.redis_timeout_s = redis_timeout_s
        self.catalogue = Catalogue(settings, client=store.redis)
        # Its owner (the app, the feed) reads it in full at start and has it follow.
        self.mirror = CatalogueMirror(
            self.catalogue,
            settings.serve_catalogue_poll_s,
            settings.serve_catalogue_max_lag_s,
            settings.serve_popularity_refresh_s,
        )
        self.trending_reader = TrendingReader(
            store, settings.trending_max_items, self.mirror.available
        )
        self.half_life_s = settings.popularity_half_life_s
        self.covis_half_life_s = settings.covis_half_life_s
        self.trending_only = settings.serve_strategy == "trending"
        self.exclude_purchased = settings.serve_exclude_purchased
        # The trending candidates, read at most once per refresh (they move slowly),
        # per version (an experiment's arms may know other items than the current one).
        self._trending_refresh_s = settings.serve_popularity_refresh_s
        self._trending_ids: dict[str, tuple[float, int, list[str]]] = {}
        # The catalogue by each held version's rows (model_server/catalogue_rows.py).
        self._catalogue_rows: dict[str, CatalogueRows] = {}
        self._rank_estimate = RankEstimate(self.budget_s)
        # Looked up once: five label lookups per request were a visible share of it.
        self._stage_seconds = {name: metrics.stage_seconds.labels(name) for name in STAGES}

    def candidates_for(self, model: ServedModel) -> int:
        """C: what the ranker was trained on (its softmax and rank features depend on it)."""
        wanted = model.bundle.manifest.retrieval_candidates or self.default_candidates
        return min(wanted, model.n_items)

    def _stage(self, name: str) -> _Timed:
        return _Timed(self._stage_seconds[name])

    async def _bounded(self, call: Coroutine[Any, Any, T], deadline: float | None = None) -> T:
        """`call`'s result, or a Redis TimeoutError after the Redis timeout (or at
        `deadline`, if sooner). Cancelling is safe here: redis-py drops a connection
        whose reply it gave up on, the pipelined one reads and discards it.

        `asyncio.wait`, not `asyncio.timeout`: a reply that came in while the event
        loop was busy with other requests counts, though the loop sees it only in
        the same turn as the timer (a cancelling timeout would win that race: under
        load, 503s for replies that were there in time)."""
        if self.redis_timeout_s is None:
            return await call
        timeout_s = self.redis_timeout_s
        if deadline is not None:
            timeout_s = max(min(timeout_s, deadline - time.perf_counter()), 0.0)
        task = asyncio.ensure_future(call)
        done, _ = await asyncio.wait((task,), timeout=timeout_s)
        if not done:
            task.cancel()
            raise RedisTimeoutError(f"Redis did not answer within {timeout_s * 1000:.0f} ms")
        return task.result()

    async def recommend(
        self,
        model: ServedModel | None,
        user_id: str,
        k: int,
        exclude: Collection[str] = (),
        explain: bool = False,
        item_filter: ItemFilter = NO_FILTER,
        max_per_category: int = 0,
        diversity: float = 0.0,
    ) -> Recommendation:
        """With `item_filter` or `max_per_category` the answer is picked from the
        ranked candidates, then the included categories' most popular items and
        trending, against the catalogue's records (model_server/filters.py, held in
        the process: model_server/catalogue_mirror.py). With
        `diversity` > 0 the ranked order is re-ranked first (model_server/diversity.py).
        Without a `model` (none loaded yet) every user gets trending, their purchases
        and `exclude` removed, through the filter and the cap; `model_version` None."""
        deadline = time.perf_counter() + self.budget_s
        filtered = item_filter.active or max_per_category > 0
        now_ms = int(time.time() * 1000)
        try:
            with self._stage("redis"):
                stored = await self._bounded(self.store.read_user(user_id))
        except RedisError:
            if self.redis_timeout_s is None:
                raise
            # No state in time: trending as last read (none held: the error, a 503),
            # through the filter and the cap, checked against the process's catalogue
            # (one too far behind to check them: a 503, never an unchecked answer).
            self.metrics.fallbacks.labels(_trending_kind(model)).inc()
            if filtered:
                held = self._trending_as_last_read(model, FILL_READ, set(exclude))
                items = await self._pick(
                    model, Offer.of(held), k, set(exclude), item_filter, max_per_category
                )
            else:
                items = self._trending_as_last_read(model, k, set(exclude))
            version = None if model is None else model.version
            return Recommendation(items, version, "trending", 0, has_state=False)
        removed = (stored.purchased if self.exclude_purchased else frozenset()) | set(exclude)
        history = tuple(stored.recent_events) if explain else ()
        if model is None or self.trending_only or not stored.recent_events:
            self.metrics.fallbacks.labels(_trending_kind(model)).inc()
            items = await self._unranked(model, k, removed, item_filter, max_per_category)
            has_state = bool(stored.recent_events)
            version = None if model is None else model.version
            return Recommendation(
                items, version, "trending", 0, has_state=has_state, history=history
            )
        user = feature_user(stored, now_ms, self.covis_half_life_s)
        inputs = user_encoder_inputs(model, stored.recent_events)
        user_vector: np.ndarray | None = None
        fresh_vector = None
        if inputs is not None:
            if self.prewarm is not None:
                self.prewarm.answered(model, stored, inputs)
            user_vector, fresh_vector = self._user_vector(model, stored, inputs)
        with self._stage("retrieve"):
            candidate_ids, vocab_rows, dots, user, unavailable = await self._candidate_set(
                model, user, user_vector
            )
        removed |= unavailable
        if not candidate_ids:
            self.metrics.fallbacks.labels("trending").inc()
            items = await self._unranked(model, k, removed, item_filter, max_per_category)
            return Recommendation(items, model.version, "trending", 0, history=history)
        self.metrics.candidates.observe(len(candidate_ids))

        ranked = await self._rank(model, vocab_rows, candidate_ids, dots, user, now_ms, deadline)
        fallback: Fallback | None
        order: Sequence[int]
        if ranked is None:
            self.metrics.fallbacks.labels("retrieval").inc()
            # Retrieval order; the candidates without a vector after the others.
            item_scores = np.nan_to_num(dots, nan=float(np.nanmin(dots, initial=0.0)) - 1.0)
            fallback, order, feature_rows = "retrieval", range(len(dots)), None
        else:
            item_scores, feature_rows = ranked
            fallback, order = None, np.argsort(-item_scores, kind="stable").tolist()
            if diversity > 0:
                vectors = np.zeros((len(vocab_rows), model.dim), dtype=np.float32)
                known = np.flatnonzero(vocab_rows > 0)
                if len(known):
                    vectors[known] = model.item_vectors(vocab_rows[known].tolist())
                pool = min(len(order), DIVERSITY_POOL_PER_ITEM * k)
                order = mmr_order(order, item_scores, vectors, diversity, pool)

        def ranked_item(i: int) -> RankedItem:
            explained = None
            if explain and feature_rows is not None:
                shown = float(dots[i]) if not np.isnan(dots[i]) else 0.0
                explained = _explained(feature_rows[i], shown)
            return RankedItem(candidate_ids[i], float(item_scores[i]), explained)

        def in_order() -> Iterator[RankedItem]:
            return (ranked_item(i) for i in order)

        if filtered:
            ordered = list(order)
            included = bool(item_filter.include_categories and self.mirror.records)
            if included:
                # The candidates in none of the included categories, dropped in one
                # step from their category codes: the picker would look each up.
                inside = self.catalogue_rows(model).within(
                    vocab_rows, candidate_ids, item_filter.include_categories
                )
                ordered = np.asarray(ordered, dtype=np.int64)[inside[ordered]].tolist()
            offer = Offer(
                [candidate_ids[i] for i in ordered],
                lambda p: ranked_item(ordered[p]),
                included=included,
            )
            items = await self._filtered(model, offer, k, removed, item_filter, max_per_category)
            return Recommendation(
                items, model.version, fallback, len(candidate_ids), fresh_vector, history=history
            )
        items = _top(in_order(), k, removed)
        if len(items) < k:
            # The filters removed too many candidates: trending items fill the rest.
            taken = removed | {item.item_id for item in items}
            items += await self.trending(model, k - len(items), taken, required=False)
        return Recommendation(
            items, model.version, fallback, len(candidate_ids), fresh_vector, history=history
        )

    async def _unranked(
        self,
        model: ServedModel | None,
        k: int,
        removed: Collection[str],
        item_filter: ItemFilter,
        max_per_category: int,
    ) -> list[RankedItem]:
        """Trending, through the filters and the cap when the request has any."""
        if item_filter.active or max_per_category > 0:
            nothing = Offer.of([])
            return await self._filtered(model, nothing, k, removed, item_filter, max_per_category)
        return await self.trending(model, k, removed)

    async def _category_items(
        self, categories: Sequence[str], removed: Collection[str] = ()
    ) -> list[Offer]:
        """The most popular available items of each category (of the top `FILL_READ`
        of each), an offer per category in turn; none when Redis does not answer in
        time (the answer fills from its other sources, or says it is short)."""
        try:
            lists = self.mirror.held_popular(categories, FILL_READ, FILL_READ)
            if lists is None:
                lists = await self._bounded(self.mirror.popular(categories, FILL_READ, FILL_READ))
        except RedisError:
            if self.redis_timeout_s is None:
                raise
            return []
        return [
            Offer.scored([i for i in popular if i not in removed], 0.0, "category", category)
            for category, popular in zip(categories, lists, strict=True)
        ]

    async def _filtered(
        self,
        model: ServedModel | None,
        ranked: Offer,
        k: int,
        removed: Collection[str],
        item_filter: ItemFilter,
        max_per_category: int,
    ) -> list[RankedItem]:
        """The first `k` of `ranked`, then of trending, then of the included
        categories' most popular items, that the filter admits, available, not
        `removed`, at most `max_per_category` of a category. The catalogue must
        answer: a filter it cannot check is a Redis error (a 503), never ignored."""

        async def trending() -> Offer:
            return Offer.of(
                await self.trending(model, max(FILL_READ, 2 * k), removed, required=False)
            )

        return await self._pick(model, ranked, k, removed, item_filter, max_per_category, trending)

    async def _pick(
        self,
        model: ServedModel | None,
        offered: Offer,
        k: int,
        removed: Collection[str],
        item_filter: ItemFilter,
        max_per_category: int,
        fill: Callable[[], Awaitable[Offer]] | None = None,
    ) -> list[RankedItem]:
        """The first `k` of `offered`, then of the included categories' most popular
        items, then of `fill`'s items, that are available, not `removed`, admitted
        by the filter and within the per-category cap; when that leaves fewer than k
        and nothing was included by name, once more from the most popular items of
        the categories the answer (or else the offer) holds. A further source is
        read only when those before it cannot fill the answer. With a filter or a
        cap the catalogue must be current: one it cannot check is a 503
        (`CatalogueBehind`), never ignored."""
        if item_filter.active or max_per_category > 0:
            self.mirror.check_current()
        record = self.mirror.records.get  # the dict's own: a method call less per item
        picker = Picker(
            record, k, item_filter, max_per_category, removed, self.mirror.categories_of
        )
        # What the picker was offered, in order, each with its first position.
        offers: list[Offer] = []
        starts: list[int] = []

        def offer(items: Offer) -> None:
            offers.append(items)
            starts.append(picker.offered)
            picker.offer(items.ids, items.category, items.included)

        def offered_at(position: int) -> tuple[Offer, int]:
            n = bisect_right(starts, position) - 1
            return offers[n], position - starts[n]

        offer(offered)
        included = sorted(item_filter.include_categories)
        # Named categories' own most popular items before trending: few trending
        # items pass such a filter, and offering them first cost more CPU than
        # anything else in a filtered answer (docs/decisions.md).
        sources: list[Callable[[], Awaitable[list[Offer]]]] = []
        if included:
            sources.append(lambda: self._category_items(included, removed))
        if fill is not None:
            filling = fill

            async def filled() -> list[Offer]:
                return [await filling()]

            sources.append(filled)
        answer_categories_read = bool(included)
        while not picker.full:
            if sources:
                for items in await sources.pop(0)():
                    offer(items)
            elif not answer_categories_read:
                answer_categories_read = True
                # The answer's categories, or (when the filter admitted nothing) the offer's.
                chosen = [record(_offered_id(offered_at(p))) for p in picker.chosen]
                categories = fill_sources(
                    chosen or (record(i) for items in offers for i in items.ids if i not in removed)
                )
                if not categories:
                    break
                for items in await self._category_items(categories, removed):
                    offer(items)
            else:
                break
        return [items.item(p) for items, p in map(offered_at, picker.chosen)]

    async def similar(
        self,
        model: ServedModel | None,
        item_id: str,
        k: int,
        item_filter: ItemFilter = NO_FILTER,
        max_per_category: int = 0,
    ) -> Recommendation:
        """Items like `item_id` ("customers who viewed this"), in this order: its
        real-time co-visitation neighbours by decayed weight, the most popular items
        of its categories, its nearest items by the model's item vectors, then
        trending; each once, available, filtered and capped as /recommend's (the
        order: bench/reports/similar.md). Without a `model` (none loaded yet): the
        same without the vector neighbours, `model_version` None."""
        now_ms = int(time.time() * 1000)
        with self._stage("redis"):
            links, epoch = await self._bounded(self.store.read_item_links(item_id, SIMILAR_READ))
        offered: list[RankedItem] = []
        if links:
            _, weights = covis_scores([(links, epoch)], now_ms, self.covis_half_life_s)
            by_weight = sorted(weights.items(), key=lambda pair: (-pair[1], pair[0]))
            offered += [RankedItem(i, w, source="covis") for i, w in by_weight]
        with self._stage("redis"):
            for listed in await self._category_items(self.mirror.categories(item_id)):
                offered += listed.items()
        row = 0 if model is None else model.bundle.rows.get(item_id, 0)
        if model is not None and row > 0:
            with self._stage("retrieve"):
                vector = np.asarray(model.item_vectors([row]), dtype=np.float32).reshape(1, -1)
                scores, rows = model.bundle.search(vector, min(SIMILAR_READ + 1, model.n_items))
            offered += [
                RankedItem(model.item_id_by_row[r], float(v), source="vector")
                for v, r in zip(scores[0], rows[0], strict=True)
                if r > 0
            ]
        sourced = len(offered)
        fill = await self.trending(model, max(FILL_READ, 2 * k), (item_id,), required=False)
        offered += [replace(item, source="trending") for item in fill]
        items = await self._pick(
            model, Offer.of(offered), k, {item_id}, item_filter, max_per_category
        )
        version = None if model is None else model.version
        return Recommendation(items, version, None, sourced, has_state=False)

    def _user_vector(
        self, model: ServedModel, stored: redis_state.StoredUser, inputs: EncoderInputs
    ) -> tuple[np.ndarray, redis_state.CachedVector | None]:
        """(1, dim) from the cache when this version computed it from this very state
        (the stream worker refreshes it after each event); else from the encoder,
        with the entry to cache."""
        cached = cached_user_vector(model, stored)
        if cached is not None:
            return cached, None
        if self.prewarm is not None:
            warm = self.prewarm.vector(model, stored)
            if warm is not None:
                return warm  # computed before the swap; the answer writes it back
        with self._stage("encode"):
            user_vector = model.bundle.user_vectors(*inputs)
        return user_vector, cache_entry(model, stored, user_vector)

    async def _rank(
        self,
        model: ServedModel,
        vocab_rows: np.ndarray,
        candidate_ids: list[str],
        dots: np.ndarray,
        user: features.UserState,
        now_ms: int,
        deadline: float,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Ranker scores and feature rows, or None when the budget cannot cover them."""
        started = time.perf_counter()
        if not self._rank_estimate.covers(deadline - started):
            return None
        with self._stage("features"):
            try:
                stored = self._held_popularity(model, vocab_rows)
                if stored is None:
                    stored = await self._bounded(
                        self._stored_popularity(model, vocab_rows, candidate_ids), deadline
                    )
            except RedisError:
                if self.redis_timeout_s is None:
                    raise
                return None  # retrieval order, within the budget
            feature_rows = features.ranking_features(
                candidate_ids,
                dots,
                user,
                redis_state.decay_popularity(stored, now_ms, self.half_life_s),
                now_ms,
                self.half_life_s,
                redis_state.first_seen(stored),
                self._candidate_catalogue(model, vocab_rows, candidate_ids),
            )
        if time.perf_counter() >= deadline:
            return None
        with self._stage("rank"):
            rank_scores = model.bundle.score(feature_rows)
        self._rank_estimate.record(time.perf_counter() - started)
        return rank_scores, feature_rows

    def catalogue_rows(self, model: ServedModel) -> CatalogueRows:
        """The catalogue by `model`'s rows, built on first use (a version is prepared
        before it serves: `prepare_catalogue_rows`)."""
        held = self._catalogue_rows.get(model.version)
        if held is None:
            if len(self._catalogue_rows) >= 4:  # current, incoming, arms: the oldest goes
                del self._catalogue_rows[next(iter(self._catalogue_rows))]
            held = CatalogueRows(self.mirror, model.bundle.rows, len(model.bundle.item_ids))
            self._catalogue_rows[model.version] = held
        return held

    async def prepare_catalogue_rows(self, model: ServedModel) -> None:
        """Build `model`'s catalogue rows before it serves (`ModelHolder.before_swap`
        and `before_arm`): a million items take a second, not a request's."""
        self.catalogue_rows(model).current()

    def _candidate_catalogue(
        self, model: ServedModel, vocab_rows: np.ndarray, candidate_ids: list[str]
    ) -> features.CandidateCatalogue | None:
        if not self.mirror.records:
            return None  # no catalogue: the columns stay 0
        return self.catalogue_rows(model).candidates(vocab_rows, candidate_ids)

    def _held_popularity(self, model: ServedModel, vocab_rows: np.ndarray) -> np.ndarray | None:
        """`_stored_popularity` when the in-process table answers it whole (every
        candidate known to the model): no Redis call, so none to bound (a bounded
        call costs a task and a wait, ~30 µs on a slow day)."""
        if self.popularity is None or not vocab_rows.all():
            return None
        return self.popularity.stored(model, vocab_rows)

    async def _stored_popularity(
        self, model: ServedModel, vocab_rows: np.ndarray, item_ids: list[str]
    ) -> np.ndarray:
        """The candidates' popularity as stored (with their first event times): from
        the in-process table when it holds this version (the items the model does
        not know, row 0, from Redis), else all from Redis."""
        if self.popularity is not None:
            held = self.popularity.stored(model, vocab_rows)
            if held is not None:
                unknown = np.flatnonzero(vocab_rows == 0)
                if len(unknown):
                    held[unknown] = await self.store.read_stored_popularity(
                        [item_ids[i] for i in unknown]
                    )
                return held
        return await self.store.read_stored_popularity(item_ids)

    async def _trending_candidates(self, model: ServedModel, n: int) -> list[str]:
        """The top `n` trending items the model knows, as training adds them to the
        candidates; read at most once per `serve_popularity_refresh_s`, and none
        while Redis does not answer (the other candidates still do)."""
        if n <= 0:
            return []
        read_at, read_n, ids = self._trending_ids.get(model.version, (-float("inf"), 0, []))
        if read_n != n or time.monotonic() - read_at >= self._trending_refresh_s:
            ids = [item.item_id for item in await self.trending(model, n, required=False)]
            if model.version not in self._trending_ids and len(self._trending_ids) >= 4:
                self._trending_ids.clear()  # versions swapped out long ago
            self._trending_ids[model.version] = (time.monotonic(), n, ids)
        return ids

    async def trending(
        self,
        model: ServedModel | None,
        k: int,
        removed: Collection[str] = (),
        required: bool = True,
    ) -> list[RankedItem]:
        """Items the model knows (any before the first model) by decayed popularity
        (model_server/trending.py); as
        last read when Redis does not answer in time. Never read: the error, or with
        `required=False` (filling up a ranked answer) none. A read younger than
        `serve_popularity_refresh_s` serves, availability applied now (trending
        moves slowly, as the popularity columns, held as long; reading it per request
        was half of a trending answer's CPU and a tenth of a filtered one's:
        docs/decisions.md)."""
        wanted = k + len(removed)
        try:
            ordered = self.trending_reader.recent(model, wanted, self._trending_refresh_s)
            if ordered is None:
                with self._stage("redis"):
                    ordered = await self._bounded(
                        self.trending_reader.read(model, wanted, self._trending_refresh_s)
                    )
        except RedisError:
            if self.redis_timeout_s is None:
                raise
            if self.trending_reader.held(model) is None and not required:
                return []
            return self._trending_as_last_read(model, k, removed)
        return _top([RankedItem(i, s) for i, s in ordered], k, removed)

    async def hold_trending(self, model: ServedModel | None) -> None:
        """Read trending now, with no request's bound (at start-up): what /recommend
        answers from while Redis does not answer."""
        await self.trending_reader.read(model, 0)

    def _trending_as_last_read(
        self, model: ServedModel | None, k: int, removed: Collection[str]
    ) -> list[RankedItem]:
        held = self.trending_reader.held(model)
        if held is None:
            raise RedisTimeoutError("Redis did not answer and no trending read is held")
        return _top((RankedItem(i, s) for i, s in held), k, removed)

    async def score(self, model: ServedModel, user_id: str, item_ids: Sequence[str]) -> ScoreAnswer:
        """Ranker scores for the given items, each ranked as if it were among the
        candidates /recommend ranks for this user: its retrieval softmax and rank are
        taken against that set (with the item added when it is not in it), never
        against the other items sent, so an item's score is the same alone, repeated,
        among others and inside /recommend. Unknown items get None."""
        now_ms = int(time.time() * 1000)
        with self._stage("redis"):
            stored = await self._bounded(self.store.read_user(user_id))
        user = feature_user(stored, now_ms, self.covis_half_life_s)
        rows = model.bundle.rows
        wanted = list(dict.fromkeys(i for i in item_ids if i in rows))
        by_item: dict[str, float] = {}
        if wanted:
            inputs = user_encoder_inputs(model, stored.recent_events)
            user_vector = None if inputs is None else self._user_vector(model, stored, inputs)[0]
            with self._stage("retrieve"):
                # An unavailable item is scored all the same: the caller asked for it.
                candidate_ids, candidate_rows, candidate_dots, user, _ = await self._candidate_set(
                    model, user, user_vector, wanted
                )
                place = {item_id: n for n, item_id in enumerate(candidate_ids)}
                outsiders = [i for i in wanted if i not in place]
                outsider_rows = np.array([rows[i] for i in outsiders], dtype=np.int64)
                vector = np.zeros(model.dim, np.float32) if user_vector is None else user_vector[0]
                outsider_dots = model.item_vectors(outsider_rows.tolist()) @ vector
            with self._stage("features"):
                every_id = candidate_ids + outsiders
                stored_popularity = await self._bounded(
                    self._stored_popularity(
                        model, np.concatenate([candidate_rows, outsider_rows]), every_id
                    )
                )
                popularity = redis_state.decay_popularity(
                    stored_popularity, now_ms, self.half_life_s
                )
                first_seen = redis_state.first_seen(stored_popularity)
                n = len(candidate_ids)
                feature_rows = np.concatenate(
                    [
                        features.ranking_features(
                            candidate_ids, candidate_dots, user, popularity[:n], now_ms,
                            self.half_life_s, first_seen[:n],
                        ),
                        features.ranking_features(
                            outsiders, outsider_dots, user, popularity[n:], now_ms,
                            self.half_life_s, first_seen[n:],
                        ),
                    ]
                )  # fmt: skip
                log_softmax, rank_log = against_candidates(candidate_dots, outsider_dots)
                feature_rows[n:, LOG_SOFTMAX_COLUMN] = log_softmax
                feature_rows[n:, RANK_LOG_COLUMN] = rank_log
            with self._stage("rank"):
                rank_scores = model.bundle.score(feature_rows)
            by_item = {i: float(s) for i, s in zip(every_id, rank_scores, strict=True)}
        return ScoreAnswer([ItemScore(i, by_item.get(i)) for i in item_ids], model.version)

    async def _candidate_set(
        self,
        model: ServedModel,
        user: features.UserState,
        user_vector: np.ndarray | None,
        also: Sequence[str] = (),
    ) -> tuple[list[str], np.ndarray, np.ndarray, features.UserState, frozenset[str]]:
        """What /recommend ranks for this user (ids, vocabulary rows, dots; NaN where the
        model has no vector): retrieval's top C, then the extras, as training builds
        them (retrain/candidates.py); the user with the catalogue's categories of all
        of them and of `also` (items /score ranks beside them) when the version was
        trained with categories; and which of them the catalogue marks unavailable."""
        vocab_rows = np.zeros(0, dtype=np.int64)
        dots = np.zeros(0, dtype=np.float32)
        if user_vector is not None:
            scores, found_rows = model.bundle.search(user_vector, self.candidates_for(model))
            found = found_rows[0] > 0
            vocab_rows, dots = found_rows[0][found], scores[0][found]
        candidate_ids: list[str] = model.item_id_by_row[vocab_rows].tolist()
        if user_vector is not None and len(model.live) and self.live_candidates > 0:
            wanted = model.bundle.manifest.retrieval_candidates or self.default_candidates
            candidate_ids, vocab_rows, dots = _with_live_items(
                model, user_vector, candidate_ids, vocab_rows, dots, self.live_candidates, wanted
            )
        manifest = model.bundle.manifest
        trending = await self._trending_candidates(model, manifest.trending_candidates)
        extra = features.extra_candidates(
            candidate_ids, user, manifest.recent_candidates, manifest.covis_candidates, trending
        )
        user, unavailable = await self._with_catalogue(
            user, [*candidate_ids, *extra, *also], manifest.category_candidates
        )
        if manifest.category_candidates > 0:
            extra += features.extra_candidates(
                [*candidate_ids, *extra], user, 0, 0, (), manifest.category_candidates
            )
        if not extra:
            return candidate_ids, vocab_rows, dots.astype(np.float32), user, unavailable
        extra_rows = np.fromiter(map(model.bundle.rows.get, extra, repeat(0)), np.int64, len(extra))
        extra_dots = np.full(len(extra), np.nan, dtype=np.float32)
        has_vector = extra_rows > 0
        if user_vector is not None and has_vector.any():
            extra_dots[has_vector] = (
                model.item_vectors(extra_rows[has_vector].tolist()) @ user_vector[0]
            )
        if user_vector is not None and len(model.live):
            live = [n for n, item in enumerate(extra) if item in model.live.positions]
            if live:
                extra_dots[live] = model.live.vectors([extra[n] for n in live]) @ user_vector[0]
        return (
            candidate_ids + extra,
            np.concatenate([vocab_rows, extra_rows]),
            np.concatenate([dots.astype(np.float32), extra_dots]),
            user,
            unavailable,
        )

    async def _with_catalogue(
        self, user: features.UserState, ranked: Sequence[str], max_category: int
    ) -> tuple[features.UserState, frozenset[str]]:
        """What the catalogue says of an answer's items, from the process's mirror:
        which of `ranked` are unavailable; the user with the items' prices; and, for
        a version trained with categories (`max_category` > 0), with the most
        popular items of their latest item's categories and the items' categories.
        When Redis does not answer in time for the popular lists: the user without
        them (those candidate columns 0)."""
        mirror = self.mirror
        recent = [e.item_id for e in user.recent_events]
        if not recent or not mirror.records:
            return user, frozenset()
        unavailable = frozenset(mirror.unavailable.intersection(ranked))
        # A ranker never trained on prices ignores them (retrain/ranker.py).
        if max_category <= 0:
            return replace(user, prices=mirror.prices_of), unavailable
        read = features.category_read(max_category)
        latest_categories = mirror.categories(recent[-1])
        popular: list[list[str]] = []
        if latest_categories:
            try:
                held = mirror.held_popular(latest_categories, read, read)
                if held is not None:
                    popular = held
                else:
                    with self._stage("redis"):
                        popular = await self._bounded(mirror.popular(latest_categories, read, read))
            except RedisError:
                if self.redis_timeout_s is None:
                    raise
        with_categories = replace(
            user,
            category_items=features.category_candidates(popular, read),
            categories=mirror.categories_of,
            prices=mirror.prices_of,
        )
        return with_categories, unavailable


# Items of trending (and of each included category) a filtered answer may fill from.
FILL_READ = 100
# Co-visitation links and vector neighbours /similar reads of the item.
SIMILAR_READ = 50
# The best ranked k * this a diversity re-rank chooses from.
DIVERSITY_POOL_PER_ITEM = 4

LOG_SOFTMAX_COLUMN = features.FEATURE_NAMES.index("retrieval_log_softmax")
RANK_LOG_COLUMN = features.FEATURE_NAMES.index("retrieval_rank_log")


def against_candidates(
    candidate_dots: np.ndarray, item_dots: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each item outside the candidate set, its retrieval log-softmax and log rank
    as `features.ranking_features` computes them for that item appended to the
    candidates (NaN dots stand in as the lowest known one), vectorised over the
    items instead of one call each (tests/model_server/test_score_features.py holds
    the two to the same numbers)."""
    dots = np.asarray(candidate_dots, dtype=np.float64)
    known = dots[~np.isnan(dots)]
    missing = len(dots) - len(known)
    item = np.asarray(item_dots, dtype=np.float64)
    lowest = known.min() if len(known) else np.inf
    filled = np.minimum(lowest, item)  # what a NaN becomes with the item in the set
    top = np.maximum(known.max() if len(known) else -np.inf, item)
    total = (
        np.exp(known[None, :] - top[:, None]).sum(axis=1)
        + missing * np.exp(filled - top)
        + np.exp(item - top)
    )
    log_softmax = (item - top) - np.log(total)
    # Appended last, the item follows every candidate with an equal dot (stable sort).
    rank = (known[None, :] >= item[:, None]).sum(axis=1) + missing * (filled >= item)
    return log_softmax, np.log1p(rank)


class _Timed:
    """Observes the time spent inside `with` (one per use: requests interleave)."""

    __slots__ = ("histogram", "started")

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.histogram.observe(time.perf_counter() - self.started)


def _with_live_items(
    model: ServedModel,
    user_vector: np.ndarray,
    candidate_ids: list[str],
    vocab_rows: np.ndarray,
    dots: np.ndarray,
    read: int,
    limit: int,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Retrieval over the bundle's index and the live one as if they were one index
    (as training retrieves a new item by its content): the best `limit` of both by
    dot, best first; a live item has vocabulary row 0."""
    live_ids, live_dots = model.live.search(user_vector, read)
    if not live_ids:
        return candidate_ids, vocab_rows, dots
    merged_dots = np.concatenate([dots.astype(np.float32), live_dots.astype(np.float32)])
    order = np.argsort(-merged_dots, kind="stable")[:limit]
    ids = [*candidate_ids, *live_ids]
    rows = np.concatenate([vocab_rows, np.zeros(len(live_ids), dtype=np.int64)])
    return [ids[n] for n in order], rows[order], merged_dots[order]


def _offered_id(pair: tuple[Offer, int]) -> str:
    items, position = pair
    return items.ids[position]


def _trending_kind(model: ServedModel | None) -> str:
    """How a trending answer is counted: `no_model` before the first model loaded."""
    return "trending" if model is not None else "no_model"


def _top(items: Iterable[RankedItem], k: int, removed: Collection[str]) -> list[RankedItem]:
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
