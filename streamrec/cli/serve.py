"""`streamrec serve`: the model server (recommendations and scores over HTTP)."""

from __future__ import annotations

from pathlib import Path

import typer

from streamrec.settings import Settings


def register(app: typer.Typer) -> None:
    app.command()(serve)


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
