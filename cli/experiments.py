"""`streamrec experiment start / status / stop / promote`: the registry's experiment
record (streamrec/experiments.py), which every server and feed follows."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, NoReturn

import typer

if TYPE_CHECKING:
    from streamrec.canary import Checked
    from streamrec.settings import Settings

experiment_app = typer.Typer(
    no_args_is_help=True, help="Split users between model versions (docs/experiments.md)."
)


def register(app: typer.Typer) -> None:
    app.add_typer(experiment_app, name="experiment")


def _fail(message: str) -> NoReturn:
    typer.secho(message, err=True, fg=typer.colors.RED)
    raise typer.Exit(1)


@experiment_app.command()
def start(
    name: str = typer.Argument(..., help="The experiment's name (letters, digits, . _ -)."),
    arm: list[str] = typer.Option(
        ...,
        "--arm",
        help="NAME=VERSION:WEIGHT, twice or more; VERSION `current` follows CURRENT.",
    ),
    salt: str | None = typer.Option(None, help="Hash salt; default: the name."),
) -> None:
    """Start an experiment: users split by a stable hash into the arms, by weight."""
    from streamrec import experiments
    from streamrec.errors import ExperimentError
    from streamrec.settings import Settings

    try:
        experiment = experiments.new_experiment(
            name, [experiments.parse_arm(text) for text in arm], salt
        )
        experiments.start(Settings().registry, experiment)
    except ExperimentError as exc:
        _fail(str(exc))
    typer.echo(f"started {experiment.name} (salt {experiment.salt!r})")
    for each in experiment.arms:
        typer.echo(f"  {each.name}: {each.version}, {experiment.share(each):.2%} of users")


@experiment_app.command()
def status() -> None:
    """The running experiment, its arms and each arm's online figures."""
    from redis.exceptions import RedisError

    from streamrec import experiments
    from streamrec.errors import ExperimentError
    from streamrec.settings import Settings

    settings = Settings()
    try:
        experiment = experiments.read(settings.registry)
    except ExperimentError as exc:
        _fail(str(exc))
    if experiment is None:
        typer.echo("no experiment runs")
        return
    typer.echo(
        f"{experiment.name}: started {experiment.started_at}, salt {experiment.salt!r}, "
        f"run {experiment.run_id}"
    )
    try:
        counts = asyncio.run(_counts(settings, experiment.run_id))
    except (RedisError, OSError) as exc:
        counts = {}
        typer.echo(f"  (no online figures: Redis did not answer: {exc})")
    for arm in experiment.arms:
        typer.echo(f"  {arm.name}: {arm.version}, {experiment.share(arm):.2%} of users")
        typer.echo("    " + arm_figures(counts.get(arm.name, {})))


def arm_figures(counts: Mapping[str, int]) -> str:
    """One arm's online figures on one line: answers, users, clicks, hits, the hit rate
    (hits / clicks) with its 95% interval over users (streamrec/hit_rates.py) and the
    clicks it is worth, purchases of recommended items."""
    from streamrec import hit_rates

    arm = hit_rates.ArmCounts.of(counts)
    clicks, hits = arm.clicks, arm.hits
    if clicks:
        low, high = hit_rates.interval(arm)
        effective = hit_rates.effective_clicks(arm)
        rate = (
            f"hit rate {hits / clicks:.2%} (95% CI {low:.2%}-{high:.2%}, "
            f"worth {effective:,.0f} independent clicks)"
        )
    else:
        rate = "hit rate - (no clicks yet)"
    return (
        f"answers {arm.answers}, users {arm.users}, clicks {clicks}, hits {hits}, {rate}, "
        f"purchases {counts.get('purchases', 0)}"
    )


async def _counts(settings: Settings, run_id: str) -> dict[str, dict[str, int]]:
    from streamrec.state import StateStore

    store = StateStore(settings)
    try:
        return await store.experiment_counts(run_id)
    finally:
        await store.close()


@experiment_app.command()
def stop() -> None:
    """End the running experiment: every user is served by CURRENT again."""
    from streamrec import experiments
    from streamrec.errors import ExperimentError
    from streamrec.settings import Settings

    try:
        ended = experiments.stop(Settings().registry)
    except ExperimentError as exc:
        _fail(str(exc))
    typer.echo(f"stopped {ended.name}")


@experiment_app.command()
def promote(arm: str = typer.Argument(..., help="The arm whose version becomes CURRENT.")) -> None:
    """Point CURRENT at the arm's version (opened and smoke-tested first, as `model
    rollback` does), then end the experiment."""
    from streamrec import experiments, registry
    from streamrec.errors import BundleError, ExperimentError
    from streamrec.settings import Settings

    try:
        experiment, version = experiments.promote(Settings().registry, arm)
    except BundleError as exc:
        _fail(f"refused: {registry.refusal_reason(exc)}")
    except ExperimentError as exc:
        _fail(str(exc))
    typer.echo(f"promoted {arm} of {experiment.name}: current is now {version}")


@experiment_app.command()
def decide() -> None:
    """Judge the running canary once: read its arms' counts from Redis and promote
    it, roll it back or wait (the rule and STREAMREC_CANARY_* in docs/experiments.md).
    Prints the outcome as one JSON line; exit 0 whatever was decided."""
    import logging

    from redis.exceptions import RedisError

    from streamrec.errors import ExperimentError
    from streamrec.settings import Settings

    settings = Settings()
    logging.basicConfig(level=settings.log_level)
    try:
        checked = asyncio.run(_check(settings))
    except (RedisError, OSError) as exc:
        _fail(f"no decision: Redis did not answer: {exc}")
    except ExperimentError as exc:
        _fail(f"no decision: {exc}")
    typer.echo(checked.to_json())


async def _check(settings: Settings) -> Checked:
    from streamrec.canary import Rule, check
    from streamrec.state import StateStore

    store = StateStore(settings)
    try:
        return await check(settings.registry, store, Rule.of(settings))
    finally:
        await store.close()
