"""URLs as logs and error messages may show them: every credential replaced."""

from __future__ import annotations

import pytest

from streamrec.redact import redacted


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@db.internal:6379/0", "redis://:***@db.internal:6379/0"),
        ("rediss://app:s3cret@db:6380/2", "rediss://app:***@db:6380/2"),
        ("redis://app@db:6379/0", "redis://app@db:6379/0"),  # a user name is no secret
        (
            "redis://db:6379/0?password=s3cret&ssl_cert_reqs=none",
            "redis://db:6379/0?password=***&ssl_cert_reqs=none",
        ),
        ("unix:///run/redis.sock?db=1&password=s3cret", "unix:///run/redis.sock?db=1&password=***"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("127.0.0.1:9092,broker-2:9092", "127.0.0.1:9092,broker-2:9092"),
        ("redis://:p%40ss@db:6379", "redis://:***@db:6379"),
        ("redis://:pa:ss@db@x:6379", "redis://:***@x:6379"),
    ],
)
def test_credentials_never_show(url: str, shown: str) -> None:
    assert redacted(url) == shown
    assert "s3cret" not in redacted(url)


def test_a_url_that_does_not_parse_shows_nothing_of_itself() -> None:
    assert "s3cret" not in redacted("redis://:s3cret@[::1")
