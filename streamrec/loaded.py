"""The model version a process works with, and how it is swapped for another.

The model server and the stream worker both hold one: verified, smoke-tested,
loaded in a thread and swapped in by one reference assignment. A request reads
`ModelHolder.current` once and keeps that `ServedModel` to the end, so a swap
never changes it mid-way. Any failure to open a version, whatever its type, is
that version's refusal: counted, logged once, listed in `refused`; the held one stays.

Beside the current version a holder keeps the versions the registry's running
experiment names (streamrec/experiments.py), opened the same way; `route` gives a
user the model of their arm, or the current one when the arm's version did not open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from prometheus_client import Counter, Gauge

from streamrec import experiments, registry
from streamrec.announcements import wake_on_announcements
from streamrec.errors import BundleError, ExperimentError, NoModel
from streamrec.experiments import Experiment
from streamrec.settings import Settings

log = logging.getLogger(__name__)

SwapOutcome = Literal["swapped", "unchanged"]
HISTORY_KEPT = 20


class SwapMetrics(Protocol):
    """What a holder counts: `ServeMetrics` and `IngestMetrics` each carry their own."""

    swaps: Counter  # by outcome: swapped, refused
    model_info: Gauge  # by version: 1 for the one held


class LiveIndex:
    """Items a served model has no vector for, added while it serves, each with the
    vector its content tower gives (model_server/live_items.py): a flat index of its
    own beside the bundle's, so the bundle's rows, tables and index never change.
    Added to and searched on the event loop's thread only (FAISS is not safe to
    search while another thread adds)."""

    def __init__(self, dim: int) -> None:
        import faiss

        self.index = faiss.IndexFlatIP(dim)
        self.item_ids: list[str] = []
        self.positions: dict[str, int] = {}
        self.seq = 0  # the catalogue change taken up to (CatalogueMirror.changed_since)

    def __len__(self) -> int:
        return len(self.item_ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.positions

    def add(self, item_ids: Sequence[str], vectors: np.ndarray) -> None:
        fresh = [n for n, item in enumerate(item_ids) if item not in self.positions]
        if not fresh:
            return
        self.index.add(np.ascontiguousarray(vectors[fresh], dtype=np.float32))
        for n in fresh:
            self.positions[item_ids[n]] = len(self.item_ids)
            self.item_ids.append(item_ids[n])

    def search(self, user_vector: np.ndarray, k: int) -> tuple[list[str], np.ndarray]:
        """The `k` best live items for one user vector (1, dim): ids and dots."""
        k = min(k, len(self.item_ids))
        if k <= 0:
            return [], np.zeros(0, dtype=np.float32)
        scores, positions = self.index.search(np.ascontiguousarray(user_vector, np.float32), k)
        found = positions[0] >= 0
        return [self.item_ids[p] for p in positions[0][found]], scores[0][found]

    def vectors(self, item_ids: Sequence[str]) -> np.ndarray:
        positions = np.array([self.positions[i] for i in item_ids], dtype=np.int64)
        return np.asarray(self.index.reconstruct_batch(positions), dtype=np.float32)


@dataclass(frozen=True)
class ServedModel:
    """One verified, smoke-tested bundle and what requests need from it."""

    bundle: registry.LoadedBundle
    dim: int
    loaded_at_s: float
    # Item id of every vocab row (row 0: padding), to map FAISS rows in one C loop.
    item_id_by_row: np.ndarray
    # New items given vectors from their content while this version serves.
    live: LiveIndex

    @property
    def version(self) -> str:
        return self.bundle.version

    @property
    def n_items(self) -> int:
        return int(self.bundle.index.ntotal)

    def item_vectors(self, rows: list[int]) -> np.ndarray:
        """(len(rows), dim) vectors of these vocabulary rows, read back from the index."""
        positions = np.asarray(rows, dtype=np.int64) - 1  # index position = vocab row - 1
        return np.asarray(self.bundle.index.reconstruct_batch(positions), dtype=np.float32)


@dataclass(frozen=True, slots=True)
class Route:
    """The model that answers one user, and why: their arm of the running experiment
    (None without one); `fell_back` when that arm's version is not held (it did not
    open) and the current version answers instead."""

    model: ServedModel
    experiment: Experiment | None = None
    arm: str | None = None
    fell_back: bool = False


@dataclass(frozen=True)
class SwapResult:
    outcome: SwapOutcome
    version: str
    previous: str | None


def vocabulary_map(rows: Mapping[str, int], item_ids: Sequence[str]) -> np.ndarray:
    """Rows of one vocabulary (`item_ids`, row 1 first) in another (`rows`): index it
    with the first's rows; 0 where the other lacks the item, and for padding row 0."""
    mapped = np.zeros(len(item_ids) + 1, dtype=np.int64)
    mapped[1:] = np.fromiter((rows.get(item, 0) for item in item_ids), np.int64, len(item_ids))
    return mapped


