"""`streamrec bench ...`: benchmarks that print their figures and write bench/reports/."""

from __future__ import annotations

import typer

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks; reports go to bench/reports/.")


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")


@bench_app.command()
def ingest(quick: bool = typer.Option(False, help="A smaller run, under a minute.")) -> None:
    """Taobao stream through broker -> Faust -> Redis: events/s, scaling, delay."""
    from bench.ingest import run

    run(quick=quick)


@bench_app.command()
def memory() -> None:
    """Redis memory per user, per item and per dedup key of the state layout."""
    from bench.state_memory import run

    run()
