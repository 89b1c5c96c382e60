"""The HTTP contract: request bodies (with the limits from settings) and response bodies.

Request models are built per app by `request_models`, so the limits in the
OpenAPI schema are the ones the server enforces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from annotated_types import Ge, Le
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from streamrec.events import MAX_CONTEXT_KEYS, MAX_CONTEXT_VALUE_CHARS, MAX_ID_CHARS
from streamrec.items import MAX_ATTRIBUTES, MAX_CATEGORIES
from streamrec.settings import Settings

Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]
# As the event contract (streamrec/events.py) holds an event's context: string or
# number values (no booleans, no NaN or infinity, integers that fit 64 bits, as
# orjson reads them), keys of at most 128 characters.
ContextKey = Annotated[str, StringConstraints(max_length=MAX_ID_CHARS)]
INT_MIN, INT_MAX = -(2**63), 2**64 - 1


def _fits_64_bits(value: object) -> object:
    # Before the union: its float member would take a larger integer as a float.
    if type(value) is int and not INT_MIN <= value <= INT_MAX:
        raise ValueError("an integer in context must fit 64 bits")
    return value


ContextValue = Annotated[
    Annotated[str, StringConstraints(max_length=MAX_CONTEXT_VALUE_CHARS)]
    | Annotated[int, Field(ge=INT_MIN, le=INT_MAX)]
    | Annotated[float, Field(allow_inf_nan=False)],
    BeforeValidator(_fits_64_bits),
]
DEFAULT_K = 20


def _integral(value: object) -> object:
    # JSON Schema's "integer" is any number without a fraction: 20.0 is one, so it
    # is accepted as 20 (strict mode alone would refuse it); 20.5, "20", true are not.
    if type(value) is float and value.is_integer():
        return int(value)
    return value


Integer = Annotated[int, BeforeValidator(_integral)]


class Request(BaseModel):
    # Strict: a field is what the schema says, never coerced ("20" or true for k, 0
    # for explain are 422s; 20.0 is an integer in JSON Schema, `Integer`).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


AttributeKey = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]
Price = Annotated[float, Field(allow_inf_nan=False)]


def _number(value: object) -> object:
    # A price bound may be written 10 or 10.5; strict mode alone takes only floats.
    if type(value) is int and INT_MIN <= value <= INT_MAX:
        return float(value)
    return value


class ItemFilterBody(Request):
    """Which items an answer may hold, from the catalogue's records (an item the
    catalogue lacks passes only `exclude_categories`)."""

    include_categories: list[Id] = Field(
        default_factory=list, max_length=MAX_CATEGORIES, description="In at least one."
    )
    exclude_categories: list[Id] = Field(
        default_factory=list, max_length=MAX_CATEGORIES, description="In none."
    )
    price_min: Annotated[Price, BeforeValidator(_number)] | None = None
    price_max: Annotated[Price, BeforeValidator(_number)] | None = None
    attributes: dict[AttributeKey, ContextValue | bool] = Field(
        default_factory=dict,
        max_length=MAX_ATTRIBUTES,
        description="Each equal to the item's attribute of that name.",
    )


class RecommendBase(Request):
    user_id: Id
    k: Integer
    exclude: list[Id]
    context: dict[ContextKey, ContextValue] | None
    explain: bool
    filter: ItemFilterBody | None
    max_per_category: int | None
    diversity: float | None


class ScoreBase(Request):
    user_id: Id
    item_ids: list[Id]


class SimilarBase(Request):
    item_id: Id
    k: Integer
    filter: ItemFilterBody | None
    max_per_category: int | None


@dataclass(frozen=True)
class RequestModels:
    recommend: type[RecommendBase]
    score: type[ScoreBase]
    similar: type[SimilarBase]


def request_models(settings: Settings) -> RequestModels:
    max_items = settings.serve_max_items
    # The bounds before the validator: after it they would not reach the JSON Schema.
    PerCategory = Annotated[int, Ge(0), Le(settings.serve_max_k), BeforeValidator(_integral)]

    class RecommendRequest(RecommendBase):
        """Top-k items for a user; `exclude` and the user's purchases are filtered out."""

        k: Integer = Field(DEFAULT_K, ge=1, le=settings.serve_max_k)
        exclude: list[Id] = Field(default_factory=list, max_length=max_items)
        context: dict[ContextKey, ContextValue] | None = Field(
            None,
            max_length=MAX_CONTEXT_KEYS,
            json_schema_extra={"deprecated": True},
            description="Accepted and checked as an event's context; no feature reads it "
            "(kept so that callers who send it are not refused).",
        )
        explain: bool = Field(False, description="Return each item's feature values.")
        filter: ItemFilterBody | None = Field(None, description="Catalogue filters.")
        max_per_category: PerCategory | None = Field(
            None,
            description="At most this many items of one category (0: no cap); "
            "default STREAMREC_SERVE_MAX_PER_CATEGORY.",
        )

        diversity: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = Field(
            None,
            description="Weight of novelty in a maximal-marginal-relevance re-rank of the "
            "ranked answer (0: the ranker's order); default STREAMREC_SERVE_DIVERSITY.",
        )

    class ScoreRequest(ScoreBase):
        """Ranker scores for the given items, in the order given."""

        item_ids: list[Id] = Field(min_length=1, max_length=max_items)

    class SimilarRequest(SimilarBase):
        """Items like this one: its real-time co-visitation neighbours, its nearest
        items by the model's vectors, its categories' most popular, then trending."""

        k: Integer = Field(DEFAULT_K, ge=1, le=settings.serve_max_k)
        filter: ItemFilterBody | None = Field(None, description="Catalogue filters.")
        max_per_category: PerCategory | None = Field(
            None, description="At most this many items of one category (0: no cap)."
        )

    return RequestModels(RecommendRequest, ScoreRequest, SimilarRequest)


