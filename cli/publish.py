"""`streamrec publish`: each changed user's fresh top-K to the recommendations topic."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    app.command()(publish)


def publish(
    web_port: int | None = typer.Option(None, help="Port for /metrics (default: settings)."),
) -> None:
    """Read state-change notices, rank each changed user, publish to `recommendations`."""
    from model_server.publisher import run_publisher
    from streamrec.settings import Settings
    from streamrec.topics import ensure_topics

    settings = Settings() if web_port is None else Settings(publisher_web_port=web_port)
    ensure_topics(settings)
    run_publisher(settings)
