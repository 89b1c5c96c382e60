"""`streamrec bench ...`: benchmarks that print their figures and write bench/reports/."""

from __future__ import annotations

import typer

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks; reports go to bench/reports/.")


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")


@bench_app.command()
def ingest(quick: bool = typer.Option(False, help="A smaller run, under a minute.")) -> None:
    """Taobao stream through broker -> Faust -> Redis: events/s, scaling, delay."""
    from cli.checkout import bench_on_path

    bench_on_path()
    from bench.ingest import run

    run(quick=quick)


@bench_app.command()
def memory() -> None:
    """Redis memory per user, per item and per dedup key of the state layout."""
    from cli.checkout import bench_on_path

    bench_on_path()
    from bench.state_memory import run

    run()


@bench_app.command()
def apply(
    quick: bool = typer.Option(False, help="20,000 events instead of the whole stream."),
) -> None:
    """The state apply on a single Redis and on a local Redis Cluster: events/s, CPU per
    event on each side, script calls per batch."""
    from cli.checkout import bench_on_path

    bench_on_path()
    from bench.apply import run

    run(quick=quick)


@bench_app.command()
def drills(
    only: list[str] = typer.Option(
        [],
        help="Run this drill alone (a number or a name; repeat for more); its report "
        "is drills-<numbers>, never the full drills report.",
    ),
) -> None:
    """Fault drills 1-5, 7, 8, 9 (worker and server kills, Redis restart, poison, bad
    bundles, Redis full, Redis frozen, a Redis Cluster primary killed)."""
    from cli.checkout import bench_on_path

    bench_on_path()
    from bench.drills import run

    run(only)


@bench_app.command()
def soak(
    minutes: int = typer.Option(10, min=1, help="How long, in one-minute windows."),
    rate: int = typer.Option(1000, min=1, help="Requests per second, open loop."),
    swap_every: float = typer.Option(60.0, min=1.0, help="Seconds between new versions."),
    servers: int = typer.Option(2, min=1, help="Model server processes (serve --workers)."),
) -> None:
    """Drill 6: fixed-rate load with a model swap every minute; errors, p50/p99 per minute."""
    from cli.checkout import bench_on_path

    bench_on_path()
    from bench.soak import run

    run(minutes, rate, swap_every, servers)


@bench_app.command()
def catalogue(quick: bool = typer.Option(False, help="100k items, fewer requests.")) -> None:
    """A million items: the bench model grown with synthetic items, an HNSW bundle
    served; recall against exact search, build time and memory, live additions, p99."""
    from cli.checkout import bench_on_path

    bench_on_path()
    from bench.catalogue import run

    run(quick=quick)
