"""The operator endpoints /admin/reload and /admin/rollback, for the admin token or
a key with the admin scope (model_server/access.py); each action leaves an audit
line with its outcome."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from model_server.access import Caller
from model_server.schemas import RollbackRequest
from model_server.serving import Problem, json_response, parse_body, serving_of
from streamrec.errors import BundleError
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
