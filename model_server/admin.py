"""The operator endpoints /admin/reload, /admin/rollback, DELETE
/v1/admin/users/{user_id} and /v1/admin/experiment (GET, PUT, DELETE, POST
.../promote), for the admin token or a key with the admin scope
(model_server/access.py); each action leaves an audit line with its outcome."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from model_server.access import Caller
from model_server.schemas import (
    ArmCounts,
    ArmStatus,
    ExperimentChange,
    ExperimentRequest,
    ExperimentResponse,
    ExperimentStatus,
    ForgetHorizon,
    ForgetResponse,
    PromoteRequest,
    RollbackRequest,
)
from model_server.serving import Problem, Serving, json_response, parse_body, serving_of
from streamrec import experiments, hit_rates
from streamrec.errors import BundleError, ExperimentError, StreamrecError
from streamrec.experiments import Arm, Experiment
from streamrec.forget import check_user_id, send_forget
from streamrec.loaded import SwapResult
from streamrec.registry import refusal_reason

log = logging.getLogger(__name__)
# The experiment's counters are read with this bound; past it the answer has none.
COUNTS_TIMEOUT_S = 2.0


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


async def experiment(request: Request) -> Response:
    """GET /v1/admin/experiment: the running experiment, each arm's share, the
    version this process answers it with, and its online figures from Redis."""
    caller = require_token(request)
    serving = serving_of(request)
    try:
        running = await asyncio.to_thread(experiments.read, serving.settings.registry)
    except ExperimentError as exc:
        problem = Problem(409, "experiment_unreadable", str(exc))
        raise _failed(request, caller, "experiment_show", problem) from None
    serving.access.admitted(request, "experiment_show", "running" if running else "none", caller)
    if running is None:
        return json_response(ExperimentResponse(experiment=None).model_dump())
    try:
        async with asyncio.timeout(COUNTS_TIMEOUT_S):
            counts: dict[str, dict[str, int]] | None = await serving.store.experiment_counts(
                running.run_id
            )
    except (RedisError, TimeoutError) as exc:
        log.warning("experiment %s: its counters could not be read: %s", running.name, exc)
        counts = None
    status = ExperimentStatus(
        name=running.name,
        salt=running.salt,
        run_id=running.run_id,
        started_at=running.started_at,
        arms=[
            ArmStatus(
                name=arm.name,
                version=arm.version,
                weight=arm.weight,
                share=running.share(arm),
                served_by=_served_by(serving, running, arm),
                counts=None if counts is None else arm_counts(counts.get(arm.name, {})),
            )
            for arm in running.arms
        ],
    )
    return json_response(ExperimentResponse(experiment=status).model_dump())


def arm_counts(counts: dict[str, int]) -> ArmCounts:
    stored = hit_rates.ArmCounts.of(counts)
    clicks, hits = stored.clicks, stored.hits
    return ArmCounts(
        answers=stored.answers,
        users=stored.users,
        clicks=clicks,
        hits=hits,
        purchases=counts.get("purchases", 0),
        hit_rate=hits / clicks if clicks else None,
        hit_rate_95=hit_rates.interval(stored),
        effective_clicks=round(hit_rates.effective_clicks(stored), 1),
    )


def _served_by(serving: Serving, running: Experiment, arm: Arm) -> str | None:
    holder = serving.holder
    if holder.experiment != running or holder.held is None:
        return None
    held = {model.version: model for model in holder.arm_models}
    if arm.version in held:
        return arm.version
    return holder.held.version  # CURRENT's follower, the current version, or a fallback


@contextmanager
def _refused(
    request: Request, caller: Caller, action: str, code: str = "experiment_refused"
) -> Iterator[None]:
    """A change that is well-formed but against the rules (docs/experiments.md: a
    second experiment, a version not in the registry or that does not open): a 409
    with the reason, audited like every refused admin action."""
    try:
        yield
    except (ExperimentError, BundleError) as exc:
        problem = Problem(409, code, refusal_reason(exc))
        raise _failed(request, caller, action, problem) from None


async def start_experiment(request: Request) -> Response:
    """PUT /v1/admin/experiment: start one (409 while another runs, or when an arm's
    version is not in the registry); this process serves it before answering."""
    caller = require_token(request)
    body = await parse_body(request, ExperimentRequest)
    with _refused(request, caller, "experiment_start"):
        wanted = experiments.new_experiment(
            body.name,
            [experiments.Arm(arm.name, arm.version, arm.weight) for arm in body.arms],
            body.salt,
        )
        await serving_of(request).holder.start_experiment(wanted)
    serving_of(request).access.admitted(request, "experiment_start", "started", caller)
    change = ExperimentChange(
        outcome="started", experiment=wanted.name, model_version=None, previous=None
    )
    return json_response(change.model_dump(exclude_none=True), 201)


async def stop_experiment(request: Request) -> Response:
    """DELETE /v1/admin/experiment: end it; every user on the current version."""
    caller = require_token(request)
    with _refused(request, caller, "experiment_stop"):
        ended = await serving_of(request).holder.stop_experiment()
    serving_of(request).access.admitted(request, "experiment_stop", "stopped", caller)
    change = ExperimentChange(
        outcome="stopped", experiment=ended.name, model_version=None, previous=None
    )
    return json_response(change.model_dump(exclude_none=True))


async def promote_experiment(request: Request) -> Response:
    """POST /v1/admin/experiment/promote: point CURRENT at the arm's version (the one
    this process holds for it, else opened first) and serve it, then end the
    experiment; a version that does not open is a 409 and nothing moves."""
    caller = require_token(request)
    body = await parse_body(request, PromoteRequest)
    with _refused(request, caller, "experiment_promote", "promotion_refused"):
        ended, result = await serving_of(request).holder.promote(body.arm)
    serving_of(request).access.admitted(request, "experiment_promote", result.outcome, caller)
    change = ExperimentChange(
        outcome=result.outcome,
        experiment=ended.name,
        model_version=result.version,
        previous=result.previous,
    )
    return json_response(change.model_dump())
