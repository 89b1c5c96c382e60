"""`streamrec serve --workers 2`: /metrics sums both processes, whichever answers."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from devtools.processes import ServiceProcess
from devtools.scrape import counter_total
from tests.model_server.conftest import Served

pytestmark = pytest.mark.integration


def test_metrics_cover_every_worker_process(served: Served, tmp_path: Path) -> None:
    settings = served.settings.model_copy(update={"serve_workers": 2})
    url = f"http://127.0.0.1:{settings.serve_port}"
    with (
        ServiceProcess(settings, ["serve"], tmp_path / "serve.log", settings.serve_port),
        httpx.Client(base_url=url) as client,
    ):
        # Ready means one process answered /readyz; the other may still be loading
        # its model (on a busy machine, long enough for every request below to go to
        # the first). Both are serving once both have said which version they hold.
        deadline = time.monotonic() + 60
        while len(_model_info(client.get("/metrics").text)) < 2:
            assert time.monotonic() < deadline, "the second process never loaded its model"
            time.sleep(0.2)
        for n in range(30):
            # A new connection each time, so the kernel spreads them over both processes.
            response = client.post(
                "/recommend", json={"user_id": f"u{n}", "k": 3}, headers={"connection": "close"}
            )
            assert response.status_code == 200
        scrapes = [client.get("/metrics", headers={"connection": "close"}).text for _ in range(6)]
    for text in scrapes:
        assert counter_total(text, "streamrec_serve_requests", endpoint="recommend") == 30
        versions = _model_info(text)
        assert len(versions) == 2 and all(served.first.version in line for line in versions)


def _model_info(metrics: str) -> list[str]:
    """The `streamrec_model_info` series: one per process that loaded a version."""
    return [line for line in metrics.splitlines() if line.startswith("streamrec_model_info{")]
