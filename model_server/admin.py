"""The operator endpoints /admin/reload, /admin/rollback and DELETE
/v1/admin/users/{user_id}, for the admin token or a key with the admin scope
(model_server/access.py); each action leaves an audit line with its outcome."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from model_server.access import Caller
from model_server.schemas import ForgetHorizon, ForgetResponse, RollbackRequest
from model_server.serving import Problem, json_response, parse_body, serving_of
from streamrec.errors import BundleError, StreamrecError
from streamrec.forget import check_user_id, send_forget
from streamrec.loaded import SwapResult
from streamrec.registry import refusal_reason


def require_token(request: Request) -> Caller:
    """The admin caller, else a 401 or 403 (and an audit line)."""
    return serving_of(request).access.require(request, "admin")


def _swapped(request: Request, caller: Caller, action: str, result: SwapResult) -> Response:
    serving_of(request).access.admitted(request, action, result.outcome, caller)
    return json_response(
        {"outcome": result.outcome, "model_version": result.version, "previous": result.previous}
    )


def _failed(request: Request, caller: Caller, action: str, problem: Problem) -> Problem:
    serving_of(request).access.admitted(request, action, problem.error, caller)
    return problem


async def reload(request: Request) -> Response:
    """Load the version the registry's current pointer names, now."""
    caller = require_token(request)
    try:
        return _swapped(request, caller, "reload", await serving_of(request).holder.load())
    except BundleError as exc:
        problem = Problem(409, "bundle_refused", refusal_reason(exc))
        raise _failed(request, caller, "reload", problem) from None


async def rollback(request: Request) -> Response:
    """Open an earlier version (default: CURRENT's parent), then point the registry at
    it and serve it; a target that does not open is a 409 and CURRENT stays."""
    caller = require_token(request)
    body = await parse_body(request, RollbackRequest, empty_ok=True)
    try:
        result = await serving_of(request).holder.rollback(body.version)
    except BundleError as exc:
        problem = Problem(409, "rollback_refused", refusal_reason(exc))
        raise _failed(request, caller, "rollback", problem) from None
    return _swapped(request, caller, "rollback", result)


async def forget_user(request: Request) -> Response:
    """Ask the workers to forget a user: a request on `users.forget`, answered 202 once
    the broker acknowledged it (the worker applies it after the user's earlier events)."""
    caller = require_token(request)
    user_id = request.path_params["user_id"]
    problem = check_user_id(user_id)
    if problem is not None:
        raise _failed(request, caller, "forget", Problem(400, "invalid_user_id", problem))
    settings = serving_of(request).settings
    try:
        sent = await asyncio.to_thread(send_forget, settings, user_id)
    except StreamrecError as exc:
        unavailable = Problem(503, "kafka_unavailable", str(exc), {"Retry-After": "5"})
        raise _failed(request, caller, "forget", unavailable) from None
    serving_of(request).access.admitted(request, "forget", "requested", caller)
    answer = ForgetResponse(
        user_id=user_id,
        status="requested",
        topic=settings.topic_users_forget,
        requested_ms=sent.requested_ms,
        horizon=[ForgetHorizon(topic=h.topic, partition=h.partition, offset=h.offset)
                 for h in sent.horizon],
    )  # fmt: skip
    return json_response(answer.model_dump(), 202)