def single_threaded_faiss() -> None:
    """One query at a time: OpenMP threads only spin against the other server
    processes and Redis for the same cores. OpenMP's thread count belongs to the
    calling thread, so this must run on the thread that searches (the event loop's),
    not on the one that loads: set only there, a 17k-item search cost 5 ms of CPU
    instead of 0.4."""
    import faiss

    faiss.omp_set_num_threads(1)


def open_model(root: Path, version: str, ef_search: int = 0) -> ServedModel:
    """Verify checksums, open the sessions and index, run the smoke inference (blocking).
    `ef_search` > 0: an HNSW index searches with it instead of the bundle's own
    (recall against CPU per request: docs/scaling.md, "A million items")."""
    single_threaded_faiss()  # the smoke inference runs here, in the loading thread
    bundle = registry.load(root, version)
    if ef_search > 0 and hasattr(bundle.index, "hnsw"):
        bundle.index.hnsw.efSearch = ef_search
    item_id_by_row = np.array(["", *bundle.item_ids], dtype=object)
    dim = int(bundle.manifest.encoder["dim"])
    model = ServedModel(bundle, dim, time.time(), item_id_by_row, LiveIndex(dim))
    try:
        model.item_vectors([1])  # /score reads vectors back; an index that cannot is refused
    except RuntimeError as exc:
        raise BundleError(f"bundle {version}: item vectors cannot be read back: {exc}") from exc
    return model


