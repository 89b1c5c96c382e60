"""Topic administration: create every topic streamrec uses with its partition count.

Producers would otherwise auto-create topics with the broker's default count,
which fixes the ingestion parallelism by accident.
"""

from __future__ import annotations

import logging

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from streamrec.errors import StreamrecError
from streamrec.kafka_client import kafka_python_options
from streamrec.settings import Settings

log = logging.getLogger(__name__)


def wanted_topics(settings: Settings) -> dict[str, int]:
    """Topic name → partitions. Output topics are keyed by user too."""
    return {
        settings.topic_clicks: settings.input_partitions,
        settings.topic_purchases: settings.input_partitions,
        settings.topic_dlq: 1,
        settings.topic_recommendations: settings.input_partitions,
        settings.topic_model_versions: 1,
        settings.topic_state_changes: settings.input_partitions,
        settings.topic_items: settings.input_partitions,
        # As many partitions as the input topics, keyed alike: the worker that owns a
        # user's events owns the user's forget requests too.
        settings.topic_users_forget: settings.input_partitions,
    }


def topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    """Topic name → configs at creation. The catalogue is compacted: the newest
    record per item (or its tombstone) is what a new reader needs."""
    return {settings.topic_items: {"cleanup.policy": "compact"}}


def pipeline_names(name: str) -> dict[str, str]:
    """Settings giving a pipeline a consumer group and every topic of its own, so
    pipelines sharing a broker (tests, benchmarks, evaluations) never meet."""
    return {
        "app_id": name,
        "topic_clicks": f"{name}.clicks",
        "topic_purchases": f"{name}.purchases",
        "topic_recommendations": f"{name}.recommendations",
        "topic_dlq": f"{name}.dlq",
        "topic_model_versions": f"{name}.model.versions",
        "topic_state_changes": f"{name}.state.changes",
        "topic_items": f"{name}.items",
        "topic_users_forget": f"{name}.users.forget",
    }


def ensure_topics(settings: Settings, extra: dict[str, int] | None = None) -> list[str]:
    """Create the missing topics; return the names created."""
    wanted = {**wanted_topics(settings), **(extra or {})}
    configs = topic_configs(settings)
    admin = _admin(settings)
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(
                name,
                num_partitions=n,
                replication_factor=settings.replication_factor,
                topic_configs=configs.get(name, {}),
            )
            for name, n in wanted.items()
            if name not in existing
        ]
        if not missing:
            return []
        try:
            admin.create_topics(missing)
        except TopicAlreadyExistsError:
            log.info("another process created some of %s first", [t.name for t in missing])
        except KafkaError as exc:
            raise StreamrecError(
                f"could not create topics {[t.name for t in missing]}: {exc}"
            ) from exc
        return [t.name for t in missing]
    finally:
        admin.close()


# A broker that does not answer the first metadata request within this is reported
# unreachable (the client's default waits 30 s): a start-up error in seconds.
ADMIN_BOOTSTRAP_TIMEOUT_MS = 3000


def _admin(settings: Settings) -> KafkaAdminClient:
    try:
        return KafkaAdminClient(
            **kafka_python_options(settings),
            client_id="streamrec-admin",
            bootstrap_timeout_ms=ADMIN_BOOTSTRAP_TIMEOUT_MS,
        )
    except KafkaError as exc:
        raise StreamrecError(
            f"cannot reach Kafka at {settings.kafka_bootstrap} ({exc}); "
            "is the broker up (`streamrec dev status`) or STREAMREC_KAFKA_BOOTSTRAP right?"
        ) from exc
