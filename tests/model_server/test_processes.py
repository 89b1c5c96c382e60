"""`streamrec serve --workers 2`: /metrics sums both processes, whichever answers."""

from __future__ import annotations

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
        for n in range(30):
            # A new connection each time, so the kernel spreads them over both processes.
            response = client.post(
                "/recommend", json={"user_id": f"u{n}", "k": 3}, headers={"connection": "close"}
            )
            assert response.status_code == 200
        scrapes = [client.get("/metrics", headers={"connection": "close"}).text for _ in range(6)]
    for text in scrapes:
        assert counter_total(text, "streamrec_serve_requests", endpoint="recommend") == 30
        versions = [line for line in text.splitlines() if line.startswith("streamrec_model_info{")]
        assert len(versions) == 2 and all(served.first.version in line for line in versions)
