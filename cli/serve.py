"""`streamrec serve`: the model server (recommendations and scores over HTTP)."""

from __future__ import annotations

from pathlib import Path

import typer

from streamrec.settings import Settings


def register(app: typer.Typer) -> None:
    app.command()(serve)
    _bench_group(app).command("serve")(bench_serve)


def _bench_group(app: typer.Typer) -> typer.Typer:
    """The `bench` group another module registered, else a new one."""
    for group in app.registered_groups:
        if group.name == "bench" and group.typer_instance is not None:
            return group.typer_instance
    bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks; reports go to bench/reports/.")
    app.add_typer(bench_app, name="bench")
    return bench_app


def serve(
    host: str | None = typer.Option(None, help="Default: settings (STREAMREC_SERVE_HOST)."),
    port: int | None = typer.Option(None, help="Default: settings (STREAMREC_SERVE_PORT)."),
    workers: int | None = typer.Option(None, min=1, help="Server processes sharing the port."),
    registry: Path | None = typer.Option(None, help="Default: settings (STREAMREC_REGISTRY)."),
) -> None:
    """Serve /recommend and /score from Redis state and the registry's current model."""
    from model_server.server import run_server

    overrides = {
        name: value
        for name, value in (
            ("serve_host", host),
            ("serve_port", port),
            ("serve_workers", workers),
            ("registry", registry),
        )
        if value is not None
    }
    run_server(Settings(**overrides))  # type: ignore[arg-type]


def bench_serve(
    quick: bool = typer.Option(False, help="One rate for 10 s, one server process."),
) -> None:
    """Open-loop load on /recommend: latency, errors, stages, swap, event-to-effect."""
    from cli.checkout import bench_on_path

    bench_on_path()
    from bench.serve import run

    run(quick=quick)
