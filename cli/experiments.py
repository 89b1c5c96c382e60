"""`streamrec experiment start / status / stop / promote`: the registry's experiment
record (streamrec/experiments.py), which every server and feed follows."""

from __future__ import annotations

from typing import NoReturn

import typer

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
    for arm in experiment.arms:
        typer.echo(f"  {arm.name}: {arm.version}, {experiment.share(arm):.2%} of users")


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
