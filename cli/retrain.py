"""`streamrec retrain`: one incremental retraining cycle (what a cron job calls)."""

from __future__ import annotations

import sys

import typer


def register(app: typer.Typer) -> None:
    app.command()(retrain)


def retrain(
    cold: bool = typer.Option(False, "--cold", help="Do not warm-start from the serving version."),
    progress: bool = typer.Option(False, help="Show training progress bars."),
    nproc: int = typer.Option(
        1,
        "--nproc",
        min=1,
        help="Train the encoder in this many processes on this node (torch.distributed); "
        "rank 0 gates, publishes and prints the outcome.",
    ),
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

    from retrain import distributed
    from retrain.cycle import announce, run_cycle
    from streamrec.settings import Settings

    if nproc > 1 and distributed.joined() is distributed.SINGLE:
        raise typer.Exit(distributed.relaunch(nproc, distributed.without_nproc(sys.argv[1:])))
    group = distributed.joined()
    settings = Settings()
    logging.basicConfig(level=settings.log_level)
    try:
        result = run_cycle(
            settings, warm_start=not cold, progress=progress, canary_percent=canary, group=group
        )
    except distributed.Finished:
        return  # not rank 0: its share of the encoder's training is done
    if not group.writes:
        return  # skipped before training: rank 0 says so
    if result.outcome == "published":
        announce(settings, result)
    typer.echo(result.to_json().decode())
