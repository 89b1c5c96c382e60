"""Experiments in the model server: two versions held at once, each user answered
by their arm's version and told which (sticky), the record followed as CURRENT
is, an arm whose version does not open answered by the current one, and no
failed answer while an experiment is promoted or stopped under load."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from bench.scenarios.models import corrupt, publish
from bench.scenarios.users import apply, events_for
from cli import app
from devtools.processes import ServiceProcess
from devtools.scrape import counter_total, gauge_samples, histogram_count
from streamrec import experiments, hit_rates, registry
from streamrec.events import EventType
from streamrec.experiments import CURRENT_ARM, Arm, Experiment, new_experiment
from streamrec.keys import experiment_key, user_arm_counts_key, user_arm_key
from streamrec.loaded import ModelHolder
from streamrec.metrics import ServeMetrics
from streamrec.state import Applied, StateStore
from tests.model_server.conftest import (
    ADMIN_TOKEN,
    Served,
    in_process,
    wait_until,
    wait_until_async,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
USERS = [f"user-{n}" for n in range(24)]


class Askers:
    """Eight clients asking for USERS' recommendations without pause, each answer
    kept as (user, arm, version), each failure (not a 200 with its 5 items) as text."""

    def __init__(self) -> None:
        self.answers: list[tuple[str, str | None, str]] = []
        self.failures: list[str] = []
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, client: httpx.AsyncClient, clients: int = 8) -> None:
        self._tasks = [asyncio.create_task(self._ask(client, n)) for n in range(clients)]

    async def stop(self) -> None:
        self._stopping.set()
        await asyncio.gather(*self._tasks)

    async def _ask(self, client: httpx.AsyncClient, offset: int) -> None:
        n = offset
        while not self._stopping.is_set():
            user = USERS[n % len(USERS)]
            n += 1
            response = await client.post("/v1/recommend", json={"user_id": user, "k": 5})
            if response.status_code != 200 or len(response.json()["items"]) != 5:
                self.failures.append(f"{response.status_code} {response.text}")
            else:
                body = response.json()
                self.answers.append((user, body["arm"], body["model_version"]))
            await asyncio.sleep(0)  # in process, the app answers without yielding


def halves(candidate: str, name: str = "ranker-b") -> Experiment:
    return new_experiment(name, [Arm("control", CURRENT_ARM, 1), Arm("candidate", candidate, 1)])


async def with_history(served: Served, users: list[str]) -> None:
    events = [e for n, user in enumerate(users) for e in events_for(user, served.items[n : n + 4])]
    await apply(served.settings, events)


async def test_answers_name_their_arm_and_version(served: Served) -> None:
    second = publish(served.models, served.root, served.first.version, make_current=False)
    await with_history(served, USERS[:12])  # ranked answers; the others: trending
    async with in_process(served.settings) as (client, app):
        plain = (await client.post("/v1/recommend", json={"user_id": USERS[0], "k": 5})).json()
        assert plain["arm"] is None and plain["model_version"] == served.first.version

        experiment = experiments.start(served.root, halves(second.version))
        versions = {"control": served.first.version, "candidate": second.version}

        async def arm_of_first_user() -> object:
            answer = await client.post("/v1/recommend", json={"user_id": USERS[0], "k": 5})
            return answer.json()["arm"]

        await wait_until_async(arm_of_first_user)
        # The candidate's version is held beside the current one, with a popularity
        # table of its own (no Redis read per request for its candidates).
        held = app.state.serving.holder.arm_models
        assert [model.version for model in held] == [second.version]
        table = app.state.serving.recommender.popularity
        assert table is not None and table.stored(held[0], np.array([1, 2])) is not None
        seen: dict[str, list[tuple[str, str]]] = {}
        for _ in range(3):  # sticky: the same arm and version every time
            for user in USERS:
                answer = await client.post("/v1/recommend", json={"user_id": user, "k": 5})
                assert answer.status_code == 200, answer.text
                body = answer.json()
                seen.setdefault(user, []).append((body["arm"], body["model_version"]))
                assert len(body["items"]) == 5
                scored = await client.post(
                    "/v1/score", json={"user_id": user, "item_ids": served.items[:3]}
                )
                assert (scored.json()["arm"], scored.json()["model_version"]) == seen[user][-1]
        for user, answers in seen.items():
            arm = experiment.arm_of(user).name
            assert answers == [(arm, versions[arm])] * 3, user
        arms = [experiment.arm_of(user).name for user in USERS]
        assert set(arms) == {"control", "candidate"}
        metrics = (await client.get("/metrics")).text
        for arm in ("control", "candidate"):
            # /recommend and /score, three rounds (plus the first user's polls).
            answered = counter_total(
                metrics, "streamrec_experiment_answers", experiment="ranker-b", arm=arm
            )
            assert answered >= 6 * arms.count(arm)
        assert counter_total(metrics, "streamrec_experiment_arm_fallbacks") == 0

        experiments.stop(served.root)

        async def arm_gone() -> object:
            answer = await client.post("/v1/recommend", json={"user_id": USERS[0], "k": 5})
            return answer.json()["arm"] is None

        await wait_until_async(arm_gone)


async def test_an_arm_whose_version_does_not_open_is_answered_by_current(
    served: Served,
) -> None:
    bad = publish(served.models, served.root, served.first.version, make_current=False)
    corrupt(served.root, bad.version)
    experiment = experiments.start(served.root, halves(bad.version))
    candidates = [u for u in USERS if experiment.arm_of(u).name == "candidate"]
    async with in_process(served.settings) as (client, _):
        for user in candidates:
            answer = await client.post("/v1/recommend", json={"user_id": user, "k": 5})
            assert answer.status_code == 200
            assert answer.json()["arm"] == "candidate"
            assert answer.json()["model_version"] == served.first.version
        metrics = (await client.get("/metrics")).text
        fell_back = counter_total(
            metrics, "streamrec_experiment_arm_fallbacks", experiment="ranker-b", arm="candidate"
        )
        assert fell_back == len(candidates)
        assert counter_total(metrics, "streamrec_model_swaps", outcome="refused") == 1
        model = (await client.get("/v1/model", headers=ADMIN)).json()
        assert "ranker.onnx" in model["refused"][bad.version]


async def test_promote_and_stop_under_load_fail_no_answer(
    served: Served, server_process: ServiceProcess
) -> None:
    """A server in its own process follows the record the CLI writes: an experiment
    starts, its candidate is promoted, a second one starts and is stopped, while
    eight clients ask without pause. Every answer is a 200 naming a version and,
    while an experiment runs for that server, the user's arm."""
    await with_history(served, USERS)
    first = served.first.version
    second = publish(served.models, served.root, first, make_current=False).version
    url = f"http://127.0.0.1:{served.settings.serve_port}"
    asking = Askers()

    def latest_are(check: Callable[[str, str | None, str], bool]) -> bool:
        answers = asking.answers
        return len(answers) >= 16 and all(check(*a) for a in answers[-16:])

    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        asking.start(client)
        running = experiments.start(served.root, halves(second))
        await wait_until(lambda: latest_are(lambda u, arm, v: arm is not None))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(experiments.promote, served.root, "candidate")
        await wait_until(lambda: latest_are(lambda u, arm, v: arm is None and v == second))
        mark = len(asking.answers)
        again = experiments.start(served.root, halves(first, "back"))
        await wait_until(lambda: latest_are(lambda u, arm, v: arm is not None))
        await asyncio.sleep(0.3)
        experiments.stop(served.root)
        await wait_until(lambda: latest_are(lambda u, arm, v: arm is None and v == second))
        await asking.stop()

    assert asking.failures == []
    first_run = {(u, arm, v) for u, arm, v in asking.answers[:mark] if arm is not None}
    second_run = {(u, arm, v) for u, arm, v in asking.answers[mark:] if arm is not None}
    for user, arm, version in first_run:
        assert arm == running.arm_of(user).name
        assert version == (first if arm == "control" else second)
    for user, arm, version in second_run:
        assert arm == again.arm_of(user).name
        # Control follows CURRENT, which names `second` after the promotion.
        assert version == (second if arm == "control" else first)
    assert {arm for _, arm, _ in first_run} == {"control", "candidate"}
    assert registry.current_version(served.root) == second


