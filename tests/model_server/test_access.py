"""Who reads what (model_server/access.py): API keys with scopes on a server that
does not bind loopback, the admin scope, what /model withholds, the audit lines
and the limit on refused credentials."""

from __future__ import annotations

import json
import logging

import pytest

from bench.scenarios.users import apply, events_for
from model_server.access import key_digest
from streamrec.settings import ApiKey, Settings
from tests.model_server.conftest import ADMIN_TOKEN, Served, in_process

READER, EXPLAINER, PRODUCER, OPERATOR = "reader-key", "explainer-key", "producer-key", "op-key"


def closed(served: Served) -> Settings:
    """The server as a deployment runs it: bound to every address, with keys."""
    keys = [
        ApiKey(id="web", sha256=key_digest(READER), scopes=("read",)),
        ApiKey(id="support", sha256=key_digest(EXPLAINER), scopes=("read", "explain")),
        ApiKey(id="shop", sha256=key_digest(PRODUCER), scopes=("write",)),
        ApiKey(id="ops", sha256=key_digest(OPERATOR), scopes=("read", "admin")),
    ]
    return served.settings.model_copy(update={"serve_host": "0.0.0.0", "api_keys": keys})


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "streamrec.audit"]


async def test_reads_need_a_key_with_their_scope_off_loopback(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    await apply(served.settings, events_for("ann", served.items[:3]))
    body = {"user_id": "ann", "k": 3}
    caplog.set_level(logging.WARNING, logger="streamrec.audit")
    async with in_process(closed(served)) as (client, _):
        anonymous = await client.post("/v1/recommend", json=body)
        wrong = await client.post("/v1/recommend", json=body, headers=bearer("guess"))
        read = await client.post("/v1/recommend", json=body, headers={"X-API-Key": READER})
        explain_refused = await client.post(
            "/v1/recommend", json={**body, "explain": True}, headers=bearer(READER)
        )
        explained = await client.post(
            "/v1/recommend", json={**body, "explain": True}, headers=bearer(EXPLAINER)
        )
        events = await client.post("/v1/events", json=[], headers=bearer(READER))
        written = await client.post("/v1/events", json=[], headers=bearer(PRODUCER))
        probes = [await client.get(path) for path in ("/healthz", "/readyz", "/metrics")]
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "unauthorized"
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert wrong.status_code == 401 and "unknown API key" in wrong.json()["detail"]
    assert read.status_code == 200 and len(read.json()["items"]) == 3
    assert explain_refused.status_code == 403 and "'explain'" in explain_refused.json()["detail"]
    assert explained.status_code == 200 and explained.json()["history"]
    assert events.status_code == 403 and written.status_code != 403
    assert [p.status_code for p in probes] == [200, 200, 200]  # probes need no key
    refused = audit_lines(caplog)
    assert [(line["key_id"], line["reason"]) for line in refused] == [
        (None, "no credential for read"),
        (None, "unknown credential"),
        ("web", "no explain scope"),
        ("web", "no write scope"),
    ]
    assert all(READER not in json.dumps(line) for line in refused)  # keys never logged


async def test_admin_needs_the_admin_scope_and_each_action_is_audited(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="streamrec.audit")
    async with in_process(closed(served)) as (client, _):
        reader = await client.post("/v1/admin/reload", headers=bearer(READER))
        by_key = await client.post("/v1/admin/reload", headers=bearer(OPERATOR))
        by_token = await client.post("/v1/admin/reload", headers=bearer(ADMIN_TOKEN))
    assert reader.status_code == 403
    assert by_key.status_code == 200 and by_token.status_code == 200
    actions = [line for line in audit_lines(caplog) if line["audit"] == "admin"]
    assert [(a["key_id"], a["action"], a["outcome"]) for a in actions] == [
        ("ops", "reload", by_key.json()["outcome"]),
        ("admin-token", "reload", by_token.json()["outcome"]),
    ]


async def test_model_withholds_refusal_reasons_from_readers(served: Served) -> None:
    async with in_process(closed(served)) as (client, app):
        app.state.serving.holder.refused["v-bad"] = f"checksum mismatch in {served.root}/x"
        seen = (await client.get("/v1/model", headers=bearer(READER))).json()
        operator = (await client.get("/v1/model", headers=bearer(OPERATOR))).json()
    assert seen["refused"] == {"v-bad": "refused"}
    assert "checksum mismatch" in operator["refused"]["v-bad"]
    assert str(served.root) not in json.dumps(seen) + json.dumps(operator)


async def test_refused_credentials_are_limited_per_address(served: Served) -> None:
    async with in_process(closed(served)) as (client, _):
        for _ in range(served.settings.serve_refusals_per_window):
            refused = await client.get("/v1/model", headers=bearer("guess"))
            assert refused.status_code == 401
        limited = await client.get("/v1/model", headers=bearer(READER))
    assert limited.status_code == 429 and limited.json()["error"] == "too_many_refusals"
    assert int(limited.headers["retry-after"]) >= 1


async def test_reads_are_open_on_loopback_unless_closed(served: Served) -> None:
    async with in_process(served.settings) as (client, _):
        opened = await client.get("/v1/model")
    shut = served.settings.model_copy(update={"serve_open_reads": False})
    async with in_process(shut) as (client, _):
        refused = await client.get("/v1/model")
    assert opened.status_code == 200 and refused.status_code == 401


def test_a_key_entry_holds_a_sha256_and_known_scopes() -> None:
    with pytest.raises(ValueError):
        ApiKey(id="x", sha256="not-hex", scopes=("read",))
    with pytest.raises(ValueError):
        ApiKey(id="x", sha256=key_digest("k"), scopes=("everything",))  # type: ignore[arg-type]


def test_keys_new_prints_a_key_and_only_its_hash_for_the_settings() -> None:
    from typer.testing import CliRunner

    from cli import app

    made = CliRunner().invoke(app, ["keys", "new", "--id", "web", "--scopes", "read,explain"])
    assert made.exit_code == 0, made.output
    key_line, entry_line = made.output.strip().splitlines()
    key = key_line.removeprefix("key: ")
    entry = ApiKey.model_validate_json(entry_line.removeprefix("STREAMREC_API_KEYS entry: "))
    assert entry == ApiKey(id="web", sha256=key_digest(key), scopes=("read", "explain"))
    assert key not in entry_line
    refused = CliRunner().invoke(app, ["keys", "new", "--id", "web", "--scopes", "root"])
    assert refused.exit_code != 0
