"""What the answers showed, beside hit rate: coverage, the long tail, the Gini of
exposure and category diversity, against hand-computed cases."""

from collections import Counter

import numpy as np
import pytest

from bench.live_replay import Replay, VariantResult, _Scores, exposure_summary
from streamrec.events import Event, EventType


def _events(items: str) -> list[Event]:
    return [Event(f"e{n}", "u", item, EventType.CLICK, n) for n, item in enumerate(items)]


def test_coverage_tail_and_gini() -> None:
    # a 5 times, b 3 times, c, d, e once: the 20% most touched is {a}.
    replay = Replay("hand", _events("aaaaabbb"), _events("cde"))
    shown = VariantResult(
        "m", "m", np.zeros(0), np.zeros(0), np.zeros(0), 0, Counter(), Counter(), 0.0,
        exposure=Counter({"a": 2, "b": 1, "c": 1}),
    )  # fmt: skip
    summary = exposure_summary(shown, Counter(e.item_id for e in [*replay.warmup, *replay.scored]))
    assert summary["coverage20"] == 60.0  # 3 of 5 items
    assert summary["tail_share"] == 50.0  # b and c of 4 slots
    # exposure 0, 0, 1, 1, 2: sum over i of (2i - n - 1) x_i / (n sum x) = 10 / 20
    assert summary["gini"] == 0.5
    assert summary["category_diversity"] is None


def test_category_diversity_is_the_mean_over_answers() -> None:
    scores = _Scores(2, {"a": ("x",), "b": ("x",), "c": ("y",)})
    scores.hit(0, "a", ["a", "b", "c"])  # 2 categories over 3 items
    scores.hit(1, "z", ["a", "b", "unknown"])  # 1 over the 2 with a category
    assert scores.mean_diversity() == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert scores.exposure == Counter({"a": 2, "b": 2, "c": 1, "unknown": 1})
    assert list(scores.hits) == [1.0, 0.0]
