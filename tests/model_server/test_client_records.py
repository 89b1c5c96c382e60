"""The Python client's records are the OpenAPI schemas' records, field for field: a
field added to an answer and forgotten in the client (or the other way) fails here."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import BaseModel

from model_server import schemas
from streamrec import client

PAIRS = [
    (client.Recommendations, schemas.RecommendResponse),
    (client.ScoredItem, schemas.ScoredItem),
    (client.Scores, schemas.ScoreResponse),
    (client.ItemScore, schemas.ItemScore),
    (client.Similar, schemas.SimilarResponse),
    (client.SimilarItem, schemas.SimilarItem),
]


@pytest.mark.parametrize(("record", "schema"), PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_a_client_record_has_its_schemas_fields(record: type, schema: type[BaseModel]) -> None:
    assert {f.name for f in dataclasses.fields(record)} == set(schema.model_fields)


def test_scores_parse_unknown_items_with_their_error() -> None:
    body = {
        "user_id": "u",
        "model_version": "v1",
        "items": [
            {"item_id": "a", "score": 0.5, "error": None},
            {"item_id": "zz", "score": None, "error": "unknown_item"},
        ],
    }
    scores = client._scores(body)
    assert scores.unknown == ["zz"]
    assert scores.items[1] == client.ItemScore("zz", None, "unknown_item")
