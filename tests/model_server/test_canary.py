"""The canary's automatic decision on a replay: held-out yoochoose sessions, each
user asking the server before every step and then clicking the session's true next
item. The server writes back what it showed and the user's arm; the stream worker's
apply script (StateStore.apply_events) counts each arm's clicks and hits in Redis;
the decision reads them. A canary with reversed ranker scores is rolled back, one
no worse than control is promoted, and no answer fails while either happens."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from datetime import UTC, datetime

import httpx
import pytest
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from bench.scenarios.data import yoochoose_sessions
from bench.scenarios.models import corrupt, publish, reversed_blend
from cli import app
from retrain.training import TrainedModels
from stream.canary_check import CanaryCheck
from streamrec import experiments, lineage, registry
from streamrec.canary import CANARY_ARM, CONTROL_ARM, VERDICTS, Rule, canary_experiment, check
from streamrec.events import Event, EventType
from streamrec.experiments import Experiment
from streamrec.keys import experiment_key
from streamrec.metrics import IngestMetrics
from streamrec.settings import Settings
from streamrec.state import StateStore
from tests.model_server.conftest import Served, in_process, wait_until_async

pytestmark = [pytest.mark.integration, pytest.mark.slow]
STEPS = 4  # asks and clicks per user
K = 20
# A fixed split of the replay's fixed users (the default salt, the name, holds the
# version's random suffix): the same users in each arm on every run.
SALT = "replay"


def reversed_blend_models(models: TrainedModels) -> TrainedModels:
    """The same bundle with a ranker that scores by the hand blend reversed."""
    bad = copy.deepcopy(models)
    bad.ranker = reversed_blend(models.ranker)
    return bad


def replay_users(served: Served, count: int) -> list[tuple[str, tuple[str, ...]]]:
    """Sessions the tiny models did not train on (they trained on the first 600),
    with more than STEPS items all in the vocabulary."""
    known = set(served.items)
    chosen = []
    for session in yoochoose_sessions(4000, skip=600):
        items = session.item_ids
        if len(items) > STEPS and set(items) <= known:
            chosen.append((f"replay-{session.user_id}", items[: STEPS + 1]))
        if len(chosen) == count:
            break
    assert len(chosen) == count
    return chosen


async def replay(
    served: Served, client: httpx.AsyncClient, store: StateStore, experiment: Experiment
) -> dict[str, dict[str, int]]:
    """Round by round: every user asks for K items, the server writes back what it
    showed (waited for), then every user clicks the true next item."""
    users = replay_users(served, 160)

    def clicks(step: int) -> list[Event]:
        # After what was shown: a hit is a click within the window after the answer.
        now_ms = int(time.time() * 1000) + 1
        return [
            Event(f"{user}-{step}", user, items[step], EventType.CLICK, now_ms)
            for user, items in users
        ]

    await store.apply_events(clicks(0))
    for step in range(1, STEPS + 1):
        for user, _ in users:
            answer = await client.post("/v1/recommend", json={"user_id": user, "k": K})
            assert answer.status_code == 200, answer.text
            assert answer.json()["arm"] == experiment.arm_of(user).name

        async def written_back(expected: int = step * len(users)) -> bool:
            counts = await store.experiment_counts(experiment.run_id)
            return sum(arm.get("answers", 0) for arm in counts.values()) == expected

        await wait_until_async(written_back, timeout_s=30)
        await store.apply_events(clicks(step))
    return await store.experiment_counts(experiment.run_id)


def judged(served: Served) -> Settings:
    return served.settings.model_copy(
        update={
            "canary_min_clicks": 100,
            "canary_margin": 0.02,
            "canary_confidence": 0.95,
            "hit_window_s": 3600,
        }
    )


async def ask_without_pause(
    url_client: httpx.AsyncClient, users: list[str], stop: asyncio.Event, failures: list[str]
) -> list[tuple[str | None, str]]:
    answered: list[tuple[str | None, str]] = []
    n = 0
    while not stop.is_set():
        response = await url_client.post(
            "/v1/recommend", json={"user_id": users[n % len(users)], "k": 5}
        )
        n += 1
        if response.status_code != 200 or len(response.json()["items"]) != 5:
            failures.append(f"{response.status_code} {response.text}")
        else:
            answered.append((response.json()["arm"], response.json()["model_version"]))
        await asyncio.sleep(0)
    return answered


async def decide_under_load(
    client: httpx.AsyncClient, users: list[str], decide: asyncio.Future[str], after: str
) -> tuple[str, list[tuple[str | None, str]]]:
    """Four clients ask without pause while the decision runs and until every
    answer is plain and from `after` (the server followed the registry)."""
    stop = asyncio.Event()
    failures: list[str] = []
    askers = [
        asyncio.create_task(ask_without_pause(client, users[n:], stop, failures)) for n in range(4)
    ]
    await asyncio.sleep(0.2)
    outcome = await decide

    async def followed() -> bool:
        answer = await client.post("/v1/recommend", json={"user_id": users[0], "k": 5})
        return bool(answer.json()["arm"] is None and answer.json()["model_version"] == after)

    await wait_until_async(followed, timeout_s=20)
    await asyncio.sleep(0.2)
    stop.set()
    answered = [a for batch in await asyncio.gather(*askers) for a in batch]
    assert failures == []
    return outcome, answered


def hit_rate(counts: dict[str, int]) -> float:
    return counts.get("hits", 0) / counts["clicks"]


async def test_a_canary_ranking_by_the_reversed_blend_is_rolled_back(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = judged(served)
    root = served.root
    first = served.first.version
    bad = publish(reversed_blend_models(served.models), root, first, make_current=False).version
    experiment = experiments.start(root, canary_experiment(bad, 50, salt=SALT))
    store = StateStore(settings)
    try:
        async with in_process(settings) as (client, _):
            counts = await replay(served, client, store, experiment)
            control, canary = counts[CONTROL_ARM], counts[CANARY_ARM]
            assert min(control["clicks"], canary["clicks"]) >= 100
            assert hit_rate(canary) < hit_rate(control) - 0.05, counts
            # Every counted user clicked once a step: the per-user sums say so.
            for arm in (control, canary):
                assert arm["clicks"] == STEPS * arm["users"]
                assert arm["clicks_sq"] == STEPS * STEPS * arm["users"]

            for name, value in {
                "REGISTRY": str(root),
                "REDIS_URL": settings.redis_url,
                "CANARY_MIN_CLICKS": "100",
            }.items():
                monkeypatch.setenv(f"STREAMREC_{name}", value)
            users = [user for user, _ in replay_users(served, 40)]
            run = asyncio.ensure_future(
                asyncio.to_thread(lambda: CliRunner().invoke(app, ["experiment", "decide"]).output)
            )
            output, answered = await decide_under_load(client, users, run, after=first)
    finally:
        await store.close()

    outcome = json.loads(output.splitlines()[-1])
    assert (outcome["action"], outcome["version"]) == ("rolled_back", bad)
    assert outcome["decision"]["verdict"] == "rollback"
    assert outcome["decision"]["upper"] < -0.02
    assert experiments.read(root) is None
    assert registry.current_version(root) == first
    assert {version for arm, version in answered if arm == CANARY_ARM} <= {bad}
    assert {version for arm, version in answered if arm != CANARY_ARM} == {first}
    ended = experiments.history(root)[-1]
    assert (ended["action"], ended["by"]) == ("stopped", "canary")
    assert ended["decision"]["verdict"] == "rollback"
    written = lineage.read(root, bad)
    assert [(e["action"], e.get("by")) for e in written] == [
        ("started", None),
        ("stopped", "canary"),
    ]
    assert written[-1]["decision"]["canary"]["clicks"] == canary["clicks"]
    shown = CliRunner().invoke(app, ["model", "show", bad])
    assert json.loads(shown.output)["lineage"] == written


async def test_a_canary_no_worse_than_control_is_promoted(served: Served) -> None:
    """The same models as control: the bounds sit around 0, inside the margin once
    there are enough clicks (the margin is wide for this many: 320 clicks from 80
    users per arm, with bounds that hold at every check, resolve about ±0.12; at 0.1
    the decision would turn on a couple of hits of the split). The leader worker's
    check promotes it and counts the decision."""
    settings = judged(served).model_copy(update={"canary_margin": 0.15})
    root = served.root
    first = served.first.version
    good = publish(served.models, root, first, make_current=False).version
    experiment = experiments.start(root, canary_experiment(good, 50, salt=SALT))
    store = StateStore(settings)
    metrics = IngestMetrics(CollectorRegistry())
    check = CanaryCheck(settings, store, metrics)
    try:
        async with in_process(settings) as (client, _):
            early = await check.tick()
            assert early is not None and early.action == "waiting"
            assert "0 clicks" in early.reason
            counts = await replay(served, client, store, experiment)
            assert abs(hit_rate(counts[CANARY_ARM]) - hit_rate(counts[CONTROL_ARM])) < 0.1
            users = [user for user, _ in replay_users(served, 40)]

            async def tick() -> str:
                checked = await check.tick()
                assert checked is not None
                return checked.to_json()

            output, answered = await decide_under_load(
                client, users, asyncio.ensure_future(tick()), after=good
            )
    finally:
        await store.close()

    outcome = json.loads(output)
    assert (outcome["action"], outcome["version"]) == ("promoted", good), outcome
    assert outcome["decision"]["lower"] >= -0.15
    assert registry.current_version(root) == good
    assert experiments.read(root) is None
    assert {version for arm, version in answered if arm == CANARY_ARM} <= {good}
    assert answered[-1] == (None, good)
    assert metrics.canary_decisions.labels("wait")._value.get() == 1
    assert metrics.canary_decisions.labels("promote")._value.get() == 1
    assert metrics.canary_decisions.labels("rollback")._value.get() == 0
    ended = experiments.history(root)[-1]
    assert (ended["action"], ended["by"], ended["version"]) == ("promoted", "canary", good)
    assert [e["action"] for e in lineage.read(root, good)] == ["started", "promoted"]
    # Nothing to judge now: the next tick does nothing and counts nothing.
    idle_store = StateStore(settings)
    try:
        idle = await CanaryCheck(settings, idle_store, metrics).tick()
    finally:
        await idle_store.close()
    assert idle is not None and idle.action == "none"
    assert sum(metrics.canary_decisions.labels(d)._value.get() for d in VERDICTS) == 2


async def test_a_canary_that_does_not_open_or_stays_undecided_is_rolled_back(
    served: Served,
) -> None:
    """Counts that say promote, for a version whose ranker is damaged: refused and
    rolled back, with the reason; counts that say nothing past the time limit:
    rolled back. CURRENT never moves. (The counts are written directly: what is
    tested here is the action, the replay above tests the counting.)"""
    settings = judged(served)
    root, first = served.root, served.first.version
    store = StateStore(settings)
    try:
        broken = publish(served.models, root, first, make_current=False).version
        corrupt(root, broken)
        running = experiments.start(root, canary_experiment(broken, 10))
        await store.redis.hset(
            experiment_key(running.run_id),
            mapping={"control:clicks": 10000, "control:hits": 3000,
                     "canary:clicks": 10000, "canary:hits": 3000},
        )  # fmt: skip
        refused = await check(root, store, Rule.of(settings))
        assert (refused.action, refused.version) == ("rolled_back", broken)
        assert refused.decision is not None and refused.decision.verdict == "promote"
        assert "does not open" in refused.reason
        assert registry.current_version(root) == first and experiments.read(root) is None
        ended = experiments.history(root)[-1]
        assert (ended["action"], ended["by"]) == ("stopped", "canary")
        assert "ranker.onnx" in ended["refused"]

        slow = publish(served.models, root, first, make_current=False).version
        waiting = experiments.start(root, canary_experiment(slow, 10))
        late = datetime.fromtimestamp(
            waiting.started_ms / 1000 + settings.canary_max_duration_s, UTC
        )
        assert (await check(root, store, Rule.of(settings))).action == "waiting"
        timed_out = await check(root, store, Rule.of(settings), now=late)
        assert timed_out.action == "rolled_back" and "undecided" in timed_out.reason
        assert registry.current_version(root) == first
        assert [e["action"] for e in lineage.read(root, slow)] == ["started", "stopped"]
    finally:
        await store.close()
