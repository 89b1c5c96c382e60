"""The `streamrec` command line: one typer app, one module per command group.

It sits above every other room (docs/architecture.md): it may import the
services, the benchmarks and the dev tools, and nothing imports it. The
services are imported inside command bodies, so `streamrec --help` stays fast.
"""

from __future__ import annotations

import signal

import typer
from rich.console import Console
from rich.markup import escape

from cli import bench, demo, dev, experiments, feed, ingest, items, keys, models, retrain, serve
from streamrec import __version__
from streamrec.errors import StreamrecError

HELP = (
    "streamrec: a streaming, real-time recommender. Events in through Kafka, user state "
    "in Redis, recommendations out over HTTP (serve) and Kafka (feed). Start with "
    "`streamrec dev up`; every setting is a STREAMREC_* variable (docs/operations.md)."
)
app = typer.Typer(no_args_is_help=True, add_completion=False, help=HELP)
dev.register(app)
ingest.register(app)
items.register(app)
keys.register(app)
demo.register(app)
bench.register(app)
models.register(app)
experiments.register(app)
serve.register(app)
feed.register(app)
retrain.register(app)


def _version(shown: bool) -> None:
    if shown:
        typer.echo(f"streamrec {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """The options every command shares."""


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    """Expected failures end in one line and exit code 1, not a traceback. SIGTERM
    exits through `finally` blocks, so a stopped demo, benchmark or evaluation
    stops the broker, Redis and services it started (the worker and the server
    install their own handlers)."""
    signal.signal(signal.SIGTERM, _terminated)
    try:
        app()
    except StreamrecError as exc:
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(str(exc))}")
        raise SystemExit(1) from None
