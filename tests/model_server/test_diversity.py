"""The diversity re-rank: maximal marginal relevance on hand-made vectors, and on
/recommend with the served model's vectors."""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.scenarios.users import apply, events_for
from model_server.diversity import mmr_order
from tests.model_server.conftest import Served, in_process


def test_mmr_trades_relevance_for_items_unlike_those_already_chosen() -> None:
    # 0 and 1 point the same way, 2 elsewhere, 3 has no vector; scores 4 > 3 > 2 > 1.
    vectors = np.array([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.0, 0.0]])
    scores = np.array([4.0, 3.0, 2.0, 1.0])
    order = [0, 1, 2, 3]
    assert mmr_order(order, scores, vectors, 0.0, 4) == order
    # Half and half: after 0, 1 is nearly a copy (relevance .67 - similarity 1.0);
    # 2 (.33 - 0) wins, then 3 (0 - 0, similar to nothing) beats 1 (.67 - 1).
    assert mmr_order(order, scores, vectors, 0.5, 4) == [0, 2, 3, 1]
    # Only the pool is re-ranked; the rest keeps its place.
    assert mmr_order(order, scores, vectors, 0.5, 2) == [0, 1, 2, 3]


async def test_a_diverse_answer_is_less_alike_and_keeps_the_best_item_first(
    served: Served,
) -> None:
    await apply(served.settings, events_for("varied", served.items[:6]))
    async with in_process(served.settings) as (client, app):
        plain = (await client.post("/recommend", json={"user_id": "varied", "k": 10})).json()
        diverse = (
            await client.post("/recommend", json={"user_id": "varied", "k": 10, "diversity": 0.7})
        ).json()
        model = app.state.serving.holder.current

    def mean_similarity(answer: dict[str, Any]) -> float:
        rows = [model.bundle.rows[i["item_id"]] for i in answer["items"]]
        unit = model.item_vectors(rows)
        unit /= np.linalg.norm(unit, axis=1, keepdims=True)
        similarity = unit @ unit.T
        return float((similarity.sum() - len(rows)) / (len(rows) * (len(rows) - 1)))

    ids = [i["item_id"] for i in plain["items"]]
    diverse_ids = [i["item_id"] for i in diverse["items"]]
    assert diverse_ids[0] == ids[0] and diverse_ids != ids and len(diverse_ids) == 10
    assert mean_similarity(diverse) < mean_similarity(plain)
