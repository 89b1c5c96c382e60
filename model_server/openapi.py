"""The OpenAPI 3.1 document, generated from the request and response models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from model_server.schemas import (
    HealthResponse,
    ModelResponse,
    ProblemBody,
    ReadyResponse,
    RecommendResponse,
    RequestModels,
    RollbackRequest,
    ScoreResponse,
    SimilarResponse,
    SwapResponse,
)

REF = "#/components/schemas/{model}"


def openapi_document(requests: RequestModels, version: str) -> dict[str, Any]:
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
    ]
    inputs = (requests.recommend, requests.score, requests.similar, RollbackRequest)
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
    unauthorized = {"401": answer("Missing or wrong bearer token")}
    refused = {"409": answer("The bundle was refused; the old version keeps serving")}
    admin_security: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "streamrec model server", "version": version},
        "paths": {
            "/recommend": {"post": {
                "summary": "Top-k items for a user",
                "requestBody": body(requests.recommend),
                "responses": {"200": answer("Ranked items", RecommendResponse),
                              **with_body, **failed, **no_state},
            }},
            "/score": {"post": {
                "summary": "Ranker scores for the given items; unknown items per item",
                "requestBody": body(requests.score),
                "responses": {"200": answer("Scores in request order", ScoreResponse),
                              **with_body, **failed, **no_state},
            }},
            "/similar": {"post": {
                "summary": "Items like this one (customers who viewed this)",
                "requestBody": body(requests.similar),
                "responses": {"200": answer("Similar items", SimilarResponse),
                              **with_body, **failed, **no_state},
            }},
            "/model": {"get": {"summary": "The version being served",
                               "responses": {"200": answer("Manifest summary", ModelResponse),
                                             **failed}}},
            "/healthz": {"get": {"summary": "The process is alive",
                                 "responses": {"200": answer("ok", HealthResponse)}}},
            "/readyz": {"get": {"summary": "Redis reachable and a model loaded",
                                "responses": {"200": answer("ready", ReadyResponse),
                                              "503": answer("not ready", ReadyResponse)}}},
            "/metrics": {"get": {"summary": "Prometheus metrics",
                                 "responses": {"200": {
                                     "description": "text exposition format",
                                     "content": {"text/plain": {"schema": {"type": "string"}}},
                                 }}}},
            "/openapi.json": {"get": {"summary": "This document",
                                      "responses": {"200": {
                                          "description": "OpenAPI 3.1",
                                          "content": {"application/json": {
                                              "schema": {"type": "object"}}},
                                      }}}},
            "/admin/reload": {"post": {
                "summary": "Load the registry's current version now",
                "security": admin_security,
                "responses": {"200": answer("Swapped or unchanged", SwapResponse),
                              **unauthorized, **refused, **failed, **no_state},
            }},
            "/admin/rollback": {"post": {
                "summary": "Point the registry at an earlier version and load it",
                "security": admin_security,
                "requestBody": {**body(RollbackRequest), "required": False},
                "responses": {"200": answer("Swapped or unchanged", SwapResponse),
                              **with_body, **unauthorized, **refused, **failed, **no_state},
            }},
        },
        "components": {
            "schemas": top.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }  # fmt: skip
