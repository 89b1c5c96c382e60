"""The OpenAPI 3.1 document, generated from the request and response models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from model_server.schemas import (
    ProblemBody,
    RecommendResponse,
    RequestModels,
    RollbackRequest,
    ScoreResponse,
    SwapResponse,
)

REF = "#/components/schemas/{model}"


def openapi_document(requests: RequestModels, version: str) -> dict[str, Any]:
    models: list[type[BaseModel]] = [
        requests.recommend,
        requests.score,
        RecommendResponse,
        ScoreResponse,
        RollbackRequest,
        SwapResponse,
        ProblemBody,
    ]
    inputs = (requests.recommend, requests.score, RollbackRequest)
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

    def answer(description: str, model: type[BaseModel] | None = None) -> dict[str, Any]:
        content = {"application/json": {"schema": ref(model)}} if model else {}
        return {"description": description, "content": content}

    problems = {
        "400": answer("Malformed JSON", ProblemBody),
        "413": answer("Body too large", ProblemBody),
        "422": answer("A field is missing, of the wrong type or over a limit", ProblemBody),
    }
    unauthorized = {"401": answer("Missing or wrong bearer token", ProblemBody)}
    refused = {"409": answer("The bundle was refused; the old version keeps serving", ProblemBody)}
    admin_security: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "streamrec model server", "version": version},
        "paths": {
            "/recommend": {"post": {
                "summary": "Top-k items for a user",
                "requestBody": body(requests.recommend),
                "responses": {"200": answer("Ranked items", RecommendResponse), **problems},
            }},
            "/score": {"post": {
                "summary": "Ranker scores for the given items; unknown items per item",
                "requestBody": body(requests.score),
                "responses": {"200": answer("Scores in request order", ScoreResponse), **problems},
            }},
            "/model": {"get": {"summary": "The version being served",
                               "responses": {"200": answer("Manifest summary")}}},
            "/healthz": {"get": {"summary": "The process is alive",
                                 "responses": {"200": answer("ok")}}},
            "/readyz": {"get": {"summary": "Redis reachable and a model loaded",
                                "responses": {"200": answer("ready"), "503": answer("not ready")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics",
                                 "responses": {"200": answer("text exposition format")}}},
            "/admin/reload": {"post": {
                "summary": "Load the registry's current version now",
                "security": admin_security,
                "responses": {"200": answer("Swapped or unchanged", SwapResponse),
                              **unauthorized, **refused},
            }},
            "/admin/rollback": {"post": {
                "summary": "Point the registry at an earlier version and load it",
                "security": admin_security,
                "requestBody": {**body(RollbackRequest), "required": False},
                "responses": {"200": answer("Swapped or unchanged", SwapResponse),
                              **unauthorized, **refused},
            }},
        },
        "components": {
            "schemas": top.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }  # fmt: skip
