"""The HTTP contract: request bodies (with the limits from settings) and response bodies.

Request models are built per app by `request_models`, so the limits in the
OpenAPI schema are the ones the server enforces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from streamrec.events import MAX_CONTEXT_KEYS, MAX_ID_CHARS
from streamrec.settings import Settings

Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]
ContextValue = Annotated[str, StringConstraints(max_length=1024)] | float | int
DEFAULT_K = 20


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RecommendBase(Request):
    user_id: Id
    k: int
    exclude: list[Id]
    context: dict[str, ContextValue] | None
    explain: bool


class ScoreBase(Request):
    user_id: Id
    item_ids: list[Id]


@dataclass(frozen=True)
class RequestModels:
    recommend: type[RecommendBase]
    score: type[ScoreBase]


def request_models(settings: Settings) -> RequestModels:
    max_items = settings.serve_max_items

    class RecommendRequest(RecommendBase):
        """Top-k items for a user; `exclude` and the user's purchases are filtered out."""

        k: int = Field(DEFAULT_K, ge=1, le=settings.serve_max_k)
        exclude: list[Id] = Field(default_factory=list, max_length=max_items)
        context: dict[str, ContextValue] | None = Field(None, max_length=MAX_CONTEXT_KEYS)
        explain: bool = Field(False, description="Return each item's feature values.")

    class ScoreRequest(ScoreBase):
        """Ranker scores for the given items, in the order given."""

        item_ids: list[Id] = Field(min_length=1, max_length=max_items)

    return RequestModels(RecommendRequest, ScoreRequest)


class ScoredItem(BaseModel):
    item_id: str
    score: float
    features: dict[str, float] | None = Field(None, description="Only with explain=true.")


class RecommendResponse(BaseModel):
    user_id: str
    items: list[ScoredItem]
    model_version: str
    fallback: Literal["trending", "retrieval"] | None = Field(
        None, description="Set when the answer is not the ranker's: why."
    )


class ItemScoreOut(BaseModel):
    item_id: str
    score: float | None = Field(description="None when the model does not know the item.")
    error: Literal["unknown_item"] | None = None


class ScoreResponse(BaseModel):
    user_id: str
    items: list[ItemScoreOut]
    model_version: str


class ProblemBody(BaseModel):
    """Every 4xx/5xx body."""

    error: str
    detail: str | list[dict[str, object]]


class RollbackRequest(Request):
    version: Id | None = Field(None, description="Default: the current version's parent.")


class SwapResponse(BaseModel):
    outcome: Literal["swapped", "unchanged"]
    model_version: str
    previous: str | None
