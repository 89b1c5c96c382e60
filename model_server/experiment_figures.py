"""The running experiment's online figures per arm, as Prometheus gauges: what
`streamrec experiment status` shows (answers, users, clicks, hits, purchases of
recommended items, the hit rate with its 95% interval over users), read from the
run's counters in Redis (`sr:x:{<run id>}`, docs/experiments.md) every
`serve_experiment_figures_s`. The counters are shared by every process (the
stream worker counts the clicks), so each server exports the same values; a
dashboard takes `max by (experiment, arm, ...)`.

An arm's series go when its experiment ends (in a multi-process server, where a
series cannot be removed, they read NaN until the processes restart).
"""

from __future__ import annotations

import math

from redis.exceptions import RedisError

from model_server.polling import Polling
from streamrec import hit_rates
from streamrec.experiments import Experiment
from streamrec.loaded import ModelHolder
from streamrec.metrics import ServeMetrics
from streamrec.state import StateStore

COUNTS = ("answers", "users", "clicks", "hits", "purchases")
BOUNDS = ("estimate", "low_95", "high_95")


class ExperimentFigures:
    def __init__(
        self, holder: ModelHolder, store: StateStore, metrics: ServeMetrics, poll_s: float
    ) -> None:
        self.holder = holder
        self.store = store
        self.metrics = metrics
        # (experiment, arm) pairs with series out: dropped when the experiment ends.
        self._exported: set[tuple[str, str]] = set()
        self._polling = Polling(poll_s, "experiment figures: reading the arms' counters")

    async def read(self) -> None:
        """Set every arm's gauges from the running experiment's counters."""
        experiment = self.holder.experiment
        exported = set() if experiment is None else await self._export(experiment)
        for name, arm in self._exported - exported:
            self._drop(name, arm)
        self._exported = exported

    async def follow(self) -> None:
        """Read every `poll_s` until `stop()`; a Redis outage keeps the last values."""
        await self._polling.run(self.read, (RedisError,))

    def stop(self) -> None:
        self._polling.stop()

    async def _export(self, experiment: Experiment) -> set[tuple[str, str]]:
        counts = await self.store.experiment_counts(experiment.run_id)
        exported = set()
        for arm in experiment.arms:
            held = counts.get(arm.name, {})
            figures = hit_rates.ArmCounts.of(held)
            for count in COUNTS:
                self.metrics.experiment_arm_count.labels(experiment.name, arm.name, count).set(
                    held.get(count, 0)
                )
            rate = figures.hits / figures.clicks if figures.clicks else math.nan
            low, high = hit_rates.interval(figures) if figures.clicks else (math.nan, math.nan)
            for bound, value in zip(BOUNDS, (rate, low, high), strict=True):
                self.metrics.experiment_arm_hit_rate.labels(experiment.name, arm.name, bound).set(
                    value
                )
            exported.add((experiment.name, arm.name))
        return exported

    def _drop(self, experiment: str, arm: str) -> None:
        for gauge, kinds in (
            (self.metrics.experiment_arm_count, COUNTS),
            (self.metrics.experiment_arm_hit_rate, BOUNDS),
        ):
            for kind in kinds:
                gauge.labels(experiment, arm, kind).set(math.nan)
                gauge.remove(experiment, arm, kind)
