"""Start-up checks a service runs before it starts: each failure is one line with its
fix (a `StreamrecError`, which the command line prints and exits 1 on), instead of
a traceback from deep inside uvicorn, Faust or redis-py."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import redis

from streamrec import registry
from streamrec.errors import BundleError, StreamrecError
from streamrec.redact import redacted
from streamrec.settings import Settings

REDIS_CHECK_TIMEOUT_S = 2.0


def check_redis(settings: Settings) -> None:
    """`redis_url` is a Redis URL and the server answers a PING within 2 s."""
    shown = redacted(settings.redis_url)
    try:
        # A cluster URL's node answers as any Redis does.
        client = redis.Redis.from_url(
            settings.redis_node_url,
            socket_timeout=REDIS_CHECK_TIMEOUT_S,
            socket_connect_timeout=REDIS_CHECK_TIMEOUT_S,
        )
    except ValueError as exc:
        raise StreamrecError(f"STREAMREC_REDIS_URL={shown} is not a Redis URL: {exc}") from None
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        raise StreamrecError(
            f"Redis at {shown} does not answer ({exc}); start one with `streamrec dev up` "
            "or point STREAMREC_REDIS_URL at yours"
        ) from None
    finally:
        client.close()


def check_port(host: str, port: int, setting: str) -> None:
    """Nothing listens on host:port yet (port 0: the system picks one, always free)."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StreamrecError(
                    f"port {port} on {host} is in use: stop what holds it, or pick another "
                    f"with {setting}"
                ) from None
            raise StreamrecError(f"cannot listen on {host}:{port} ({exc}); see {setting}") from None


def check_model(root: Path) -> None:
    """The registry names a current version."""
    try:
        current = registry.current_version(root)
    except BundleError as exc:
        raise StreamrecError(f"the model registry at {root} cannot be read: {exc}") from None
    if current is None:
        raise StreamrecError(
            f"no model version in {root}: publish one with `streamrec train --data FILE`, "
            "or point STREAMREC_REGISTRY at your registry"
        )
