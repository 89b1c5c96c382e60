"""The OpenAPI 3.1 document, generated from the request and response models."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from model_server.schemas import (
    EventsResponse,
    ExperimentChange,
    ExperimentRequest,
    ExperimentResponse,
    ForgetResponse,
    HealthResponse,
    ModelResponse,
    ProblemBody,
    PromoteRequest,
    ReadyResponse,
    RecommendResponse,
    RequestModels,
    RollbackRequest,
    ScoreResponse,
    SimilarResponse,
    SwapResponse,
    VersionsResponse,
)

REF = "#/components/schemas/{model}"


def event_schema() -> dict[str, Any]:
    """streamrec/schemas/event.schema.json with its `$defs` inlined (a `$ref` inside
    an OpenAPI component resolves against the whole document, not the file)."""
    text = resources.files("streamrec").joinpath("schemas/event.schema.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    definitions = loaded.pop("$defs", {})
    for key in ("$schema", "$id"):
        loaded.pop(key, None)

    def inlined(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return {
                    **definitions[ref.removeprefix("#/$defs/")],
                    **{k: v for k, v in node.items() if k != "$ref"},
                }
            return {k: inlined(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inlined(v) for v in node]
        return node

    result: dict[str, Any] = inlined(loaded)
    return result


def openapi_document(
    requests: RequestModels, version: str, max_events: int = 1000
) -> dict[str, Any]:
    models: list[type[BaseModel]] = [
        requests.recommend,
        requests.score,
        requests.similar,
        RecommendResponse,
        SimilarResponse,
        ScoreResponse,
        RollbackRequest,
        SwapResponse,
        ModelResponse,
        HealthResponse,
        ReadyResponse,
        ProblemBody,
        EventsResponse,
        VersionsResponse,
        ForgetResponse,
        ExperimentRequest,
        PromoteRequest,
        ExperimentResponse,
        ExperimentChange,
    ]
    inputs = (
        requests.recommend,
        requests.score,
        requests.similar,
        RollbackRequest,
        ExperimentRequest,
        PromoteRequest,
    )
    refs, top = models_json_schema(
        [(m, "validation" if m in inputs else "serialization") for m in models],
        ref_template=REF,
    )

    def ref(model: type[BaseModel], mode: str = "serialization") -> dict[str, Any]:
        return refs[(model, mode)]  # type: ignore[index]

    def body(model: type[BaseModel]) -> dict[str, Any]:
        return {
            "required": True,
            "content": {"application/json": {"schema": ref(model, "validation")}},
        }

    def answer(description: str, model: type[BaseModel] = ProblemBody) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": ref(model)}}}

    # Every status an operation can answer (docs/serving.md has the table).
    with_body = {
        "400": answer("Malformed JSON"),
        "408": answer("The body did not arrive within the body timeout; the connection is closed"),
        "413": answer("Body too large"),
        "422": answer("A field is missing, of the wrong type or over a limit"),
        "499": answer("The client closed the connection before its body arrived (it sees none)"),
    }
    failed = {"500": answer("A bug, logged with its traceback")}
    no_state = {
        "503": answer(
            "Redis did not answer in time (state_unavailable) or the process "
            "has as many requests in progress as it takes (overloaded); "
            "see Retry-After"
        )
    }
    # Before the first model loads (STREAMREC_SERVE_WAIT_FOR_MODEL) /recommend and
    # /similar answer without one; what needs the model is a 503 no_model.
    no_state_or_model = {
        "503": answer(
            "No model version is loaded yet (no_model), Redis did not answer in time "
            "(state_unavailable) or the process has as many requests in progress as "
            "it takes (overloaded); see Retry-After"
        )
    }
    no_model = {"503": answer("No model version is loaded yet (no_model); see Retry-After")}
    # Keys and their scopes: model_server/access.py, docs/serving.md ("Access").
    guarded = {
        "401": answer("No credential where one is needed, or an unknown one"),
        "403": answer("The key lacks the scope this needs (read, explain, write, admin)"),
        "429": answer("Too many refused credentials from this address; see Retry-After"),
    }
    unauthorized = guarded
    refused = {"409": answer("The bundle was refused; the old version keeps serving")}
    experiment_refused = {
        "409": answer(
            "Refused, nothing changed: another experiment runs, none runs, an arm's "
            "version is not in the registry or does not open, no such arm, arms against "
            "the rules (names, unique, a weight too small for one bucket), or the "
            "record is unreadable"
        )
    }
    admin_security: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]
    # {}: no credential, while reads are open (by default on a loopback bind only).
    read_security: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}, {}]
    accepted_events = {
        "202": answer("Each event's outcome; every valid one is on Kafka", EventsResponse),
        "503": answer(
            "Some valid events are not on Kafka (not_written) or the process is "
            "overloaded; see Retry-After and each event's outcome",
            EventsResponse,
        ),
    }
    examples = {
        "recommend": {"user_id": "u021", "k": 10},
        "score": {"user_id": "u021", "item_ids": ["i0002", "i0040"]},
        "similar": {"item_id": "i0002", "k": 10},
        "events": [
            {
                "event_id": "e-1",
                "user_id": "u021",
                "item_id": "i0002",
                "type": "click",
                "ts": "2026-12-06T10:00:00Z",
            }
        ],
        "rollback": {"version": "v20261206T044327Z-e79b72"},
        "experiment": {
            "name": "ranker-b",
            "arms": [
                {"name": "control", "version": "current", "weight": 90},
                {"name": "candidate", "version": "v20261206T044327Z-e79b72", "weight": 10},
            ],
        },
        "promote": {"arm": "candidate"},
        "forget": {
            "user_id": "u021",
            "status": "requested",
            "topic": "users.forget",
            "requested_ms": 1765015200000,
            "horizon": [
                {"topic": "clicks", "partition": 2, "offset": 18231},
                {"topic": "purchases", "partition": 2, "offset": 977},
            ],
        },
    }

    batch_event = {"description": "An event, judged by #/components/schemas/Event"}

    def with_example(request_body: dict[str, Any], name: str) -> dict[str, Any]:
        (media,) = request_body["content"].values()
        media["example"] = examples[name]
        return request_body

    def with_response_example(response: dict[str, Any], name: str) -> dict[str, Any]:
        (media,) = response["content"].values()
        media["example"] = examples[name]
        return response

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "streamrec model server",
            "version": version,
            "description": "The API is under /v1. The unversioned paths of earlier "
            "releases (/recommend, /score, /similar, /model, /admin/*) still answer, "
            "as aliases, for one more release.",
        },
        "paths": {
            "/v1/recommend": {"post": {
                "operationId": "recommend",
                "summary": "Top-k items for a user",
                "requestBody": with_example(body(requests.recommend), "recommend"),
                "responses": {"200": answer("Ranked items (trending, model_version "
                                            "null, before the first model loads)",
                                            RecommendResponse),
                              **with_body, **guarded, **failed, **no_state},
                "security": read_security,
            }},
            "/v1/score": {"post": {
                "operationId": "score",
                "summary": "Ranker scores for the given items; unknown items per item",
                "requestBody": with_example(body(requests.score), "score"),
                "responses": {"200": answer("Scores in request order", ScoreResponse),
                              **with_body, **guarded, **failed, **no_state_or_model},
                "security": read_security,
            }},
            "/v1/similar": {"post": {
                "operationId": "similar",
                "summary": "Items like this one (customers who viewed this)",
                "requestBody": with_example(body(requests.similar), "similar"),
                "responses": {"200": answer("Similar items", SimilarResponse),
                              **with_body, **guarded, **failed, **no_state},
                "security": read_security,
            }},
            "/v1/events": {"post": {
                "operationId": "events",
                "summary": "Send events without a Kafka client: each judged, the valid "
                           "ones written to Kafka before the answer",
                "description": "A batch is valid whatever its events hold: each event "
                               "is judged against the Event schema on its own, and a "
                               "bad one is reported in the answer, not refused with "
                               "the batch.",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"oneOf": [
                        {"type": "array", "items": batch_event, "minItems": 1,
                         "maxItems": max_events},
                        {"type": "object", "required": ["events"], "properties": {
                            "events": {"type": "array", "items": batch_event,
                                       "minItems": 1, "maxItems": max_events}}},
                    ]},
                    "example": examples["events"],
                }}},
                "responses": {**accepted_events, **with_body, **guarded, **failed},
                "security": read_security,
            }},
            "/v1/model": {"get": {"operationId": "model",
                                  "summary": "The version being served",
                                  "security": read_security,
                                  "responses": {"200": answer("Manifest summary", ModelResponse),
                                                **guarded, **failed, **no_model}}},
            "/v1/versions": {"get": {"operationId": "versions",
                                     "summary": "The registry's versions and their lineage",
                                     "security": read_security,
                                     "responses": {"200": answer("Versions", VersionsResponse),
                                                   **guarded, **failed}}},
            "/healthz": {"get": {"operationId": "healthz", "summary": "The process is alive",
                                 "responses": {"200": answer("ok", HealthResponse)}}},
            "/readyz": {"get": {"operationId": "readyz",
                                "summary": "Redis reachable; answers from a model, or "
                                           "from trending before the first one loads",
                                "responses": {"200": answer("ready", ReadyResponse),
                                              "503": answer("not ready", ReadyResponse)}}},
            "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus metrics",
                                 "responses": {"200": {
                                     "description": "text exposition format",
                                     "content": {"text/plain": {"schema": {"type": "string"}}},
                                 }}}},
            "/openapi.json": {"get": {"operationId": "openapi", "summary": "This document",
                                      "responses": {"200": {
                                          "description": "OpenAPI 3.1",
                                          "content": {"application/json": {
                                              "schema": {"type": "object"}}},
                                      }}}},
            "/v1/admin/reload": {"post": {
                "operationId": "adminReload",
                "summary": "Load the registry's current version now",
                "security": admin_security,
                "responses": {"200": answer("Swapped or unchanged", SwapResponse),
                              **unauthorized, **refused, **failed, **no_state},
            }},
            "/v1/admin/rollback": {"post": {
                "operationId": "adminRollback",
                "summary": "Point the registry at an earlier version and load it",
                "security": admin_security,
                "requestBody": {**with_example(body(RollbackRequest), "rollback"),
                                "required": False},
                "responses": {"200": answer("Swapped or unchanged", SwapResponse),
                              **with_body, **unauthorized, **refused, **failed, **no_state},
            }},
            "/v1/admin/experiment": {
                "get": {
                    "operationId": "adminExperiment",
                    "summary": "The running experiment: arms, shares, the version this "
                               "process answers each with, online figures per arm",
                    "security": admin_security,
                    "responses": {"200": answer("The experiment, or null", ExperimentResponse),
                                  **unauthorized, **experiment_refused, **failed},
                },
                "put": {
                    "operationId": "adminStartExperiment",
                    "summary": "Start an experiment: users split by a stable hash into "
                               "arms, each served by a version (docs/experiments.md)",
                    "security": admin_security,
                    "requestBody": with_example(body(ExperimentRequest), "experiment"),
                    "responses": {"201": answer("Started and served here", ExperimentChange),
                                  **with_body, **unauthorized, **experiment_refused,
                                  **failed},
                },
                "delete": {
                    "operationId": "adminStopExperiment",
                    "summary": "Stop the running experiment: every user on CURRENT",
                    "security": admin_security,
                    "responses": {"200": answer("Stopped", ExperimentChange),
                                  **unauthorized, **experiment_refused, **failed},
                },
            },
            "/v1/admin/experiment/promote": {"post": {
                "operationId": "adminPromoteArm",
                "summary": "Point CURRENT at an arm's version, serve it, end the experiment",
                "security": admin_security,
                "requestBody": with_example(body(PromoteRequest), "promote"),
                "responses": {"200": answer("Swapped or unchanged", ExperimentChange),
                              **with_body, **unauthorized, **experiment_refused, **failed,
                              **no_state},
            }},
            "/v1/admin/users/{user_id}": {"delete": {
                "operationId": "adminForgetUser",
                "summary": "Forget a user: every Redis key, archived event and "
                           "recommendation record of theirs, after their earlier events",
                "description": "Writes a request to the users.forget topic and answers "
                               "202 once Kafka acknowledged it; a worker applies it after "
                               "every event the user sent before (docs/operations.md, "
                               "\"Forgetting a user\"). Idempotent; a user never seen is "
                               "no error.",
                "security": admin_security,
                "parameters": [{
                    "name": "user_id", "in": "path", "required": True,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 128},
                    "example": "u021",
                }],
                "responses": {
                    "202": with_response_example(
                        answer("Requested: on Kafka, to be applied by a worker", ForgetResponse),
                        "forget",
                    ),
                    "400": answer("The user id is empty or longer than 128 characters"),
                    **unauthorized, **failed,
                    "503": answer("Kafka did not take the request (kafka_unavailable): "
                                  "nothing was recorded, send it again; see Retry-After"),
                },
            }},
        },
        "components": {
            "schemas": {**top.get("$defs", {}), "Event": event_schema()},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }  # fmt: skip
