"""The model server's start-up error names the Redis it could not reach, never its password."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from devtools.devstack import free_port
from model_server.app import create_app
from streamrec.errors import StateError
from streamrec.settings import Settings


async def test_a_server_without_redis_says_where_but_not_the_password(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        kafka_bootstrap="unused:1",
        redis_url=f"redis://app:s3cret-pw@127.0.0.1:{free_port()}/0",
        registry=tmp_path / "registry",
    )
    app = create_app(settings, CollectorRegistry())
    with pytest.raises(StateError) as refused:
        async with app.router.lifespan_context(app):
            pass
    assert "s3cret-pw" not in str(refused.value)
    assert "app:***@127.0.0.1" in str(refused.value)