class ScoredItem(BaseModel):
    item_id: str
    score: float
    features: dict[str, float] | None = Field(None, description="Only with explain=true.")


class HistoryEvent(BaseModel):
    item_id: str
    type: str
    ts: int


ARM_DESCRIPTION = (
    "The user's arm of the running experiment (docs/experiments.md), whose version "
    "model_version names (the current one when the arm's did not open); null without one."
)


MODEL_VERSION_DESCRIPTION = (
    "The version that answered; null before the first model is loaded "
    "(STREAMREC_SERVE_WAIT_FOR_MODEL), when the answer comes from trending."
)


class RecommendResponse(BaseModel):
    user_id: str
    items: list[ScoredItem]
    model_version: str | None = Field(description=MODEL_VERSION_DESCRIPTION)
    arm: str | None = Field(None, description=ARM_DESCRIPTION)
    fallback: Literal["trending", "retrieval"] | None = Field(
        None, description="Set when the answer is not the ranker's: why."
    )
    short: bool = Field(
        False, description="Fewer than k items: the filters and the catalogue left no more."
    )
    history: list[HistoryEvent] | None = Field(
        None, description="Only with explain=true: the user's recent events, oldest first."
    )


class SimilarItem(BaseModel):
    item_id: str
    score: float = Field(description="On its source's scale: link weight, inner product, 0.")
    source: Literal["covis", "vector", "category", "trending"]


class SimilarResponse(BaseModel):
    item_id: str
    items: list[SimilarItem]
    model_version: str | None = Field(description=MODEL_VERSION_DESCRIPTION)
    short: bool = Field(
        False, description="Fewer than k items: the filters and the catalogue left no more."
    )


class ItemScore(BaseModel):
    item_id: str
    score: float | None = Field(description="None when the model does not know the item.")
    error: Literal["unknown_item"] | None = None


class ScoreResponse(BaseModel):
    user_id: str
    items: list[ItemScore]
    model_version: str
    arm: str | None = Field(None, description=ARM_DESCRIPTION)


class ProblemBody(BaseModel):
    """Every 4xx/5xx body."""

    error: str
    detail: str | list[dict[str, object]]


class ModelResponse(BaseModel):
    model_version: str
    parent: str | None
    created_at: str
    loaded_at_s: float
    items: int
    index: dict[str, Any]
    feature_schema_version: int
    metrics: dict[str, Any]
    data_window: dict[str, Any]
    refused: dict[str, str] = Field(description="Versions refused since start: why.")
    swaps: list[dict[str, Any]] = Field(
        description="The latest swaps and refusals of this process, oldest first: "
        "{at_s, outcome, version, previous | reason}."
    )


class VersionSummary(BaseModel):
    version: str
    parent: str | None
    created_at: str
    events: int | None
    validation: dict[str, Any]


