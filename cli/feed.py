"""`streamrec feed`: each changed user's fresh top-K to the recommendations topic."""

from __future__ import annotations

import typer

WEB_PORT = typer.Option(None, help="Port for /metrics (default: settings).")


def register(app: typer.Typer) -> None:
    app.command()(feed)
    # The command's name until issue 14; the alias goes after the next release.
    app.command("publish", hidden=True)(publish)


def feed(web_port: int | None = WEB_PORT) -> None:
    """Read state-change notices, rank each changed user, send their top-K to `recommendations`."""
    from model_server.feed import run_feed
    from streamrec.settings import Settings

    run_feed(Settings() if web_port is None else Settings(feed_web_port=web_port))


def publish(web_port: int | None = WEB_PORT) -> None:
    """The old name of `streamrec feed`."""
    typer.echo("`streamrec publish` is now `streamrec feed`", err=True)
    feed(web_port)