async def test_clicks_and_purchases_count_for_the_users_arm(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write-back keeps the user's arm with what they were shown; the apply
    script (the stream worker's) counts their clicks, hits and purchases of
    recommended items for that arm in Redis; `streamrec experiment status` prints them."""
    second = publish(served.models, served.root, served.first.version, make_current=False)
    experiment = experiments.start(served.root, halves(second.version))
    user = USERS[0]
    await with_history(served, [user])
    store = StateStore(served.settings)
    try:
        async with in_process(served.settings) as (client, _):
            answer = (await client.post("/v1/recommend", json={"user_id": user, "k": 5})).json()
            arm = experiment.arm_of(user).name
            assert answer["arm"] == arm

            async def answer_counted() -> bool:
                counts = await store.experiment_counts(experiment.run_id)
                return counts.get(arm, {}).get("answers") == 1

            await wait_until_async(answer_counted)
        shown = [item["item_id"] for item in answer["items"]]
        elsewhere = next(i for i in reversed(served.items) if i not in shown)
        outcomes = await store.apply_events(
            [
                *events_for(user, [shown[0], elsewhere], start=100),
                *events_for(user, [shown[1]], EventType.PURCHASE, start=200),
            ]
        )
        assert outcomes == [Applied.HIT, Applied.APPLIED, Applied.APPLIED]
        counts = await store.experiment_counts(experiment.run_id)
        # One user: a hit, then a miss (c, h = 2, 1): their sums 1, c², h², c·h.
        assert counts == {
            arm: {"answers": 1, "clicks": 2, "hits": 1, "purchases": 1,
                  "users": 1, "clicks_sq": 4, "hits_sq": 1, "clicks_hits": 2}
        }  # fmt: skip
        assert await store.redis.hgetall(user_arm_counts_key(user)) == {
            b"arm": experiment.arm_tag(arm).encode(),
            b"clicks": b"2",
            b"hits": b"1",
        }
        ttl = await store.redis.ttl(experiment_key(experiment.run_id))
        assert 0 < ttl <= served.settings.experiment_counts_ttl_s
        user_ttl = await store.redis.ttl(user_arm_counts_key(user))
        assert 0 < user_ttl <= served.settings.experiment_counts_ttl_s
        arm_ttl_ms = await store.redis.pttl(user_arm_key(user))
        assert 0 < arm_ttl_ms <= served.settings.hit_window_s * 1000
        # The user's arm is one of their keys: forgetting them removes it; the run's
        # counters name no one and stay.
        await store.forget_user(user)
        assert await store.redis.exists(user_arm_key(user), user_arm_counts_key(user)) == 0
        assert await store.experiment_counts(experiment.run_id) == counts
    finally:
        await store.close()

    monkeypatch.setenv("STREAMREC_REGISTRY", str(served.root))
    monkeypatch.setenv("STREAMREC_REDIS_URL", served.settings.redis_url)
    # In a thread: the command runs an event loop of its own.
    status = await asyncio.to_thread(CliRunner().invoke, app, ["experiment", "status"])
    assert status.exit_code == 0, status.output
    lines = status.output.splitlines()
    figures = lines[lines.index(f"  {arm}: {experiment.arm(arm).version}, 50.00% of users") + 1]
    assert figures == (
        "    answers 1, users 1, clicks 2, hits 1, hit rate 50.00% (95% CI 9.45%-90.55%, "
        "worth 2 independent clicks), purchases 1"
    )


async def test_an_arms_users_answered_lately_get_its_vectors_before_it_serves(
    served: Served,
) -> None:
    """Before an experiment serves, each arm's version (not the current one) computes
    the vectors of the users answered lately whom the experiment assigns to it: their
    next answers come from that version without running the encoder."""
    await with_history(served, USERS)
    second = publish(served.models, served.root, served.first.version, make_current=False)
    experiment = halves(second.version)
    in_arm = [u for u in USERS if experiment.arm_of(u).version == second.version]
    assert 0 < len(in_arm) < len(USERS)
    async with in_process(served.settings) as (client, app):
        for user in USERS:  # answered by the current version: remembered
            await client.post("/v1/recommend", json={"user_id": user, "k": 5})

        async def encodes() -> float:
            text = (await client.get("/metrics")).text
            return histogram_count(text, "streamrec_serve_stage_seconds", stage="encode")

        text = (await client.get("/metrics")).text
        warmed = counter_total(text, "streamrec_serve_vector_refreshes", outcome="refreshed")
        experiments.start(served.root, experiment)
        await app.state.serving.holder.hold_experiment()
        text = (await client.get("/metrics")).text
        now_warmed = counter_total(text, "streamrec_serve_vector_refreshes", outcome="refreshed")
        assert now_warmed - warmed == len(in_arm)
        before = await encodes()
        for user in in_arm:
            answer = (await client.post("/v1/recommend", json={"user_id": user, "k": 5})).json()
            assert answer["model_version"] == second.version
        assert await encodes() == before  # no answer ran the encoder


async def test_each_arms_online_figures_are_exported_to_prometheus_until_it_ends(
    served: Served,
) -> None:
    """The server reads the running experiment's counters from Redis into gauges per
    arm (answers, users, clicks, hits, purchases; the hit rate with its interval over
    users, as `streamrec experiment status` shows it); the series go when it ends."""
    second = publish(served.models, served.root, served.first.version, make_current=False)
    experiment = experiments.start(served.root, halves(second.version))
    user = USERS[0]
    arm = experiment.arm_of(user).name
    await with_history(served, [user])
    settings = served.settings.model_copy(update={"serve_experiment_figures_s": 0.1})
    store = StateStore(settings)
    try:
        async with in_process(settings) as (client, _):
            answer = (await client.post("/v1/recommend", json={"user_id": user, "k": 5})).json()
            shown = [item["item_id"] for item in answer["items"]]
            elsewhere = next(i for i in reversed(served.items) if i not in shown)
            await wait_until_async(
                lambda: _arm_counted(store, experiment.run_id, arm, "answers", 1)
            )
            await store.apply_events(
                [
                    *events_for(user, [shown[0], elsewhere], start=100),
                    *events_for(user, [shown[1]], EventType.PURCHASE, start=200),
                ]
            )
            counts = (await store.experiment_counts(experiment.run_id))[arm]
            low, high = hit_rates.interval(hit_rates.ArmCounts.of(counts))

            async def exported() -> dict[str, float]:
                text = (await client.get("/metrics")).text
                figures = {
                    labels["count"]: value
                    for labels, value in gauge_samples(text, "streamrec_experiment_arm_count")
                    if labels["arm"] == arm and labels["experiment"] == experiment.name
                }
                figures.update(
                    (labels["bound"], value)
                    for labels, value in gauge_samples(text, "streamrec_experiment_arm_hit_rate")
                    if labels["arm"] == arm
                )
                return figures

            wanted = {"answers": 1, "users": 1, "clicks": 2, "hits": 1, "purchases": 1,
                      "estimate": 0.5, "low_95": low, "high_95": high}  # fmt: skip
            await wait_until_async(lambda: _equal_figures(exported(), wanted))
            experiments.stop(served.root)

            async def gone() -> bool:
                return not await exported()

            await wait_until_async(gone)
    finally:
        await store.close()


async def _arm_counted(store: StateStore, run_id: str, arm: str, count: str, value: int) -> bool:
    return (await store.experiment_counts(run_id)).get(arm, {}).get(count) == value


async def _equal_figures(figures: Awaitable[dict[str, float]], wanted: dict[str, float]) -> bool:
    got = await figures
    return got.keys() == wanted.keys() and all(
        got[name] == pytest.approx(value) for name, value in wanted.items()
    )


async def test_the_admin_api_starts_shows_promotes_and_stops(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="streamrec.audit")
    second = publish(served.models, served.root, served.first.version, make_current=False)
    body = {
        "name": "api-ab",
        "arms": [
            {"name": "control", "version": "current", "weight": 3},
            {"name": "candidate", "version": second.version, "weight": 1},
        ],
    }
    async with in_process(served.settings) as (client, _):
        assert (await client.put("/v1/admin/experiment", json=body)).status_code == 401
        started = await client.put("/v1/admin/experiment", json=body, headers=ADMIN)
        assert started.status_code == 201, started.text
        assert started.json() == {"outcome": "started", "experiment": "api-ab"}
        # Served here before the answer: the next request already has its arm.
        running = experiments.read(served.root)
        assert running is not None
        user = next(u for u in USERS if running.arm_of(u).name == "candidate")
        answer = (await client.post("/v1/recommend", json={"user_id": user, "k": 5})).json()
        assert (answer["arm"], answer["model_version"]) == ("candidate", second.version)

        shown = (await client.get("/v1/admin/experiment", headers=ADMIN)).json()["experiment"]
        assert (shown["name"], shown["run_id"]) == ("api-ab", running.run_id)
        arms = {arm["name"]: arm for arm in shown["arms"]}
        assert arms["control"]["share"] == 0.75 and arms["candidate"]["share"] == 0.25
        assert arms["control"]["served_by"] == served.first.version
        assert arms["candidate"]["served_by"] == second.version
        assert arms["control"]["counts"]["hit_rate"] is None

        again = await client.put("/v1/admin/experiment", json=body, headers=ADMIN)
        assert again.status_code == 409 and again.json()["error"] == "experiment_refused"
        bad = {**body, "arms": [{"name": "a", "version": "current", "weight": 1}] * 2}
        invalid = await client.put("/v1/admin/experiment", json=bad, headers=ADMIN)
        assert invalid.status_code == 409 and "unique" in invalid.json()["detail"]
        nowhere = await client.post(
            "/v1/admin/experiment/promote", json={"arm": "nope"}, headers=ADMIN
        )
        assert nowhere.status_code == 409 and "no arm 'nope'" in nowhere.json()["detail"]

        promoted = await client.post(
            "/v1/admin/experiment/promote", json={"arm": "candidate"}, headers=ADMIN
        )
        assert promoted.json() == {
            "outcome": "swapped",
            "experiment": "api-ab",
            "model_version": second.version,
            "previous": served.first.version,
        }
        assert registry.current_version(served.root) == second.version
        after = (await client.post("/v1/recommend", json={"user_id": user, "k": 5})).json()
        assert (after["arm"], after["model_version"]) == (None, second.version)
        none = await client.get("/v1/admin/experiment", headers=ADMIN)
        assert none.json() == {"experiment": None}

        assert (await client.put("/v1/admin/experiment", json=body, headers=ADMIN)).is_success
        stopped = await client.delete("/v1/admin/experiment", headers=ADMIN)
        assert stopped.json() == {"outcome": "stopped", "experiment": "api-ab"}
        gone = await client.delete("/v1/admin/experiment", headers=ADMIN)
        assert gone.status_code == 409 and "no experiment runs" in gone.json()["detail"]

    audit = [json.loads(r.getMessage()) for r in caplog.records if r.name == "streamrec.audit"]
    actions = [(line["action"], line["outcome"]) for line in audit if line["audit"] == "admin"]
    assert actions == [
        ("experiment_start", "started"),
        ("experiment_show", "running"),
        ("experiment_start", "experiment_refused"),
        ("experiment_start", "experiment_refused"),
        ("experiment_promote", "promotion_refused"),
        ("experiment_promote", "swapped"),
        ("experiment_show", "none"),
        ("experiment_start", "started"),
        ("experiment_stop", "stopped"),
        ("experiment_stop", "experiment_refused"),
    ]
    assert [line["action"] for line in experiments.history(served.root)] == [
        "started",
        "promoted",
        "started",
        "stopped",
    ]


async def test_only_holders_that_answer_users_follow_experiments(served: Served) -> None:
    """The stream worker's holder (no `experiments`) opens no arm's version; the
    server's does, and drops it when the experiment ends."""
    second = publish(served.models, served.root, served.first.version, make_current=False)
    experiments.start(served.root, halves(second.version))
    worker = ModelHolder(served.root, ServeMetrics(CollectorRegistry()))
    server = ModelHolder(served.root, ServeMetrics(CollectorRegistry()), experiments=True)
    for holder in (worker, server):
        await holder.load()
        await holder.hold_experiment()
    assert (worker.experiment, worker.arm_models) == (None, [])
    assert worker.route(USERS[0]).arm is None
    assert server.experiment is not None
    assert [model.version for model in server.arm_models] == [second.version]
    assert {server.route(user).arm for user in USERS} == {"control", "candidate"}
    experiments.stop(served.root)
    await server.hold_experiment()
    assert server.arm_models == [] and server.route(USERS[0]).arm is None


async def test_admin_changes_under_concurrent_requests_fail_no_answer(served: Served) -> None:
    """Start, promote, start again and stop through the admin API while eight
    clients ask the same process without pause: every answer a 200 with its items,
    each arm-named one from that arm's version at that moment."""
    await with_history(served, USERS)
    first = served.first.version
    second = publish(served.models, served.root, first, make_current=False).version
    asking = Askers()
    async with in_process(served.settings) as (client, _):
        asking.start(client)
        steps = [
            client.put("/v1/admin/experiment", headers=ADMIN,
                       json={"name": "a", "arms": [
                           {"name": "control", "version": "current", "weight": 1},
                           {"name": "candidate", "version": second, "weight": 1}]}),
            client.post("/v1/admin/experiment/promote", headers=ADMIN, json={"arm": "candidate"}),
            client.put("/v1/admin/experiment", headers=ADMIN,
                       json={"name": "b", "arms": [
                           {"name": "control", "version": "current", "weight": 1},
                           {"name": "old", "version": first, "weight": 1}]}),
            client.delete("/v1/admin/experiment", headers=ADMIN),
        ]  # fmt: skip
        for step in steps:
            await asyncio.sleep(0.3)
            response = await step
            assert response.is_success, response.text
        await asyncio.sleep(0.3)
        await asking.stop()
    assert asking.failures == []
    answered = [(arm, version) for _, arm, version in asking.answers]
    arms = {arm for arm, _ in answered}
    assert {"control", "candidate", "old", None} <= arms
    assert {v for arm, v in answered if arm == "candidate"} == {second}
    assert {v for arm, v in answered if arm == "old"} == {first}
    assert answered[-1] == (None, second)
