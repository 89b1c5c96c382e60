"""The operator endpoints /admin/reload and /admin/rollback, behind a bearer token
compared in constant time; without a configured token they always answer 401."""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import Response

from model_server.schemas import RollbackRequest
from model_server.serving import Problem, json_response, parse_body, serving_of
from streamrec.errors import BundleError
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
