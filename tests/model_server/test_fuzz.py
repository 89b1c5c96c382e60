"""The live server fuzzed from its own OpenAPI document (schemathesis): whatever a
generated request holds, valid or not, the answer is no 5xx, its status is one the
document lists for that operation, and its body matches the schema given for it."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.core.result import Ok

from bench.scenarios.models import publish
from bench.scenarios.users import apply, events_for
from bench.scenarios.workers import pipeline_names
from devtools.devstack import free_port
from devtools.processes import ServiceProcess
from retrain.training import TrainedModels
from streamrec.settings import Settings
from streamrec.topics import ensure_topics
from tests.model_server.conftest import ADMIN_TOKEN

pytestmark = pytest.mark.integration

# Per operation and mode (valid, invalid); ten operations: a few hundred requests,
# well under a minute.
EXAMPLES = 30
REFUSALS = [400, 401, 404, 405, 409, 413, 422]


@pytest.fixture(scope="module")
def fuzzed_server(
    trained: TrainedModels, serve_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("fuzz")
    redis.Redis.from_url(serve_settings.redis_url).flushdb()
    settings = serve_settings.model_copy(
        update={
            "registry": workdir / "registry",
            "serve_port": free_port(),
            # The fuzzer sends wrong credentials on purpose, hundreds of them: the
            # limit on refusals (tests/model_server/test_access.py) would 429 it.
            "serve_refusals_per_window": 0,
            **pipeline_names("fuzz"),
        }
    )
    publish(trained, settings.registry)
    ensure_topics(settings)  # POST /v1/events writes to them
    asyncio.run(apply(settings, events_for("fuzz-user", list(trained.vocab.item_ids)[:5])))
    log_path = workdir / "serve.log"
    with ServiceProcess(settings, ["serve"], log_path, settings.serve_port):
        yield f"http://127.0.0.1:{settings.serve_port}"


def test_the_live_server_answers_as_its_schema_says(fuzzed_server: str) -> None:
    # Hypothesis driven by hand: schemathesis's pytest plugin does not run on pytest 9.
    # An invalid request is refused with one of the 4xx the document lists: 413 too
    # (a generated body over the size limit), which schemathesis does not expect.
    refused = {"checks": {"negative_data_rejection": {"expected-statuses": REFUSALS}}}
    api = schemathesis.openapi.from_url(
        f"{fuzzed_server}/openapi.json", config=schemathesis.Config.from_dict(refused)
    )
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    failures: list[str] = []
    operations = []
    for found in api.get_all_operations():
        assert isinstance(found, Ok), found.err()
        operations.append(found.ok())
    for operation, mode in itertools.product(operations, schemathesis.GenerationMode):

        @given(case=operation.as_strategy(mode))
        @settings(max_examples=EXAMPLES, suppress_health_check=list(HealthCheck), deadline=None)
        def answers_as_documented(case: Any) -> None:
            case.call_and_validate(headers=headers)

        try:
            answers_as_documented()
        except Unsatisfiable:
            assert mode is schemathesis.GenerationMode.NEGATIVE  # nothing to get wrong
        except Exception as exc:  # every operation's failures, not only the first one's
            failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)
