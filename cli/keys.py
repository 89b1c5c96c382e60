"""`streamrec keys new`: an API key for the model server (docs/serving.md, "Access")."""

from __future__ import annotations

import json
import secrets

import typer

keys_app = typer.Typer(no_args_is_help=True, help="API keys for the model server.")

SCOPE_NAMES = ("read", "explain", "write", "admin")


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")


@keys_app.command()
def new(
    key_id: str = typer.Option(..., "--id", help="A name for the key: who holds it."),
    scopes: str = typer.Option(
        "read", "--scopes", help="Comma-separated: " + ",".join(SCOPE_NAMES)
    ),
) -> None:
    """Print a new key (give it to its holder; it is not stored) and the entry that
    goes into STREAMREC_API_KEYS (its SHA-256 only)."""
    from model_server.access import key_digest
    from streamrec.errors import StreamrecError
    from streamrec.settings import ApiKey

    wanted = [s.strip() for s in scopes.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SCOPE_NAMES))
    if unknown or not wanted:
        raise StreamrecError(f"--scopes takes {', '.join(SCOPE_NAMES)}; got {scopes!r}")
    secret = secrets.token_urlsafe(32)
    try:
        entry = ApiKey(id=key_id, sha256=key_digest(secret), scopes=tuple(wanted))  # type: ignore[arg-type]
    except ValueError as exc:
        raise StreamrecError(f"--id {key_id!r}: letters, digits, '.', '_' and '-', 1-64") from exc
    typer.echo(f"key: {secret}")
    typer.echo("STREAMREC_API_KEYS entry: " + json.dumps(entry.model_dump(mode="json")))
