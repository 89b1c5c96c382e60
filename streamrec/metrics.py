"""Every Prometheus metric streamrec exports: names, units, labels, buckets.

Each service builds its metric set from a `CollectorRegistry` it is handed
(the process-wide one by default), so tests can use a fresh registry each.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

# Event-to-state delay is milliseconds-scale; the buckets resolve p99 <= 100 ms.
DELAY_BUCKETS_S = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


def at_zero(counter: Counter, *outcomes: str) -> None:
    """Export each outcome from the start, at 0: a series that first appears at 1
    is never an `increase(...) > 0` to Prometheus, so an alert on the first
    refusal or failed cycle would not fire."""
    for outcome in outcomes:
        counter.labels(outcome)


class IngestMetrics:
    """What the stream worker exports on its /metrics."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.events = Counter(
            "streamrec_events_total",
            "Events consumed, by event type and outcome (accepted, duplicate, rejected; "
            "conflict: a duplicate event id with other content, not applied).",
            ["type", "outcome"],
            registry=registry,
        )
        self.key_mismatch = Counter(
            "streamrec_key_mismatch_total",
            "Events whose message key is not their user_id, by kind (missing, other_user): "
            "applied, but per-user order is not guaranteed for them.",
            ["kind"],
            registry=registry,
        )
        self.dlq = Counter(
            "streamrec_dlq_total",
            "Messages sent to the dead-letter topic, by rejection reason.",
            ["reason"],
            registry=registry,
        )
        self.event_to_state = Histogram(
            "streamrec_event_to_state_seconds",
            "From the Kafka message timestamp to the user's state being written in Redis.",
            buckets=DELAY_BUCKETS_S,
            registry=registry,
        )
        self.item_records = Counter(
            "streamrec_item_records_total",
            "Catalogue records consumed from the items topic, by outcome (applied, deleted, "
            "duplicate: a redelivery; stale: older than the item's stored record, not applied; "
            "rejected: sent to the DLQ, by reason in streamrec_dlq_total).",
            ["outcome"],
            registry=registry,
        )
        self.catalogue_items = Gauge(
            "streamrec_catalogue_items",
            "Items with a live catalogue record (every worker reports the same count: "
            "take max, not sum).",
            registry=registry,
        )
        self.catalogue_unavailable = Gauge(
            "streamrec_catalogue_unavailable_items",
            "Items with a live catalogue record marked unavailable (take max, not sum).",
            registry=registry,
        )
        self.forgets = Counter(
            "streamrec_forgets_total",
            "Requests to forget a user, by outcome (forgotten: Redis keys or archive rows "
            "removed; absent: nothing held the user, or it was forgotten already; rejected: "
            "malformed, sent to the DLQ, by reason in streamrec_dlq_total; failed: Redis "
            "refused the deletion, sent to the DLQ as forget_failed).",
            ["outcome"],
            registry=registry,
        )
        self.forget_delay = Histogram(
            "streamrec_forget_request_to_applied_seconds",
            "From a forget request being sent to the worker applying it (after the "
            "user's earlier events; before the archive's rewrite).",
            buckets=DELAY_BUCKETS_S,
            registry=registry,
        )
        self.item_to_state = Histogram(
            "streamrec_item_record_to_state_seconds",
            "From a catalogue record's Kafka message timestamp to its change being in Redis.",
            buckets=DELAY_BUCKETS_S,
            registry=registry,
        )
        self.state_write = Histogram(
            "streamrec_state_write_seconds",
            "Duration of one batched Redis write (one pipeline round trip).",
            buckets=DELAY_BUCKETS_S,
            registry=registry,
        )
        self.batch_events = Histogram(
            "streamrec_batch_events",
            "Events per batch handed to the agent.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.online_hits = Counter(
            "streamrec_online_hits_total",
            "Accepted clicks on an item the model server recommended to the same user within "
            "the hit window; the online hit rate is this over accepted clicks "
            '(streamrec_events_total{type="click",outcome="accepted"}).',
            registry=registry,
        )
        self.state_write_retries = Counter(
            "streamrec_state_write_retries_total",
            "Batched Redis writes retried because Redis was unreachable or took no writes "
            "(maxmemory, READONLY, LOADING, BUSY).",
            registry=registry,
        )
        self.state_write_blocked = Gauge(
            "streamrec_state_write_blocked",
            "1 while this worker's Redis writes wait out an outage, by reason (unreachable, "
            "oom, readonly, loading, busy, refused); nothing is acknowledged meanwhile.",
            ["reason"],
            registry=registry,
        )
        self.archived = Counter(
            "streamrec_archived_events_total",
            "Events appended to the archive that retraining reads.",
            registry=registry,
        )
        self.archive_errors = Counter(
            "streamrec_archive_errors_total",
            "Batches that could not be appended to the archive (state was still written).",
            registry=registry,
        )
        self.retrain = Counter(
            "streamrec_retrain_total",
            "Retraining cycles started by the stream, by outcome "
            "(published, rejected, skipped, failed).",
            ["outcome"],
            registry=registry,
        )
        at_zero(self.retrain, "published", "rejected", "skipped", "failed")
        self.retrain_seconds = Histogram(
            "streamrec_retrain_seconds",
            "Duration of one retraining cycle, as a process of its own.",
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600),
            registry=registry,
        )
        self.canary_decisions = Counter(
            "streamrec_canary_decisions_total",
            "The leader worker's canary checks, by decision (promote, rollback, wait).",
            ["decision"],
            registry=registry,
        )
        at_zero(self.canary_decisions, "promote", "rollback", "wait")
        self.consumer_lag = Gauge(
            "streamrec_consumer_lag_messages",
            "Messages in the partition not yet committed by this worker's consumer group.",
            ["topic", "partition"],
            registry=registry,
        )
        self.vector_refreshes = Counter(
            "streamrec_vector_refreshes_total",
            "Users whose cached user vector the worker refreshed after a batch, by outcome "
            "(refreshed; cached: the cache already held this state's vector; trending: no "
            "recent item the model knows; failed: Redis or the encoder failed; dropped: "
            "more users waiting than the worker keeps).",
            ["outcome"],
            registry=registry,
        )
        self.vector_refresh_seconds = Histogram(
            "streamrec_vector_refresh_seconds",
            "One round of user vector refreshes: read the users' state, run the encoder "
            "once for all of them, write the vectors.",
            buckets=DELAY_BUCKETS_S,
            registry=registry,
        )
        # The model the worker encodes with (the server's are streamrec_model_*).
        self.swaps = Counter(
            "streamrec_worker_model_swaps_total",
            "Attempts by the worker to load a model version, by outcome (swapped, refused).",
            ["outcome"],
            registry=registry,
        )
        at_zero(self.swaps, "swapped", "refused")
        self.model_info = Gauge(
            "streamrec_worker_model_info",
            "1 for the model version this worker computes user vectors with.",
            ["version"],
            registry=registry,
        )


