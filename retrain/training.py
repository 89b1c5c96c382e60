"""Training both models from sequences: hold out the most recent sequences,
train the encoder on the rest, train the ranker on the encoder's candidates
for the held-out cases, and measure both on the held-out part the ranker did
not see. The test split of a benchmark never enters here."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch

from retrain.batches import encode
from retrain.candidates import CandidateSet, build_candidates, ranked_target_ranks
from retrain.covis_cases import CaseEvent, CaseReplay, time_ordered_cases
from retrain.data import NextItemCases, UserSequence
from retrain.distributed import SINGLE, Finished, Group, leave
from retrain.encoder import EncoderConfig, SequenceEncoder, grow_items
from retrain.holdout import prefix, split_recent
from retrain.metrics import summarise
from retrain.popularity import decayed_popularity, last_event_ms
from retrain.ranker import Ranker, RankerConfig, train_ranker
from retrain.score import encoder_ranks
from retrain.train_encoder import EncoderTraining, TrainingLog, train_encoder
from retrain.vocab import ItemVocab
from streamrec.content import (
    CONTENT_BUCKETS,
    CONTENT_SLOTS,
    ItemContent,
    content_matrix,
    from_categories,
    prices_of,
)
from streamrec.covis import CovisRule
from streamrec.events import EventType
from streamrec.settings import Settings
from streamrec.state import covis_rule

# Candidate rows the ranker scores at once when a version is measured.
SCORE_ROWS = 65_536


@dataclass(frozen=True)
class TrainPlan:
    dim: int = 96
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.25
    max_len: int = 50
    cosine_scale: float = 12.0
    encoder: EncoderTraining = field(default_factory=EncoderTraining)
    ranker: RankerConfig = field(default_factory=RankerConfig)
    candidates: int = 100
    recent_candidates: int = 20  # of the user's own recent items, after retrieval's
    covis_candidates: int = 30  # co-visitation neighbours of the user's latest items
    covis_read_items: int = 5  # latest distinct items whose links are read
    trending_candidates: int = 20  # the top trending items, every event type alike
    category_candidates: int = 20  # most popular of the latest item's categories
    covis: CovisRule = field(default_factory=CovisRule)  # the stream worker's rule
    holdout_fraction: float = 0.1
    ranker_share: float = 0.8  # of the held-out part; the newest rest measures the ranker
    # "time": the newest events of every user are held out (live windows: a user
    # seen before gives the ranker cases with their history); "sequences": the
    # newest whole sequences (files without real timestamps, such as SR-GNN's).
    split: Literal["time", "sequences"] = "time"
    # Learn item vectors from content too (streamrec/content.py), when items have any.
    content_tower: bool = True
    validation_cases: int = 5000  # per-epoch encoder check, a sample of held-out cases
    # The ranker's cases per window (its training cases, and the cases that measure
    # it and the gate), a seeded sample beyond this: what bounds a cycle's memory.
    max_cases: int = 30_000
    half_life_s: float = 6 * 3600

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_plan(settings: Settings, **choices: Any) -> TrainPlan:
    """The plan every trainer starts from (`streamrec train`, `streamrec retrain`, the
    offline and prequential harnesses): what serving and the stream worker do, read
    from the same settings, so training sees the requests it will answer — the
    popularity half-life, the recent events kept per user (the encoder's length),
    the retrieval candidates, the co-visitation rule and how many latest items'
    links are read. `choices` are the trainer's own (dim, encoder, split, ...)."""
    return replace(
        TrainPlan(
            max_len=settings.recent_events_max,
            candidates=settings.retrieval_candidates,
            covis=covis_rule(settings),
            covis_read_items=settings.covis_read_items,
            half_life_s=settings.popularity_half_life_s,
            max_cases=settings.retrain_max_cases,
        ),
        **choices,
    )


@dataclass
class TrainedModels:
    vocab: ItemVocab
    encoder: SequenceEncoder
    ranker: Ranker
    popularity: dict[str, dict[EventType, float]]
    encoder_log: TrainingLog
    ranker_losses: list[float]
    ranker_seconds: float
    encoder_processes: int  # the distributed group's size (1: one process)
    validation: dict[str, Any]
    data_window: dict[str, Any]
    seconds: float


def train_models(
    sequences: Sequence[UserSequence],
    plan: TrainPlan,
    parent_vocab: ItemVocab | None = None,
    parent_encoder: SequenceEncoder | None = None,
    progress: bool = True,
    categories: Mapping[str, Sequence[str]] | None = None,
    content: Mapping[str, ItemContent] | None = None,
    group: Group = SINGLE,
) -> TrainedModels:
    """`categories` (item -> its categories in the catalogue) gives the cases the
    category candidates and columns serving computes from the catalogue. `content`
    (item -> what the catalogue says of it; by default its categories alone) feeds
    the encoder's content tower when `plan.content_tower` is on and any item has some."""
    started = time.perf_counter()
    fit, ranker_fit, ranker_check = holdout_slices(sequences, plan)
    base = parent_vocab or ItemVocab(())
    vocab = base.grow(item for sequence in sequences for item in sequence.item_ids)
    content = content if content is not None else from_categories(categories or {})
    tokens = content_matrix(vocab.item_ids, content, first_row=1)
    tower = plan.content_tower and bool(tokens.any())
    config = EncoderConfig(
        n_items=vocab.n_rows,
        dim=plan.dim,
        n_layers=plan.n_layers,
        n_heads=plan.n_heads,
        max_len=plan.max_len,
        dropout=plan.dropout,
        cosine_scale=plan.cosine_scale,
        content_buckets=CONTENT_BUCKETS if tower else 0,
        content_slots=CONTENT_SLOTS if tower else 0,
    )
    torch.manual_seed(plan.encoder.seed)
    start = (
        grow_items(parent_encoder, vocab.n_rows, 0, config.content_buckets, config.content_slots)
        if parent_encoder is not None
        else SequenceEncoder(config)
    )
    if tower:
        start.set_content(torch.from_numpy(tokens))

    held_out = replace(ranker_fit, until_ms=ranker_check.until_ms)
    held_out_cases = held_out.cases()[0]
    check_cases = _sample(held_out_cases, plan.validation_cases, plan.encoder.seed)
    check_encoded = encode(check_cases.prefixes, vocab)
    check_targets = np.array([vocab.row(t) for t in check_cases.targets], dtype=np.int64)

    def validate(encoder: SequenceEncoder) -> dict[str, float]:
        ranks = encoder_ranks(
            encoder, [e[0] for e in check_encoded], [e[1] for e in check_encoded], check_targets
        )
        metrics = summarise(ranks)
        return {"valid_p20": metrics.p20, "valid_mrr20": metrics.mrr20}

    encoder, encoder_log = train_encoder(
        encode(fit, vocab),
        config,
        plan.encoder,
        validate=validate,
        encoder=start,
        progress=progress,
        group=group,
    )
    if group.distributed:
        leave()  # the encoder is the same in every process: the rest is rank 0's
        if not group.writes:
            raise Finished

    now_ms = last_event_ms(fit)
    popularity = decayed_popularity(fit, now_ms, plan.half_life_s)
    known = known_items(vocab, fit, parent_vocab)
    # As serving holds them: an item trained on by its vector; one not trained on but
    # with content by its content alone (the live index); any other has no vector.
    encoder = encoder.cold_view(torch.from_numpy(known))
    known = known | encoder.has_content().numpy()
    prices = prices_of(content)
    ranker_train = case_candidates(
        encoder, vocab, ranker_fit, popularity, plan, known, progress, categories, prices
    )
    ranker, ranker_losses, ranker_seconds = train_ranker(
        ranker_train.features,
        ranker_train.labels,
        plan.ranker,
        progress,
        real=ranker_train.rows > 0,
    )
    check = case_candidates(
        encoder, vocab, ranker_check, popularity, plan, known, progress, categories, prices
    )
    validation = evaluate_pair(encoder, ranker, check, len(vocab))
    all_ts = [ts for sequence in sequences for ts in sequence.ts_ms]
    data_window = {
        "first_event_ms": min(all_ts, default=0),
        "last_event_ms": max(all_ts, default=0),
        "events": len(all_ts),
        "sequences": len(sequences),
        "items": len(vocab),
        "fit_sequences": len(fit),
        "held_out_cases": len(held_out_cases.targets),
        "items_with_category": sum(1 for item in vocab.item_ids if item in (categories or {})),
        "items_with_content": int(tokens[:, 0].astype(bool).sum()),
    }
    return TrainedModels(
        vocab=vocab,
        encoder=encoder,
        ranker=ranker,
        popularity=popularity,
        encoder_log=encoder_log,
        ranker_losses=ranker_losses,
        ranker_seconds=ranker_seconds,
        encoder_processes=group.world_size,
        validation=validation,
        data_window=data_window,
        seconds=time.perf_counter() - started,
    )


@dataclass(frozen=True)
class CaseWindow:
    """The next-item cases of `case_sequences` (among `sequences`) whose next event
    lies in [from_ms, until_ms), in time order (`covis_cases.time_ordered_cases`)."""

    sequences: Sequence[UserSequence]
    case_sequences: Sequence[UserSequence]
    from_ms: int | None = None
    until_ms: int | None = None
    max_cases: int | None = None

    def cases(self) -> tuple[NextItemCases, list[int], list[CaseEvent]]:
        return time_ordered_cases(
            self.sequences, self.case_sequences, self.from_ms, self.until_ms, self.max_cases
        )


def holdout_slices(
    sequences: Sequence[UserSequence], plan: TrainPlan
) -> tuple[list[UserSequence], CaseWindow, CaseWindow]:
    """(what the encoder fits, the ranker's cases, the cases that measure it): the
    newest `holdout_fraction` is held out from the encoder; the ranker trains on
    most of it and is measured on the newest rest. The retraining gate measures the
    serving version on the same last window."""
    if plan.split == "sequences":
        fit, held_out = split_recent(sequences, plan.holdout_fraction)
        ranker_fit, ranker_check = split_recent(held_out, 1 - plan.ranker_share)
        return (
            fit,
            CaseWindow(sequences, ranker_fit, max_cases=plan.max_cases),
            CaseWindow(sequences, ranker_check, max_cases=plan.max_cases),
        )
    times = np.sort(np.fromiter((t for s in sequences for t in s.ts_ms), dtype=np.int64))
    if not len(times):
        return [], CaseWindow(sequences, ()), CaseWindow(sequences, ())
    held = plan.holdout_fraction
    cut = int(times[min(len(times) - 1, int(len(times) * (1 - held)))])
    check_cut = int(
        times[min(len(times) - 1, int(len(times) * (1 - held * (1 - plan.ranker_share))))]
    )
    fit = [before(s, cut) for s in sequences if s.ts_ms and s.ts_ms[0] < cut]
    return (
        fit,
        CaseWindow(sequences, sequences, cut, check_cut, plan.max_cases),
        CaseWindow(sequences, sequences, check_cut, None, plan.max_cases),
    )


def before(sequence: UserSequence, cut_ms: int) -> UserSequence:
    """The sequence's events before `cut_ms` (sequences are oldest first)."""
    end = int(np.searchsorted(np.asarray(sequence.ts_ms), cut_ms, side="left"))
    return prefix(sequence, end)


def evaluate_on_slice(
    encoder: SequenceEncoder,
    ranker: Ranker,
    vocab: ItemVocab,
    sequences: Sequence[UserSequence],
    plan: TrainPlan,
    categories: Mapping[str, Sequence[str]] | None = None,
    prices: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Any version's retriever and retriever + ranker on the cases `train_models`
    measures a new version on, with popularity from the same older part."""
    fit, _, ranker_check = holdout_slices(sequences, plan)
    popularity = decayed_popularity(fit, last_event_ms(fit), plan.half_life_s)
    known = known_items(vocab, fit, vocab)
    # The slice's new items are candidates for this version too, as live, only
    # without a vector.
    vocab = vocab.grow(item for sequence in sequences for item in sequence.item_ids)
    known = np.concatenate([known, np.zeros(vocab.n_rows - len(known), dtype=bool)])
    check = case_candidates(
        encoder, vocab, ranker_check, popularity, plan, known, False, categories, prices
    )
    return evaluate_pair(encoder, ranker, check, len(vocab))


def known_items(
    vocab: ItemVocab, fit: Sequence[UserSequence], trained: ItemVocab | None
) -> np.ndarray:
    """Per vocab row: did the encoder train on the item (in `fit`, or in the vocabulary
    it warm-started from)? Serving has no vector for the others, so training does not
    retrieve them either."""
    known = np.zeros(vocab.n_rows, dtype=bool)
    names = {item for sequence in fit for item in sequence.item_ids}
    if trained is not None:
        names.update(trained.item_ids)
    for item_id in names:
        if item_id in vocab:
            known[vocab.row(item_id)] = True
    return known


def case_candidates(
    encoder: SequenceEncoder,
    vocab: ItemVocab,
    window: CaseWindow,
    popularity: dict[str, dict[EventType, float]],
    plan: TrainPlan,
    known: np.ndarray,
    progress: bool,
    categories: Mapping[str, Sequence[str]] | None = None,
    prices: Mapping[str, float] | None = None,
) -> CandidateSet:
    """The candidates of every case of `window`, each with the co-visitation table,
    popularity, trending items and popularity within each category as they were
    just before its next event, and the catalogue's prices."""
    cases, moments, events = window.cases()
    return build_candidates(
        encoder, vocab, cases, popularity, plan.candidates, plan.half_life_s, progress,
        max_recent=plan.recent_candidates, max_covis=plan.covis_candidates,
        replay=CaseReplay(
            plan.covis, plan.covis_read_items, events, plan.half_life_s, categories, prices
        ),
        moments=moments, known=known, max_trending=plan.trending_candidates,
        max_category=plan.category_candidates,
    )  # fmt: skip


@torch.no_grad()
def evaluate_pair(
    encoder: SequenceEncoder, ranker: Ranker, candidates: CandidateSet, n_items: int
) -> dict[str, Any]:
    """Retriever alone (the candidates' own order) and retriever + ranker, on the same
    cases; the latter also by case (`repeat`, `new_item`), as the prequential report
    breaks it down, for the retraining gate."""
    k = candidates.rows.shape[1]
    retrieval_order = -np.arange(k, dtype=np.float32)[None, :].repeat(len(candidates.rows), axis=0)
    # A ranker of an older feature schema reads the first columns it knows.
    columns = candidates.features[..., : ranker.n_features].reshape(-1, ranker.n_features)
    # A slice of rows at a time: the ranker's hidden layers over every row at once
    # were the peak of a retrain cycle's memory.
    ranked = [
        ranker(torch.from_numpy(np.ascontiguousarray(columns[start : start + SCORE_ROWS])))
        for start in range(0, len(columns), SCORE_ROWS)
    ]
    ranked_scores = (
        torch.cat(ranked).numpy().reshape(len(candidates.rows), k)
        if ranked
        else np.zeros((len(candidates.rows), k), dtype=np.float32)
    )
    ranks = ranked_target_ranks(candidates, ranked_scores, n_items)
    repeats = candidates.repeats
    return {
        "retriever": summarise(ranked_target_ranks(candidates, retrieval_order, n_items)).as_dict(),
        "retriever_ranker": summarise(ranks).as_dict(),
        "by_case": {
            "repeat": summarise(ranks[repeats]).as_dict(),
            "new_item": summarise(ranks[~repeats]).as_dict(),
        },
    }


def _sample(cases: NextItemCases, limit: int, seed: int) -> NextItemCases:
    if len(cases.targets) <= limit:
        return cases
    chosen = sorted(np.random.default_rng(seed).choice(len(cases.targets), limit, replace=False))
    return NextItemCases(
        prefixes=[cases.prefixes[i] for i in chosen],
        targets=[cases.targets[i] for i in chosen],
        target_types=[cases.target_types[i] for i in chosen],
    )
