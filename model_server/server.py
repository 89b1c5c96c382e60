"""Running the model server under uvicorn (what `streamrec serve` calls)."""

from __future__ import annotations

import logging
import os

import uvicorn

from model_server.app import create_app
from streamrec.settings import Settings

GRACEFUL_SHUTDOWN_S = 10


def run_server(settings: Settings) -> None:
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
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
        return
    # Worker processes build their own app from the environment: hand them ours.
    os.environ.update(settings.to_env())
    uvicorn.run(
        "model_server.app:app_from_env",
        factory=True,
        workers=settings.serve_workers,
        host=settings.serve_host,
        port=settings.serve_port,
        log_level=settings.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
