"""Experiments: at most one at a time, a record beside CURRENT in the model registry
(`<registry>/EXPERIMENT`), splitting users by a stable hash of (salt, user id) into
arms, each served by a model version, with weights (docs/experiments.md).

Every change (start, stop, promote) is one atomic file operation and one line in
`<registry>/experiments.jsonl`; model servers and feeds follow the record as they
follow CURRENT (streamrec/loaded.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from streamrec import lineage, registry
from streamrec.errors import BundleError, ExperimentError

log = logging.getLogger(__name__)

# Users fall into this many buckets; an arm owns a run of them in proportion to its
# weight, so a split is exact to 0.01%.
BUCKETS = 10_000
# An arm whose version is this follows CURRENT (the control arm, usually).
CURRENT_ARM = "current"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SALT_MAX = 128


def bucket_of(salt: str, user_id: str) -> int:
    """The user's bucket, 0..BUCKETS-1: the first 64 bits of blake2b(salt, user id).
    The same everywhere (no PYTHONHASHSEED), so every server and feed agrees."""
    digest = hashlib.blake2b(
        f"{salt}\x00{user_id}".encode("utf-8", "surrogatepass"), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big") % BUCKETS


@dataclass(frozen=True)
class Arm:
    name: str
    version: str  # a version of the registry, or CURRENT_ARM
    weight: float  # > 0; the arms' weights are relative to their sum


@dataclass(frozen=True)
class Experiment:
    name: str
    salt: str
    arms: tuple[Arm, ...]
    started_at: str  # ISO 8601, UTC
    started_ms: int
    # The first bucket past each arm's run, in arm order (the last is BUCKETS).
    bounds: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problem = _problem(self.name, self.salt, self.arms)
        if problem:
            raise ExperimentError(f"experiment {self.name!r}: {problem}")
        object.__setattr__(self, "bounds", _bounds([arm.weight for arm in self.arms]))
        lows = (0, *self.bounds[:-1])
        empty = [
            arm.name
            for arm, low, high in zip(self.arms, lows, self.bounds, strict=True)
            if high <= low
        ]
        if empty:
            raise ExperimentError(
                f"experiment {self.name!r}: arm {empty[0]!r} weighs too little for one of "
                f"{BUCKETS} buckets"
            )

    @property
    def run_id(self) -> str:
        """Names this run of the experiment in Redis (its counters): a name started
        again later counts afresh."""
        return f"{self.name}.{self.started_ms}"

    def arm_of(self, user_id: str) -> Arm:
        """The user's arm: always the same for the same user and salt."""
        bucket = bucket_of(self.salt, user_id)
        for arm, bound in zip(self.arms, self.bounds, strict=True):
            if bucket < bound:
                return arm
        raise AssertionError("the last bound is BUCKETS")  # pragma: no cover

    def arm_tag(self, arm_name: str) -> str:
        """What the write-back keeps with a user's answers (`<run id>|<arm>`): the
        stream worker counts the user's clicks and purchases for that arm."""
        return f"{self.run_id}|{arm_name}"

    def arm(self, name: str) -> Arm:
        for arm in self.arms:
            if arm.name == name:
                return arm
        names = ", ".join(arm.name for arm in self.arms)
        raise ExperimentError(f"experiment {self.name!r} has no arm {name!r} (arms: {names})")

    def share(self, arm: Arm) -> float:
        """The fraction of users the arm gets (its buckets over BUCKETS)."""
        position = self.arms.index(arm)
        low = self.bounds[position - 1] if position else 0
        return (self.bounds[position] - low) / BUCKETS

    def pinned_versions(self) -> set[str]:
        """The versions its arms name, other than CURRENT's follower."""
        return {arm.version for arm in self.arms if arm.version != CURRENT_ARM}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "salt": self.salt,
            "arms": [{"name": a.name, "version": a.version, "weight": a.weight} for a in self.arms],
            "started_at": self.started_at,
            "started_ms": self.started_ms,
        }

    @classmethod
    def from_dict(cls, body: object, where: str) -> Experiment:
        if not isinstance(body, dict):
            raise ExperimentError(f"{where}: expected a JSON object, got {type(body).__name__}")
        try:
            arms = tuple(
                Arm(str(arm["name"]), str(arm["version"]), float(arm["weight"]))
                for arm in body["arms"]
            )
            return cls(
                name=str(body["name"]),
                salt=str(body["salt"]),
                arms=arms,
                started_at=str(body["started_at"]),
                started_ms=int(body["started_ms"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ExperimentError(f"{where}: not an experiment record: {exc!r}") from None


def _problem(name: str, salt: str, arms: Sequence[Arm]) -> str | None:
    if not _NAME.match(name):
        return f"a name must match {_NAME.pattern}"
    if not salt or len(salt) > _SALT_MAX:
        return f"the salt must have 1 to {_SALT_MAX} characters"
    if len(arms) < 2:
        return f"an experiment needs at least two arms, got {len(arms)}"
    seen: set[str] = set()
    for arm in arms:
        if not _NAME.match(arm.name):
            return f"arm name {arm.name!r} must match {_NAME.pattern}"
        if arm.name in seen:
            return f"arm names must be unique; {arm.name!r} comes twice"
        seen.add(arm.name)
        if arm.version != CURRENT_ARM and not _NAME.match(arm.version):
            return f"arm {arm.name!r}: {arm.version!r} is not a version name"
        if not (math.isfinite(arm.weight) and arm.weight > 0):
            return f"arm {arm.name!r}: a weight must be a number above 0, got {arm.weight!r}"
    return None


def _bounds(weights: Sequence[float]) -> tuple[int, ...]:
    total = math.fsum(weights)
    running, bounds = 0.0, []
    for weight in weights:
        running += weight
        bounds.append(round(BUCKETS * running / total))
    bounds[-1] = BUCKETS
    return tuple(bounds)


def wilson_interval(successes: float, trials: float, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% with z = 1.96): unlike the
    normal approximation it stays inside [0, 1] and is sound for few trials or a
    rate near 0, which online hit rates are. (0, 1) without trials. Counts may be
    fractional (effective trials, streamrec/hit_rates.py)."""
    if trials <= 0:
        return 0.0, 1.0
    rate = successes / trials
    z2 = z * z
    centre = (rate + z2 / (2 * trials)) / (1 + z2 / trials)
    half = (
        z * math.sqrt(rate * (1 - rate) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    )
    return max(0.0, centre - half), min(1.0, centre + half)


def parse_arm(text: str) -> Arm:
    """`NAME=VERSION:WEIGHT` (the CLI's --arm): `control=current:90`."""
    name, eq, rest = text.partition("=")
    version, colon, weight = rest.rpartition(":")
    if not (eq and colon and name and version):
        raise ExperimentError(f"an arm is NAME=VERSION:WEIGHT (control=current:90), got {text!r}")
    try:
        return Arm(name, version, float(weight))
    except ValueError:
        problem = f"arm {name!r}: the weight must be a number, got {weight!r}"
        raise ExperimentError(problem) from None


def new_experiment(
    name: str, arms: Sequence[Arm], salt: str | None = None, now: datetime | None = None
) -> Experiment:
    """An experiment starting now; the salt defaults to its name (a name started
    again splits users the same way; another salt reshuffles them)."""
    moment = now or datetime.now(UTC)
    return Experiment(
        name=name,
        salt=salt if salt is not None else name,
        arms=tuple(arms),
        started_at=moment.isoformat(timespec="seconds"),
        started_ms=int(moment.timestamp() * 1000),
    )


def read(root: Path) -> Experiment | None:
    """The running experiment, or None."""
    path = root / registry.EXPERIMENT
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ExperimentError(f"cannot read {path}: {exc}") from exc
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise ExperimentError(f"{path} is not valid JSON: {exc}") from exc
    return Experiment.from_dict(body, str(path))


def check_versions(root: Path, experiment: Experiment) -> None:
    """Every arm's version is a bundle of the registry (its manifest reads), and
    CURRENT names one when an arm follows it."""
    for arm in experiment.arms:
        if arm.version == CURRENT_ARM:
            if registry.current_version(root) is None:
                raise ExperimentError(f"arm {arm.name!r} follows CURRENT, and {root} has none")
            continue
        try:
            registry.read_manifest(root, arm.version)
        except BundleError as exc:
            reason = registry.refusal_reason(exc)
            raise ExperimentError(f"arm {arm.name!r}: {reason}") from None


def start(root: Path, experiment: Experiment) -> Experiment:
    """Write the record, if no experiment runs: created in one link, which fails when
    the file exists, so two starts cannot both win."""
    check_versions(root, experiment)
    path = root / registry.EXPERIMENT
    temp = root / f".{registry.EXPERIMENT}.{uuid.uuid4().hex}.tmp"
    _write_synced(temp, json.dumps(experiment.to_dict(), indent=2))
    try:
        os.link(temp, path)
    except FileExistsError:
        running = read(root)
        what = f"{running.name!r} runs" if running else "another experiment runs"
        raise ExperimentError(f"{what}; stop or promote it first (one at a time)") from None
    finally:
        temp.unlink()
    registry.fsync_dir(root)
    _record(root, "started", experiment)
    return experiment


def stop(
    root: Path,
    expected: Experiment | None = None,
    details: Mapping[str, object] | None = None,
) -> Experiment:
    """End the running experiment (`expected`, when given, must be the one running):
    every user is served by CURRENT again. `details` (who decided, why) go into the
    experiment log and each arm version's lineage; by default `{"by": "manual"}`."""
    return _end(root, "stopped", expected, details or {"by": "manual"})


def resolved_version(root: Path, arm: Arm) -> str:
    """The version an arm names, CURRENT's for the arm that follows it."""
    if arm.version != CURRENT_ARM:
        return arm.version
    current = registry.current_version(root)
    if current is None:
        raise ExperimentError(f"arm {arm.name!r} follows CURRENT, and {root} has none")
    return current


def promote(
    root: Path,
    arm_name: str,
    expected: Experiment | None = None,
    details: Mapping[str, object] | None = None,
) -> tuple[Experiment, str]:
    """Point CURRENT at the arm's version (opened and smoke-tested first, as a
    rollback does), then end the experiment. A version that does not open is
    refused (BundleError) and nothing changes; so is an `expected` experiment that
    is no longer the one running (ExperimentError)."""
    experiment = read(root)
    if experiment is None:
        raise ExperimentError(f"no experiment runs in {root}")
    if expected is not None and experiment != expected:
        raise ExperimentError(
            f"experiment {experiment.name!r} runs, not {expected.name!r}; nothing changed"
        )
    arm = experiment.arm(arm_name)
    version = resolved_version(root, arm)
    if arm.version != CURRENT_ARM:
        registry.set_current(root, version)
    ended(root, experiment, arm, version, details)
    return experiment, version


def ended(
    root: Path,
    experiment: Experiment,
    arm: Arm,
    version: str,
    details: Mapping[str, object] | None = None,
) -> None:
    """After CURRENT names the promoted arm's version: the experiment ends."""
    _end(
        root, "promoted", experiment,
        {"arm": arm.name, "version": version, **(details or {"by": "manual"})},
    )  # fmt: skip


def _end(
    root: Path,
    action: str,
    expected: Experiment | None,
    details: Mapping[str, object] | None = None,
) -> Experiment:
    path = root / registry.EXPERIMENT
    # Taken away in one rename: of two callers only one gets it.
    taken = root / f".{registry.EXPERIMENT}.{uuid.uuid4().hex}.ended"
    try:
        os.rename(path, taken)
    except FileNotFoundError:
        raise ExperimentError(f"no experiment runs in {root}") from None
    try:
        experiment = read_taken(taken)
        if expected is not None and experiment != expected:
            # Not the one the caller resolved: put it back where it was.
            os.link(taken, path)
            raise ExperimentError(
                f"experiment {experiment.name!r} (started {experiment.started_at}) runs, "
                f"not {expected.name!r} (started {expected.started_at}); nothing changed"
            )
    finally:
        taken.unlink()
    registry.fsync_dir(root)
    _record(root, action, experiment, details)
    return experiment


def read_taken(path: Path) -> Experiment:
    try:
        return Experiment.from_dict(json.loads(path.read_text(encoding="utf-8")), str(path))
    except ValueError as exc:
        raise ExperimentError(f"{path} is not valid JSON: {exc}") from exc


def history(root: Path) -> list[dict[str, Any]]:
    """Every line of the experiment log, oldest first (a torn last line skipped)."""
    path = root / registry.EXPERIMENT_LOG
    lines = []
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
    return lines


def _record(
    root: Path, action: str, experiment: Experiment, details: Mapping[str, object] | None = None
) -> None:
    entry = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "action": action,
        "experiment": experiment.name,
        "run_id": experiment.run_id,
        **(details or {}),
        **({"record": experiment.to_dict()} if action == "started" else {}),
    }
    log.info("experiment %s %s %s", experiment.name, action, json.dumps(details or {}))
    with (root / registry.EXPERIMENT_LOG).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    # Each version an arm pins (not CURRENT's follower) keeps what became of it.
    for arm in experiment.arms:
        if arm.version == CURRENT_ARM:
            continue
        # An arm not promoted when another is: its experiment simply ended.
        promoted_elsewhere = action == "promoted" and (details or {}).get("arm") != arm.name
        with contextlib.suppress(FileNotFoundError):  # a version removed meanwhile
            lineage.append(
                root, arm.version,
                {**(details or {}), "action": "ended" if promoted_elsewhere else action,
                 "experiment": experiment.name, "run_id": experiment.run_id,
                 "arm": arm.name, "share": experiment.share(arm)},
            )  # fmt: skip


def _write_synced(path: Path, text: str) -> None:
    with path.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