class VersionsResponse(BaseModel):
    current: str | None = Field(description="The version the registry's CURRENT names.")
    served: str | None = Field(
        description="The version this process serves (none yet: waiting for the first)."
    )
    versions: list[VersionSummary] = Field(description="Oldest first.")
    unreadable: dict[str, str] = Field(description="Registry entries that are no bundle: why.")


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReadyResponse(BaseModel):
    ready: bool
    model_version: str | None = Field(None, description="null: no model loaded yet.")
    serving: Literal["model", "trending"] | None = Field(
        None,
        description="When ready: answers come from the model, or from trending before "
        "the first model loads (STREAMREC_SERVE_WAIT_FOR_MODEL).",
    )
    reason: Literal["redis_unavailable"] | None = Field(None, description="Why not ready.")


class EventOutcome(BaseModel):
    index: int = Field(description="The event's place in the batch, from 0.")
    outcome: Literal["accepted", "rejected", "not_written"]
    event_id: str | None = Field(None, description="For an event that parsed.")
    reason: str | None = Field(None, description="A rejection's reason (docs/events.md).")
    detail: str | None = None


class EventsResponse(BaseModel):
    accepted: int = Field(description="Written to Kafka, acknowledged.")
    rejected: int = Field(description="Refused by the event contract; not written.")
    not_written: int = Field(description="Valid, but Kafka did not take them: send again.")
    events: list[EventOutcome]


class RollbackRequest(Request):
    version: Id | None = Field(None, description="Default: the current version's parent.")


class SwapResponse(BaseModel):
    outcome: Literal["swapped", "unchanged"]
    model_version: str
    previous: str | None


class ArmRequest(Request):
    name: Id = Field(description="Letters, digits, '.', '_' and '-', up to 64.")
    version: Id = Field(description="A version of the registry, or `current` (follows CURRENT).")
    weight: float = Field(gt=0, allow_inf_nan=False, description="Relative to the arms' sum.")


class ExperimentRequest(Request):
    name: Id = Field(description="Letters, digits, '.', '_' and '-', up to 64.")
    arms: list[ArmRequest] = Field(min_length=2, max_length=16)
    salt: Id | None = Field(None, description="The assignment's hash salt; default: the name.")


class PromoteRequest(Request):
    arm: Id = Field(description="The arm whose version becomes CURRENT.")


class ArmCounts(BaseModel):
    """One arm's online figures, from Redis (docs/experiments.md)."""

    answers: int = Field(description="Answers to users with state written back.")
    users: int = Field(
        description="Users with a click counted for this arm (0 in counters written before "
        "users were counted: their clicks are taken as independent)."
    )
    clicks: int = Field(description="Clicks by users shown this arm within the hit window.")
    hits: int = Field(description="Those clicks on an item this arm recommended to them.")
    purchases: int = Field(description="Purchases of an item this arm recommended to them.")
    hit_rate: float | None = Field(description="hits / clicks; null without clicks.")
    hit_rate_95: tuple[float, float] = Field(
        description="Its 95% interval: Wilson's on the effective clicks (a user's clicks "
        "count together: the delta method's variance over users)."
    )
    effective_clicks: float = Field(
        description="As many independent clicks as these are worth: clicks over the design "
        "effect (the user-level variance over the independent-clicks one, at least 1)."
    )


class ArmStatus(BaseModel):
    name: str
    version: str
    weight: float
    share: float = Field(description="The fraction of users assigned to it.")
    served_by: str | None = Field(
        description="The version this process answers it with (the current one when the "
        "arm's did not open); null before this process follows the record."
    )
    counts: ArmCounts | None = Field(description="Null when Redis did not answer.")


class ExperimentStatus(BaseModel):
    name: str
    salt: str
    run_id: str
    started_at: str
    arms: list[ArmStatus]


class ExperimentResponse(BaseModel):
    experiment: ExperimentStatus | None = Field(description="Null when none runs.")


class ExperimentChange(BaseModel):
    outcome: Literal["started", "stopped", "swapped", "unchanged"] = Field(
        description="started, stopped; for a promotion as a rollback says: swapped, or "
        "unchanged when the arm's version was already current."
    )
    experiment: str
    model_version: str | None = Field(None, description="Promotion: now CURRENT's version.")
    previous: str | None = None


class ForgetHorizon(BaseModel):
    """The end offset of the user's partition of one input topic when the request was
    sent: the worker forgets the user after every event below it."""

    topic: str
    partition: int
    offset: int


class ForgetResponse(BaseModel):
    user_id: str
    status: Literal["requested"]
    topic: str
    requested_ms: int
    horizon: list[ForgetHorizon]