class ModelHolder:
    """Holds the served version; loads others in a thread and swaps only those that pass."""

    def __init__(
        self, root: Path, metrics: SwapMetrics, experiments: bool = False, ef_search: int = 0
    ) -> None:
        """`experiments`: also follow the registry's experiment record and hold its
        arms' versions (the model server and the feed, which answer users; the stream
        worker refreshes vectors for the current version only). `ef_search`: as
        `open_model`'s, for every version opened."""
        single_threaded_faiss()  # built on the event loop's thread, which searches
        self.root = root
        self.ef_search = ef_search
        self.metrics = metrics
        self.follows_experiments = experiments
        self._current: ServedModel | None = None
        self._lock = asyncio.Lock()
        # Versions the watcher will not retry until an operator asks (/admin/reload).
        self.refused: dict[str, str] = {}
        # Awaited with each new version after it loads and before it swaps in (not
        # for the first version); an exception is logged and the swap goes on.
        self.before_swap: list[Callable[[ServedModel], Awaitable[None]]] = []
        # Set by an announcement on `model.versions`: the watcher looks at once.
        self.wake = asyncio.Event()
        # The latest swaps and refusals, newest last (GET /v1/model, the console).
        self.history: deque[dict[str, object]] = deque(maxlen=HISTORY_KEPT)
        # The running experiment as this process serves it, and the versions its arms
        # name other than the current one, by version: replaced together, never changed.
        self._experiment: Experiment | None = None
        self._arm_models: dict[str, ServedModel] = {}
        # Awaited with each arm's version after it opens and before it answers anyone
        # (the popularity table, the live items, the arm's users' vectors); an
        # exception is logged. While they run, `arriving` is the experiment record
        # whose arms they prepare.
        self.before_arm: list[Callable[[ServedModel], Awaitable[None]]] = []
        self.arriving: Experiment | None = None

    @property
    def current(self) -> ServedModel:
        if self._current is None:
            raise NoModel("no model version is loaded yet")
        return self._current

    @property
    def held(self) -> ServedModel | None:
        """The current version, or None before one has loaded (the worker goes on without)."""
        return self._current

    @property
    def experiment(self) -> Experiment | None:
        """The experiment this process serves (it follows the registry's record)."""
        return self._experiment

    @property
    def arm_models(self) -> list[ServedModel]:
        """The versions held for the experiment's arms, besides the current one."""
        return list(self._arm_models.values())

    def route(self, user_id: str) -> Route:
        """The model for this user: their arm's version while an experiment runs."""
        current = self.current
        experiment = self._experiment
        if experiment is None:
            return Route(current)
        arm = experiment.arm_of(user_id)
        if arm.version == experiments.CURRENT_ARM or arm.version == current.version:
            return Route(current, experiment, arm.name)
        model = self._arm_models.get(arm.version)
        if model is None:
            return Route(current, experiment, arm.name, fell_back=True)
        return Route(model, experiment, arm.name)

    async def load(self, version: str | None = None) -> SwapResult:
        """Load `version` (default: the registry's current pointer) and swap it in.

        Raises BundleError when the bundle is refused; the served version stays."""
        async with self._lock:
            wanted = version or registry.current_version(self.root)
            if wanted is None:
                raise BundleError(f"{self.root} has no current version; publish one first")
            previous = self._current.version if self._current else None
            if wanted == previous:
                return SwapResult("unchanged", wanted, previous)
            return await self._swap(await self._open(wanted, previous), previous)

    async def rollback(self, version: str | None = None) -> SwapResult:
        """Open `version` (default: the parent of the version CURRENT names), and only
        then point CURRENT at it and swap it in. A target that does not open is refused
        like any bundle, and CURRENT stays where it was, so every replica following it
        keeps serving."""
        async with self._lock:
            target = await asyncio.to_thread(registry.rollback_target, self.root, version)
            previous = self._current.version if self._current else None
            # Opened even when served: CURRENT must name files that open now.
            model = await self._open(target, previous)
            try:
                await asyncio.to_thread(registry.point_at, model.bundle)
            except OSError as exc:
                raise BundleError(f"{target} opened but CURRENT could not move: {exc}") from exc
            if target == previous:
                return SwapResult("unchanged", target, previous)
            return await self._swap(model, previous)

    async def follow(self, settings: Settings) -> None:
        """Follow the registry until cancelled: a poll every `registry_poll_s`, and at
        once on an announcement (streamrec/announcements.py) when
        `follow_announcements` is on."""
        if not settings.follow_announcements:
            await self.watch(settings.registry_poll_s)
            return
        listener = asyncio.create_task(wake_on_announcements(settings, self.wake))
        try:
            await self.watch(settings.registry_poll_s)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def watch(self, poll_s: float) -> None:
        """Follow the registry's current pointer until cancelled: every `poll_s`, or
        sooner when `wake` is set. Nothing a poll meets ends the watch: a refusal is
        counted and logged by `_open`, anything else is logged and the next poll goes on."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), poll_s)
            self.wake.clear()
            try:
                await self._follow_pointer()
            except BundleError:
                continue  # refused: counted, logged and listed in `refused` already
            except Exception:
                log.exception("the model watcher's poll failed; polling on")

    async def _follow_pointer(self) -> None:
        # Under the lock: a rollback moves the pointer and swaps before this reads it.
        async with self._lock:
            try:
                pointer = registry.current_version(self.root)
            except BundleError as exc:
                log.warning("cannot read the current model pointer: %s", exc)
                return
            served = self._current.version if self._current else None
            if pointer is not None and pointer != served and pointer not in self.refused:
                # A version an arm already serves (a promotion) is not opened again.
                held = self._arm_models.get(pointer)
                await self._swap(held or await self._open(pointer, served), served)
            await self._follow_experiment()

    async def hold_experiment(self) -> None:
        """Follow the registry's experiment record now (at start-up, after the first
        version loaded, and after a change made through this process)."""
        async with self._lock:
            await self._follow_experiment()

    async def _follow_experiment(self) -> None:
        """Hold what the experiment record asks: its arms' versions opened (each as
        any version: checksums, smoke inference), prepared (`before_arm`), and only
        then the experiment served. A version that does not open is refused as any
        (counted, logged, listed, not retried until a reload): its arms are answered
        by the current version. An unreadable record leaves what is held."""
        if not self.follows_experiments:
            return
        try:
            wanted = experiments.read(self.root)
        except ExperimentError as exc:
            log.warning("cannot read the experiment record; serving as before: %s", exc)
            return
        current = self._current
        if wanted is None or current is None:
            if self._experiment is not None:
                log.info("experiment %s ended; every user on %s", self._experiment.name,
                         current.version if current else None)  # fmt: skip
            self._experiment, self._arm_models = None, {}
            return
        needed = sorted(wanted.pinned_versions() - {current.version})
        if wanted == self._experiment and all(
            v in self._arm_models or v in self.refused for v in needed
        ):
            return
        held: dict[str, ServedModel] = {}
        fresh = wanted != self._experiment  # a new record tries refused versions once more
        for version in needed:
            model = self._arm_models.get(version)
            if model is None and (fresh or version not in self.refused):
                with contextlib.suppress(BundleError):  # counted, logged, listed by _open
                    model = await self._open(version, current.version)
                    await self._prepare_arm(model, wanted)
            if model is None:
                log.warning("experiment %s: version %s is refused (%s); its arms are "
                            "answered by %s", wanted.name, version,
                            self.refused.get(version), current.version)  # fmt: skip
            else:
                held[version] = model
        if fresh:
            log.info("experiment %s served: %s", wanted.name, ", ".join(
                f"{arm.name}={arm.version}:{wanted.share(arm):.2%}" for arm in wanted.arms
            ))  # fmt: skip
        self._experiment, self._arm_models = wanted, held

    async def _prepare_arm(self, model: ServedModel, experiment: Experiment) -> None:
        self.arriving = experiment
        try:
            for prepare in self.before_arm:
                try:
                    await prepare(model)
                except Exception:
                    log.exception(
                        "preparing %s for its experiment arm failed; serving it", model.version
                    )
        finally:
            self.arriving = None

    async def promote(self, arm_name: str) -> tuple[Experiment, SwapResult]:
        """Point CURRENT at the running experiment's arm's version and serve it, then
        end the experiment, as `streamrec experiment promote` does; a version this
        process holds for the arm is not opened again. Raises ExperimentError (no
        such experiment or arm) or BundleError (the version does not open)."""
        async with self._lock:
            experiment = await asyncio.to_thread(experiments.read, self.root)
            if experiment is None:
                raise ExperimentError(f"no experiment runs in {self.root}")
            arm = experiment.arm(arm_name)
            version = await asyncio.to_thread(experiments.resolved_version, self.root, arm)
            previous = self._current.version if self._current else None
            if arm.version == experiments.CURRENT_ARM or version == previous:
                result = SwapResult("unchanged", version, previous)
            else:
                model = self._arm_models.get(version) or await self._open(version, previous)
                try:
                    await asyncio.to_thread(registry.point_at, model.bundle)
                except OSError as exc:
                    raise BundleError(
                        f"{version} opened but CURRENT could not move: {exc}"
                    ) from exc
                result = await self._swap(model, previous)
            await asyncio.to_thread(experiments.ended, self.root, experiment, arm, version)
            await self._follow_experiment()
            return experiment, result

    async def start_experiment(self, experiment: Experiment) -> None:
        """Write the record (refused while another runs) and serve it at once."""
        async with self._lock:
            await asyncio.to_thread(experiments.start, self.root, experiment)
            await self._follow_experiment()

    async def stop_experiment(self) -> Experiment:
        """End the running experiment: every user on the current version."""
        async with self._lock:
            ended = await asyncio.to_thread(experiments.stop, self.root)
            await self._follow_experiment()
            return ended

    async def _open(self, version: str, previous: str | None) -> ServedModel:
        """Open `version` in a thread; any failure is its refusal, raised as BundleError."""
        try:
            model = await asyncio.to_thread(open_model, self.root, version, self.ef_search)
        except BundleError as exc:
            raise self._refuse(version, previous, exc) from None
        except Exception as exc:  # a case the registry missed: a refusal, with its traceback
            reason = BundleError(f"bundle {version} cannot be opened: {type(exc).__name__}: {exc}")
            raise self._refuse(version, previous, reason, exc) from exc
        self.refused.pop(version, None)
        return model

    async def _swap(self, model: ServedModel, previous: str | None) -> SwapResult:
        if previous is not None:
            for prepare in self.before_swap:
                try:
                    await prepare(model)
                except Exception:
                    log.exception("preparing to swap in %s failed; swapping anyway", model.version)
        outgoing = self._current
        self._current = model
        self._rearm(outgoing)
        self.metrics.swaps.labels("swapped").inc()
        self.history.append(
            {"at_s": time.time(), "outcome": "swapped", "version": model.version,
             "previous": previous}
        )  # fmt: skip
        if previous is not None:
            # Zero first: multiprocess mode's files keep a removed series' last value.
            self.metrics.model_info.labels(previous).set(0)
            self.metrics.model_info.remove(previous)
        self.metrics.model_info.labels(model.version).set(1)
        log.info("serving model %s (was %s)", model.version, previous)
        return SwapResult("swapped", model.version, previous)

    def _rearm(self, outgoing: ServedModel | None) -> None:
        """After a swap, in the same step: the new current version leaves the arms, and
        the outgoing one joins them when an arm names it, so no arm falls back."""
        experiment = self._experiment
        if experiment is None or self._current is None:
            return
        pinned = experiment.pinned_versions() - {self._current.version}
        held = {v: m for v, m in self._arm_models.items() if v in pinned}
        if outgoing is not None and outgoing.version in pinned:
            held[outgoing.version] = outgoing
        self._arm_models = held

    def _refuse(
        self,
        version: str,
        previous: str | None,
        reason: BundleError,
        unexpected: BaseException | None = None,
    ) -> BundleError:
        self.refused[version] = registry.refusal_reason(reason)
        self.metrics.swaps.labels("refused").inc()
        self.history.append(
            {"at_s": time.time(), "outcome": "refused", "version": version,
             "reason": self.refused[version]}
        )  # fmt: skip
        serving = f"still serving {previous}" if previous else "no version served yet"
        log.error(
            "model %s refused, %s: %s", version, serving, self.refused[version], exc_info=unexpected
        )
        return reason
