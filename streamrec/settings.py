"""The one typed settings object, built once from `STREAMREC_*` variables.

Nothing else in the project reads the environment. When the Kafka or Redis
address is not set, the addresses written by `streamrec dev up` are used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_STACK_FILE = "dev.json"
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
ENV_PREFIX = "STREAMREC_"


def _env(name: str, former: str) -> AliasChoices:
    """A setting's variable and the one it had before a rename (the new one wins
    when both are set). A field with an alias is read without the prefix, so both
    names are spelt out in full."""
    return AliasChoices(ENV_PREFIX + name, ENV_PREFIX + former)


class ApiKey(BaseModel):
    """One API key of `Settings.api_keys` (model_server/access.py): only its hash."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: tuple[Literal["read", "explain", "write", "admin"], ...] = Field(
        default=("read",), min_length=1
    )


class Settings(BaseSettings):
    # By name too: the fields with a former name below take their aliases instead of
    # the prefix, and callers still pass them by field name.
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="ignore", validate_by_name=True
    )

    # Where the dev stack keeps its pid files, logs and addresses.
    home: Path = Field(default_factory=lambda: Path.home() / ".streamrec")

    # Connections. Empty means: the dev stack's address, else the local default.
    kafka_bootstrap: str = ""
    redis_url: str = ""
    # True when the Redis URL came from the caller, not from the dev stack.
    redis_url_explicit: bool = False
    # The Redis URL names one node of a Redis Cluster (any primary or replica; the
    # client learns the rest): `redis+cluster://` or `rediss+cluster://` URLs say so
    # too. The state then takes its cluster path (docs/operations.md, Redis Cluster).
    redis_cluster: bool = False

    # Kafka security (production brokers): PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr = SecretStr("")
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None

    # Topics.
    topic_clicks: str = "clicks"
    topic_purchases: str = "purchases"
    topic_recommendations: str = "recommendations"
    topic_dlq: str = "events.dlq"
    topic_model_versions: str = "model.versions"
    topic_state_changes: str = "state.changes"
    # Catalogue records, key = item_id, created compacted (docs/catalogue.md).
    topic_items: str = "items"
    # Requests to forget a user, key = user_id, partitioned as the input topics
    # (docs/operations.md, "Forgetting a user").
    topic_users_forget: str = "users.forget"
    # Notices of changed users after each batch, which the feed turns into fresh
    # top-K on `topic_recommendations` (`streamrec feed`). Its settings were named
    # for `streamrec publish`; those names are read until the next release.
    emit_state_changes: bool = True
    feed_k: int = Field(default=20, ge=1, le=1000, validation_alias=_env("FEED_K", "PUBLISH_K"))
    feed_min_interval_ms: int = Field(  # per user
        default=1000,
        ge=0,
        validation_alias=_env("FEED_MIN_INTERVAL_MS", "PUBLISH_MIN_INTERVAL_MS"),
    )
    feed_web_port: int = Field(
        default=6067,
        ge=0,
        le=65535,
        validation_alias=_env("FEED_WEB_PORT", "PUBLISHER_WEB_PORT"),
    )
    input_partitions: int = Field(default=4, ge=1)
    replication_factor: int = Field(default=1, ge=1)

    # The Faust worker.
    app_id: str = "streamrec"
    worker_web_host: str = "127.0.0.1"
    worker_web_port: int = Field(default=6066, ge=0, le=65535)
    # Faust actors per worker. One is fastest here: the Redis write of a batch
    # already overlaps the collection of the next (stream/overlap.py).
    agent_concurrency: int = Field(default=1, ge=1, le=16)
    batch_max_events: int = Field(default=500, ge=1)
    batch_within_ms: int = Field(default=10, ge=1)
    commit_interval_s: float = Field(default=1.0, gt=0)
    # Group membership. The embedded broker holds a join for about half the
    # session timeout (whatever the rebalance timeout), so the tests use 4 s.
    consumer_session_timeout_s: float = Field(default=10.0, gt=0)
    consumer_rebalance_timeout_s: float = Field(default=5.0, gt=0)
    consumer_heartbeat_s: float = Field(default=1.0, gt=0)
    # Longest a fetch may wait for data; bounds delivery delay on brokers that
    # hold fetches for the full wait (the embedded one does).
    consumer_fetch_max_wait_ms: int = Field(default=10, ge=1, le=5000)
    # The longest wait between two attempts of a Redis write or a DLQ send that failed
    # (backoff from 50 ms, doubling).
    redis_retry_max_s: float = Field(default=5.0, gt=0)
    # No call to Redis from a worker or a command waits longer than this for its
    # reply (then it is an outage, retried): a connection left hanging across a
    # Redis restart otherwise stalled ingest for good.
    redis_socket_timeout_s: float = Field(default=10.0, gt=0)
    # After each batch of events, wait until this many replicas acknowledged it (Redis
    # WAIT), at most REDIS_WAIT_TIMEOUT_MS; fewer: the batch is refused as NOREPLICAS
    # and applied again (its events then count as duplicates) until they do, its
    # offsets uncommitted meanwhile. 0: no wait (a primary lost before it replicated
    # loses what it acknowledged last). A single Redis with replicas only for now.
    redis_wait_replicas: int = Field(default=0, ge=0)
    redis_wait_timeout_ms: int = Field(default=1000, ge=1)
    lag_poll_s: float = Field(default=5.0, gt=0)
    # /readyz says not ready once the broker has not answered the lag poll for this
    # long (at least two polls).
    worker_broker_timeout_s: float = Field(default=15.0, gt=0)
    # After SIGTERM the worker exits within this, even with the broker or Redis gone:
    # a write still waiting is abandoned (its messages are delivered again).
    worker_shutdown_timeout_s: float = Field(default=30.0, gt=0)
    # After each batch, compute its users' vectors with the registry's current model
    # and cache them where the model server looks first (stream/vectors.py), so the
    # next request after an event skips the encoder. Off: the server computes them.
    worker_refresh_vectors: bool = True

    # Event contract limits.
    max_message_bytes: int = Field(default=64 * 1024, ge=1024)
    # The largest record the worker's producer sends (its request size): a DLQ record
    # beyond it keeps the first bytes of its value, with a `streamrec.truncated` header.
    dlq_max_record_bytes: int = Field(default=1_000_000, ge=4096)
    # Events dated more than this after the worker's clock are rejected
    # (`future_timestamp`); the apply script also caps the time the decayed counters
    # see at Redis's clock plus this (docs/events.md, docs/state.md).
    max_future_skew_s: int = Field(default=3600, ge=0)

    # The event archive that retraining reads (streamrec/archive.py).
    archive_enabled: bool = True
    archive_dir: Path | None = None  # default: <home>/archive
    archive_retention_s: int = Field(default=7 * 24 * 3600, ge=3600)

    # State bounds (see docs/state.md for the memory they imply).
    recent_events_max: int = Field(default=50, ge=1)
    purchased_max: int = Field(default=200, ge=1)
    user_items_max: int = Field(default=200, ge=1)
    user_ttl_s: int = Field(default=30 * 24 * 3600, ge=60)
    item_ttl_s: int = Field(default=30 * 24 * 3600, ge=60)
    dedup_ttl_s: int = Field(default=24 * 3600, ge=1)
    # How long a deleted item's marker stays, so an older record arriving late cannot
    # bring the item back (docs/catalogue.md); past it the item is unknown again.
    item_tombstone_ttl_s: int = Field(default=30 * 24 * 3600, ge=60)
    popularity_half_life_s: float = Field(default=6 * 3600, gt=0)
    trending_max_items: int = Field(default=10_000, ge=10)
    # Items kept per category in its popularity set (`sr:c:{C}:pop`): the most
    # popular, from which a user's category candidates come. 0: not kept.
    category_popular_max: int = Field(default=100, ge=0)
    # At most this many items of one category in a /recommend answer unless the
    # request says (`max_per_category`); 0: no cap.
    serve_max_per_category: int = Field(default=0, ge=0)
    # Weight of novelty in /recommend's diversity re-rank unless the request says
    # (`diversity`); 0: the ranker's order (docs/serving.md).
    serve_diversity: float = Field(default=0.0, ge=0.0, le=1.0)
    # Item-to-item co-visitation kept by the apply script (streamrec/covis.py): each
    # event links its item with the user's `covis_window` latest earlier items; an
    # item keeps its `covis_neighbours_max` strongest links (0 turns it off).
    covis_window: int = Field(default=5, ge=1, le=50)
    covis_neighbours_max: int = Field(default=50, ge=0, le=1000)
    covis_half_life_s: float = Field(default=3 * 24 * 3600, gt=0)
    covis_backward: float = Field(default=0.5, ge=0, le=1)
    # The model server reads the links of the user's this many latest distinct items.
    covis_read_items: int = Field(default=5, ge=0, le=50)
    # Online hit rate: the model server remembers what it recommended to a user for
    # this long (at most `recommended_max` items), and the stream worker counts a
    # click on one of them as a hit. 0 turns both off.
    hit_window_s: int = Field(default=30 * 60, ge=0, le=24 * 3600)
    recommended_max: int = Field(default=100, ge=1, le=10_000)  # <= 128 stays compact
    # An experiment run's per-arm counters (answers, clicks, hits, purchases) live
    # this long past their last change.
    experiment_counts_ttl_s: int = Field(default=90 * 86400, ge=60)
    # The canary's automatic decision (streamrec/canary.py, docs/experiments.md): no
    # decision before each arm has this many clicks, from this many users (the
    # variance over users wants a few dozen); promote when the canary's hit
    # rate is not worse than control's by more than the margin (absolute) at this
    # one-sided confidence, roll back when it is worse by more; undecided this long
    # after the start: roll back. The leader worker checks every CANARY_CHECK_S (0: never).
    canary_min_clicks: int = Field(default=200, ge=1)
    canary_min_users: int = Field(default=30, ge=2)
    canary_margin: float = Field(default=0.02, ge=0, lt=1)
    canary_confidence: float = Field(default=0.95, gt=0.5, lt=1)
    canary_max_duration_s: int = Field(default=3 * 86400, ge=60)
    canary_check_s: float = Field(default=300.0, ge=0)

    # Models (used by later stages).
    registry: Path = Field(default_factory=lambda: Path.home() / ".streamrec" / "registry")

    # Retraining (retrain/cycle.py): what one cycle reads, and the quality gate.
    retrain_min_events: int = Field(default=1000, ge=1)  # fewer new events: skip the cycle
    retrain_replay_window_s: int = Field(default=7 * 24 * 3600, ge=0)
    retrain_replay_fraction: float = Field(default=0.2, ge=0, le=1)  # of older users, sampled
    # At most this many events train one cycle, the newest (window first, then the
    # replay sample): what bounds a cycle's memory, not the window (docs/operations.md).
    retrain_max_events: int = Field(default=5_000_000, ge=1)
    # The ranker's cases (and the gate's) per cycle, a seeded sample beyond this: each
    # holds its candidates' feature rows (~20 KB), the largest term of a cycle's memory.
    retrain_max_cases: int = Field(default=30_000, ge=100)
    retrain_epochs: int = Field(default=2, ge=1)
    # A first version (nothing to warm-start from) trains its encoder this long.
    retrain_first_epochs: int = Field(default=8, ge=1)
    # Of the newest sequences, held out from the encoder: the ranker trains on most
    # of them (its cases must be ones the encoder did not see) and the gate measures
    # on the newest rest.
    retrain_holdout_fraction: float = Field(default=0.1, gt=0, lt=1)
    # Sampled softmax for warm cycles: this many shared negatives per batch (0: full
    # softmax over every item, 4-5x slower on 17k items; docs/models.md has the figures).
    retrain_negatives: int = Field(default=2048, ge=0)
    # Publish when the new version's MRR@20 on the newest held-out slice is at least
    # the serving version's minus this many points.
    retrain_tolerance: float = Field(default=0.5, ge=0)
    # When the leader worker starts a cycle: every N seconds or M new events (0: never).
    retrain_every_s: int = Field(default=3600, ge=0)
    retrain_every_events: int = Field(default=100_000, ge=0)
    # The leader's cycles publish as a canary arm of this percent of users (0: as
    # the current version, no canary); `streamrec retrain --canary PCT` by hand.
    retrain_canary_percent: int = Field(default=0, ge=0, le=50)

    log_level: str = "INFO"

    # Models (retrain/ and the registry): FAISS switches from an exact flat
    # index to HNSW at this many items; retrieval hands the ranker this many.
    hnsw_threshold: int = Field(default=100_000, ge=1)
    retrieval_candidates: int = Field(default=100, ge=1)
    # An HNSW index's efSearch as served (0: the one the bundle was built with);
    # FAISS searches at least the candidates asked for whatever it is set to.
    serve_hnsw_ef_search: int = Field(default=0, ge=0)

    # Serving (model_server/): where it listens, its limits and latency budget.
    serve_host: str = "127.0.0.1"
    serve_port: int = Field(default=8000, ge=0, le=65535)
    serve_workers: int = Field(default=1, ge=1, le=64)
    # Bearer token for /admin/*; empty disables the admin endpoints (401).
    admin_token: str = ""
    # API keys, as a JSON list: [{"id": "shop-web", "sha256": "<hex of the key's
    # SHA-256>", "scopes": ["read", "explain", "write", "admin"]}] (`streamrec keys
    # new` makes one). The server holds only the hashes.
    api_keys: list[ApiKey] = Field(default_factory=list)
    # Reads (and explain) without a key: None means only on a loopback bind
    # (serve_host 127.0.0.1, ::1 or localhost). True opens them on any bind.
    serve_open_reads: bool | None = None
    # With no version in the registry: False, `streamrec serve` and `streamrec feed`
    # exit at once, saying so; True, they start (a deployment that boots before any
    # model exists): /readyz ready with `"serving": "trending"`, /recommend and the
    # feed answer trending (`model_version` null), /score and /model 503 no_model,
    # and the registry watcher swaps in the first version that opens. A refused
    # version at start-up is no failure either: trending until a good one.
    serve_wait_for_model: bool = False
    # Refused credentials from one client address per 10 s before its requests are
    # a 429 for the rest of the 10 s (0: no limit).
    serve_refusals_per_window: int = Field(default=20, ge=0)
    # Past this, ranking is skipped and the answer comes in retrieval order.
    serve_budget_ms: float = Field(default=50.0, gt=0)
    serve_max_k: int = Field(default=200, ge=1)
    serve_max_items: int = Field(default=1000, ge=1)  # /score item_ids, /recommend exclude
    serve_max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    # POST /v1/events: events per batch, and its own body limit (a batch is larger).
    serve_max_events: int = Field(default=1000, ge=1)
    serve_max_events_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # Items the user bought are left out of /recommend answers (design: the
    # default). False: the ranker decides (`user_item_purchased` is one of its
    # columns); on the Taobao replay 33 of 1,490 repeats go back to a bought item.
    serve_exclude_purchased: bool = True
    # Bounds on every wait (docs/serving.md, "Timeouts and shedding"). A Redis reply a
    # request waits for: keep it inside the budget. Then a 503, or trending.
    serve_redis_timeout_ms: float = Field(default=30.0, gt=0)
    # /recommend and /score requests one process works on at once; more: 503 at once.
    serve_max_concurrency: int = Field(default=64, ge=1)
    # From a connection's opening (or a request's first byte) to the end of its
    # headers; from there to the end of its body (408).
    serve_header_timeout_s: float = Field(default=5.0, gt=0)
    serve_body_timeout_s: float = Field(default=5.0, gt=0)
    registry_poll_s: float = Field(default=2.0, gt=0)
    # How often each server process reads the running experiment's counters into
    # its per-arm gauges (0: not exported).
    serve_experiment_figures_s: float = Field(default=15.0, ge=0)
    # Servers, the feed and workers also swap as soon as `streamrec retrain`
    # announces a version on `topic_model_versions` (the poll stays the fallback).
    follow_announcements: bool = True
    # Redis connections per server process; a request waits for a free one.
    serve_redis_connections: int = Field(default=32, ge=1)
    # Each server process keeps every catalogue item's popularity in memory, read
    # again from Redis this often (in chunks), instead of one Redis read of the
    # candidates per request. 0: read per request.
    serve_popularity_refresh_s: float = Field(default=1.0, ge=0)
    # Before a new version swaps in, each server process computes its user vectors,
    # off the request path, for up to this many users it answered most lately (0:
    # none; after a swap each user's next request runs the encoder).
    serve_prewarm_users: int = Field(default=20_000, ge=0)
    # Each server process follows the catalogue's change log this often and gives
    # an item its model has no vector for one from the item's content, when the
    # version has a content tower (model_server/live_items.py). 0: off.
    serve_live_items_poll_s: float = Field(default=0.2, ge=0)
    # The best of those new items retrieval adds to a user's candidates.
    serve_live_item_candidates: int = Field(default=20, ge=0)
    # Each server process (and the feed) holds the catalogue's records, following
    # its change log this often (model_server/catalogue_mirror.py); a request with
    # a filter is refused (503) while the copy has not caught up for longer than
    # the lag.
    serve_catalogue_poll_s: float = Field(default=0.05, gt=0)
    serve_catalogue_max_lag_s: float = Field(default=1.0, gt=0)
    # Set by `streamrec serve --workers N` for its worker processes: where they
    # share Prometheus metric files, so /metrics sums every process.
    serve_metrics_dir: Path | None = None
    # "trending" answers every user from trending items (a baseline for
    # `streamrec eval prequential`); "model" is retrieval + ranking.
    serve_strategy: Literal["model", "trending"] = "model"

    @model_validator(mode="before")
    @classmethod
    def _fill_from_dev_stack(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        home = Path(values.get("home") or Path.home() / ".streamrec")
        dev = read_dev_stack(home)
        if not values.get("kafka_bootstrap"):
            values["kafka_bootstrap"] = dev.get("kafka_bootstrap", "127.0.0.1:9092")
        values["redis_url_explicit"] = bool(values.get("redis_url"))
        if not values.get("redis_url"):
            values["redis_url"] = dev.get("redis_url", "redis://127.0.0.1:6379/0")
        if not values.get("registry"):
            values["registry"] = home / "registry"
        return values

    @property
    def redis_is_cluster(self) -> bool:
        return self.redis_cluster or self.redis_url.startswith(CLUSTER_SCHEMES)

    @property
    def redis_node_url(self) -> str:
        """`redis_url` as a plain Redis URL: a cluster URL's scheme without `+cluster`,
        and of the nodes it may name (`host:port,host:port,...`) the first."""
        scheme, sep, rest = self.redis_url.partition("://")
        location, slash, path = rest.partition("/")
        credentials, at, nodes = location.rpartition("@")
        first = nodes.split(",", 1)[0]
        return scheme.removesuffix("+cluster") + sep + credentials + at + first + slash + path

    @property
    def redis_cluster_seeds(self) -> list[tuple[str, int]]:
        """Every node a cluster URL names (`redis+cluster://h1:p1,h2:p2/0`), the first
        first: the client learns the cluster from whichever of them answers, so a
        service starts while one of them is down."""
        location = self.redis_url.partition("://")[2].partition("/")[0]
        seeds = []
        for node in location.rpartition("@")[2].split(","):
            host, _, port = node.rpartition(":") if ":" in node else (node, "", "6379")
            seeds.append((host, int(port)))
        return seeds

    @property
    def archive_root(self) -> Path:
        return self.archive_dir or self.home / "archive"

    @property
    def input_topics(self) -> tuple[str, str]:
        return (self.topic_clicks, self.topic_purchases)

    def to_env(self) -> dict[str, str]:
        """These settings as `STREAMREC_*` variables, to hand to a child process."""
        env = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name == "redis_url_explicit" or value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, bool):
                value = str(value).lower()
            elif isinstance(value, list | tuple | dict):
                value = orjson.dumps(value).decode()
            env[f"STREAMREC_{name.upper()}"] = str(value)
        return env

    def child_env(self) -> dict[str, str]:
        """This process's environment with these settings laid over it, for a child
        streamrec process."""
        return {**os.environ, **self.to_env()}


def read_dev_stack(home: Path) -> dict[str, str]:
    path = home / DEV_STACK_FILE
    try:
        loaded = orjson.loads(path.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {}
    return {k: v for k, v in loaded.items() if isinstance(v, str)}
