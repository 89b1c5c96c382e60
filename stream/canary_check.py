"""Judging the running canary from the leader worker, every STREAMREC_CANARY_CHECK_S:
the same evaluation as `streamrec experiment decide` (streamrec/canary.py), counted
in `streamrec_canary_decisions_total{decision}`."""

from __future__ import annotations

import logging

from redis.exceptions import RedisError

from streamrec.canary import Checked, Rule, check
from streamrec.errors import BundleError, ExperimentError
from streamrec.metrics import IngestMetrics
from streamrec.settings import Settings
from streamrec.state import StateStore

log = logging.getLogger(__name__)
# What was done -> the decision counted.
_COUNTED = {"promoted": "promote", "rolled_back": "rollback", "waiting": "wait"}


class CanaryCheck:
    def __init__(self, settings: Settings, state: StateStore, metrics: IngestMetrics) -> None:
        self.settings = settings
        self.state = state
        self.metrics = metrics
        self.rule = Rule.of(settings)

    async def tick(self) -> Checked | None:
        """One evaluation. Redis unreachable or the registry unreadable: logged, and
        the next tick tries again (an exception would stop the worker's timer)."""
        try:
            checked = await check(self.settings.registry, self.state, self.rule)
        except RedisError as exc:
            log.warning("canary check: Redis unavailable, next tick retries: %s", exc)
            return None
        except (ExperimentError, BundleError, OSError) as exc:
            log.error("canary check: no decision, next tick retries: %s", exc)
            return None
        if checked.action in _COUNTED:
            self.metrics.canary_decisions.labels(_COUNTED[checked.action]).inc()
        return checked
