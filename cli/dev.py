"""`streamrec dev up | down | status`: the embedded broker and Redis."""

from __future__ import annotations

import typer
from rich import print as rprint

from devtools.devstack import DevStack
from streamrec.redact import redacted
from streamrec.settings import Settings
from streamrec.topics import ensure_topics

dev_app = typer.Typer(no_args_is_help=True, help="The embedded Kafka-compatible broker and Redis.")


def register(app: typer.Typer) -> None:
    app.add_typer(dev_app, name="dev")


def _stack() -> tuple[Settings, DevStack]:
    settings = Settings()
    return settings, DevStack(settings.home)


@dev_app.command()
def up(
    cluster: bool = typer.Option(
        False,
        "--cluster",
        help="Start a local Redis Cluster (3 primaries) instead of one Redis; "
        "STREAMREC_REDIS_CLUSTER=true says so too.",
    ),
) -> None:
    """Start the broker, and Redis unless STREAMREC_REDIS_URL names one, on free ports."""
    settings, stack = _stack()
    # An explicit Redis URL wins over starting our own.
    external = settings.redis_url if settings.redis_url_explicit else ""
    status = stack.up(external_redis_url=external, cluster=cluster or settings.redis_cluster)
    ensure_topics(Settings())
    rprint(
        f"[green]up[/green] kafka={status.kafka_bootstrap} redis={redacted(status.redis_url or '')}"
    )
    rprint(f"addresses written to {settings.home / 'dev.json'}")


@dev_app.command()
def down() -> None:
    """Stop the broker and Redis started by `dev up` (their data is lost)."""
    _, stack = _stack()
    stack.down()
    rprint("[yellow]down[/yellow]")


@dev_app.command()
def status() -> None:
    """Say what runs and where."""
    _, stack = _stack()
    st = stack.status()
    if st.redis_alive:
        redis_word = "up"
    elif st.redis_url and not st.redis_pid:
        redis_word = "external"
    else:
        redis_word = "down"
    rprint(f"broker: {'up' if st.broker_alive else 'down'} {st.kafka_bootstrap or ''}")
    rprint(f"redis:  {redis_word} {redacted(st.redis_url or '')}")
    if not st.broker_alive:
        raise typer.Exit(1)
