"""Running the model server under uvicorn (what `streamrec serve` calls)."""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import uvicorn

from model_server.app import create_app
from model_server.connections import TimedHttpToolsProtocol
from streamrec.preflight import check_model, check_port, check_redis
from streamrec.settings import Settings

GRACEFUL_SHUTDOWN_S = 10


def _http_protocol(settings: Settings) -> Any:
    """What uvicorn makes each connection's protocol with; a partial of a module-level
    class, so `--workers N` can hand it to its worker processes."""
    return functools.partial(
        TimedHttpToolsProtocol,
        header_timeout_s=settings.serve_header_timeout_s,
        body_timeout_s=settings.serve_body_timeout_s,
    )


def run_server(settings: Settings) -> None:
    """Serve until stopped; what it needs missing (Redis, the port, a model) is one
    StreamrecError before anything starts."""
    check_redis(settings)
    check_port(settings.serve_host, settings.serve_port, "--port or STREAMREC_SERVE_PORT")
    if not settings.serve_wait_for_model:
        check_model(settings.registry)
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if settings.serve_workers == 1:
        uvicorn.run(
            create_app(settings),
            host=settings.serve_host,
            port=settings.serve_port,
            log_level=settings.log_level.lower(),
            access_log=False,
            # Nothing reads the client's address: X-Forwarded-* parsing is wasted work.
            proxy_headers=False,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            http=_http_protocol(settings),
        )
        return
    # Worker processes build their own app from the environment: hand them ours,
    # and a fresh folder where prometheus_client keeps every process's metrics
    # (it reads PROMETHEUS_MULTIPROC_DIR when a worker imports it).
    with tempfile.TemporaryDirectory(prefix="streamrec-metrics-") as metrics_dir:
        workers = settings.model_copy(update={"serve_metrics_dir": Path(metrics_dir)})
        os.environ.update(workers.to_env())
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        uvicorn.run(
            "model_server.app:app_from_env",
            factory=True,
            workers=settings.serve_workers,
            host=settings.serve_host,
            port=settings.serve_port,
            log_level=settings.log_level.lower(),
            access_log=False,
            # Nothing reads the client's address: X-Forwarded-* parsing is wasted work.
            proxy_headers=False,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            http=_http_protocol(settings),
        )
