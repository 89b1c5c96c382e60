"""`streamrec retrain`: one incremental retraining cycle (what a cron job calls)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    app.command()(retrain)


def retrain(
    cold: bool = typer.Option(False, "--cold", help="Do not warm-start from the serving version."),
    progress: bool = typer.Option(False, help="Show training progress bars."),
    canary: int = typer.Option(
        0,
        "--canary",
        min=0,
        max=50,
        metavar="PCT",
        help="Publish as a canary arm of PCT% of users, not as current; the leader "
        "worker's cycles add it from STREAMREC_RETRAIN_CANARY_PERCENT. 0: no canary.",
    ),
) -> None:
    """Train on the events archived since the serving version, gate, publish, announce.

    Prints the outcome as one JSON line, the last of stdout: published, rejected
    (the gate kept the serving version) or skipped (too few new events, or a canary
    cycle while an experiment runs). Exit code 0 for all three. With a canary the
    line's `canary` names the experiment started. The worker's trigger reads that
    line (docs/operations.md, the command contract)."""
    import logging

    from retrain.cycle import announce, run_cycle
    from streamrec.settings import Settings

    settings = Settings()
    logging.basicConfig(level=settings.log_level)
    result = run_cycle(settings, warm_start=not cold, progress=progress, canary_percent=canary)
    if result.outcome == "published":
        announce(settings, result)
    typer.echo(result.to_json().decode())
