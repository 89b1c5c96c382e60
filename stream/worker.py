"""Running the Faust worker from `Settings` (what `streamrec worker` calls), with a
bounded shutdown: after SIGTERM or SIGINT the process exits within
`worker_shutdown_timeout_s`, even when a dead broker holds Faust's consumer in its
stop (aiokafka keeps trying to leave the group) or a write waits for Redis.
Nothing is lost by exiting then: what was not committed is delivered again.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

import faust

from stream.app import create_app
from streamrec.preflight import check_port, check_redis
from streamrec.settings import Settings
from streamrec.topics import ensure_topics

log = logging.getLogger(__name__)

# What the process exits with when its shutdown ran out of time.
SHUTDOWN_TIMED_OUT_EXIT = 3


class BoundedWorker(faust.Worker):
    """A Faust worker whose shutdown, once a signal asked for it, has a deadline."""

    def __init__(self, app: faust.App, shutdown_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.shutdown_deadline_s = shutdown_timeout_s
        self._deadline: threading.Timer | None = None

    def _schedule_shutdown(self, signal_received: signal.Signals) -> None:
        if self._deadline is None:
            self._deadline = threading.Timer(self.shutdown_deadline_s, self._out_of_time)
            self._deadline.daemon = True
            self._deadline.start()
        super()._schedule_shutdown(signal_received)

    def _out_of_time(self) -> None:
        log.error(
            "shutdown did not finish within %.0f s (broker or Redis gone?); exiting now",
            self.shutdown_deadline_s,
        )
        logging.shutdown()
        os._exit(SHUTDOWN_TIMED_OUT_EXIT)


def run_worker(settings: Settings, *, noop: bool = False) -> None:
    """Run until stopped; Redis, Kafka or the web port missing is one StreamrecError
    before anything starts (Kafka within a few seconds: `streamrec.topics`)."""
    check_redis(settings)
    check_port(settings.worker_web_host, settings.worker_web_port, "STREAMREC_WORKER_WEB_PORT")
    ensure_topics(settings)
    app = create_app(settings, noop=noop)
    worker = BoundedWorker(
        app,
        settings.worker_shutdown_timeout_s,
        loglevel=settings.log_level.lower(),
        redirect_stdouts=False,
    )
    worker.execute_from_commandline()
