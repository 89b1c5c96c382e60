"""The operator endpoints /admin/reload, /admin/rollback and DELETE
/v1/admin/users/{user_id}, behind a bearer token compared in constant time; without
a configured token they always answer 401."""

from __future__ import annotations

import asyncio
import hmac

from starlette.requests import Request
from starlette.responses import Response

from model_server.schemas import ForgetHorizon, ForgetResponse, RollbackRequest
from model_server.serving import Problem, json_response, parse_body, serving_of
from streamrec.errors import BundleError, StreamrecError
from streamrec.forget import check_user_id, send_forget
from streamrec.loaded import SwapResult
from streamrec.registry import refusal_reason


def require_token(request: Request) -> None:
    expected = serving_of(request).settings.admin_token
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # compare_digest on bytes: the time taken does not depend on where they differ.
    valid = hmac.compare_digest(given.strip().encode(), expected.encode())
    if not expected or scheme.lower() != "bearer" or not valid:
        reason = (
            "admin endpoints are disabled (no admin token configured)"
            if not expected
            else ("expected 'Authorization: Bearer <admin token>'")
        )
        raise Problem(401, "unauthorized", reason, {"WWW-Authenticate": "Bearer"})


def _swapped(result: SwapResult) -> Response:
    return json_response(
        {"outcome": result.outcome, "model_version": result.version, "previous": result.previous}
    )


async def reload(request: Request) -> Response:
    """Load the version the registry's current pointer names, now."""
    require_token(request)
    try:
        return _swapped(await serving_of(request).holder.load())
    except BundleError as exc:
        raise Problem(409, "bundle_refused", refusal_reason(exc)) from None


async def rollback(request: Request) -> Response:
    """Open an earlier version (default: CURRENT's parent), then point the registry at
    it and serve it; a target that does not open is a 409 and CURRENT stays."""
    require_token(request)
    body = await parse_body(request, RollbackRequest, empty_ok=True)
    try:
        return _swapped(await serving_of(request).holder.rollback(body.version))
    except BundleError as exc:
        raise Problem(409, "rollback_refused", refusal_reason(exc)) from None


async def forget_user(request: Request) -> Response:
    """Ask the workers to forget a user: a request on `users.forget`, answered 202 once
    the broker acknowledged it (the worker applies it after the user's earlier events)."""
    require_token(request)
    user_id = request.path_params["user_id"]
    problem = check_user_id(user_id)
    if problem is not None:
        raise Problem(400, "invalid_user_id", problem)
    settings = serving_of(request).settings
    try:
        sent = await asyncio.to_thread(send_forget, settings, user_id)
    except StreamrecError as exc:
        raise Problem(503, "kafka_unavailable", str(exc), {"Retry-After": "5"}) from None
    answer = ForgetResponse(
        user_id=user_id,
        status="requested",
        topic=settings.topic_users_forget,
        requested_ms=sent.requested_ms,
        horizon=[ForgetHorizon(topic=h.topic, partition=h.partition, offset=h.offset)
                 for h in sent.horizon],
    )  # fmt: skip
    return json_response(answer.model_dump(), 202)