# Serving is sub-millisecond to tens of milliseconds; these resolve p99 <= 5 ms.
SERVE_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075,
    0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
CANDIDATE_BUCKETS = (0, 1, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


class ServeMetrics:
    """What the model server exports on its /metrics."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.request_seconds = Histogram(
            "streamrec_serve_request_seconds",
            "Time to answer one request inside the server, by endpoint (recommend, score).",
            ["endpoint"],
            buckets=SERVE_BUCKETS_S,
            registry=registry,
        )
        self.requests = Counter(
            "streamrec_serve_requests_total",
            "Requests answered, by endpoint and status class (2xx, 4xx, 5xx).",
            ["endpoint", "status"],
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "streamrec_serve_stage_seconds",
            "Time spent in one stage of a request: redis, encode, retrieve, features, rank.",
            ["stage"],
            buckets=SERVE_BUCKETS_S,
            registry=registry,
        )
        self.fallbacks = Counter(
            "streamrec_serve_fallbacks_total",
            "Answers not ranked by the model, by kind (trending, retrieval; no_model: "
            "trending because no model version is loaded yet).",
            ["kind"],
            registry=registry,
        )
        self.candidates = Histogram(
            "streamrec_serve_candidates",
            "Retrieval candidates handed to the ranker per /recommend request.",
            buckets=CANDIDATE_BUCKETS,
            registry=registry,
        )
        self.model_info = Gauge(
            "streamrec_model_info",
            "1 for the model version this server answers with.",
            ["version"],
            registry=registry,
            # With several worker processes (multiprocess mode): one series per live
            # process, so sum by (version) counts the processes on each version.
            multiprocess_mode="liveall",
        )
        self.experiment_answers = Counter(
            "streamrec_experiment_answers_total",
            "Answers (/recommend, /score, feed records) per arm of the running experiment.",
            ["experiment", "arm"],
            registry=registry,
        )
        self.experiment_arm_fallbacks = Counter(
            "streamrec_experiment_arm_fallbacks_total",
            "Answers to an experiment arm whose version this process does not hold (it "
            "did not open), given by the current version instead.",
            ["experiment", "arm"],
            registry=registry,
        )
        # Read from the run's counters in Redis (model_server/experiment_figures.py):
        # the same values in every process, the most recent one's exported.
        self.experiment_arm_count = Gauge(
            "streamrec_experiment_arm_count",
            "The running experiment's online counts per arm, from Redis: answers (to "
            "users with state), users with a click, clicks, hits (clicks on an item "
            "shown within the hit window), purchases of shown items.",
            ["experiment", "arm", "count"],
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self.experiment_arm_hit_rate = Gauge(
            "streamrec_experiment_arm_hit_rate",
            "The running experiment's online hit rate (hits / clicks) per arm, and its "
            "95% interval over users (low_95, high_95; streamrec/hit_rates.py); NaN "
            "before the arm's first click.",
            ["experiment", "arm", "bound"],
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self.swaps = Counter(
            "streamrec_model_swaps_total",
            "Attempts to load a model version, by outcome (swapped, refused).",
            ["outcome"],
            registry=registry,
        )
        at_zero(self.swaps, "swapped", "refused")
        self.vector_refreshes = Counter(
            "streamrec_serve_vector_refreshes_total",
            "Users answered lately whose vector the server computed with a new version "
            "before swapping it in, by outcome (refreshed; skipped: their last inputs "
            "are not what the new version would build, left to their next request).",
            ["outcome"],
            registry=registry,
        )
        self.live_items_added = Counter(
            "streamrec_serve_live_items_added_total",
            "Catalogue items the served version had no vector for, given one from their "
            "content and added to the live index (model_server/live_items.py).",
            registry=registry,
        )
        self.vector_refresh_seconds = Histogram(
            "streamrec_serve_vector_refresh_seconds",
            "One round of the server's before-swap vector computation: one encoder call "
            "for up to 100 users.",
            buckets=DELAY_BUCKETS_S,
            registry=registry,
        )

    def experiment_answer(self, experiment: str, arm: str | None, fell_back: bool) -> None:
        """One answer to a user of `arm`; `fell_back`: by the current version, the
        arm's not held (the server's and the feed's count alike)."""
        self.experiment_answers.labels(experiment, str(arm)).inc()
        if fell_back:
            self.experiment_arm_fallbacks.labels(experiment, str(arm)).inc()


class FeedMetrics:
    """What the recommendations feed exports on its /metrics."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.records = Counter(
            "streamrec_feed_records_total",
            "Users' top-K records on the feed, by outcome (published: sent; rate_limited: "
            "a change inside the user's interval, deferred until it passes; coalesced: a "
            "change folded into a deferred one, sent with it; tombstone: a forgotten "
            "user's null record; forgotten: a change of a user forgotten before it was "
            "sent, not sent).",
            ["outcome"],
            registry=registry,
        )
        self.change_to_feed = Histogram(
            "streamrec_change_to_feed_seconds",
            "From the user's state being written to their new top-K being on the feed.",
            buckets=DELAY_BUCKETS_S,
            registry=registry,
        )
