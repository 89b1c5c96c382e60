"""Running the Faust worker from `Settings` (what `streamrec worker` calls)."""

from __future__ import annotations

import faust

from stream.app import create_app
from streamrec.settings import Settings
from streamrec.topics import ensure_topics


def run_worker(settings: Settings, *, noop: bool = False) -> None:
    ensure_topics(settings)
    app = create_app(settings, noop=noop)
    worker = faust.Worker(app, loglevel=settings.log_level.lower(), redirect_stdouts=False)
    worker.execute_from_commandline()
