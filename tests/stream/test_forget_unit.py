"""The forget handler against real Redis and a real archive folder, without Faust: it
waits for the user's earlier events, and a failure after Redis is cleared but before
the archive is rewritten leaves nothing of the user that a reader returns."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from stream.catalogue import ItemMessage
from stream.forget import Forgetter
from stream.ingest import Ingestor, IngestPolicy, RawMessage
from stream.redis_waits import RedisWaits
from streamrec.archive import ArchiveWriter, read_archive, segments
from streamrec.errors import ArchiveError
from streamrec.events import Event, EventType
from streamrec.forget import ForgetRequest, Horizon
from streamrec.metrics import IngestMetrics
from streamrec.settings import Settings
from streamrec.state import StateStore


class Harness:
    def __init__(self, settings: Settings, archive_root: Path) -> None:
        self.store = StateStore(settings)
        self.archive = ArchiveWriter(archive_root, writer_id="w")
        self.metrics = IngestMetrics(CollectorRegistry())
        self.policy = IngestPolicy(retry_max_s=0.2)
        self.dead: list[dict[str, bytes]] = []
        self.announced: list[tuple[str, int]] = []
        self.committed: dict[tuple[str, int], int] = {}

        async def send_dlq(
            key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]
        ) -> None:
            self.dead.append(dict(headers))

        async def announce(user_id: str, partition: int) -> None:
            self.announced.append((user_id, partition))

        async def no_horizon(user_id: str) -> tuple[Horizon, ...]:
            return ()

        async def check(horizon: tuple[Horizon, ...]) -> str | None:
            # The worker asks the broker (tests/stream/test_forget_pipeline.py).
            return next((f"no {h.topic}" for h in horizon if h.topic == "nope"), None)

        async def committed(topic: str, partition: int) -> int | None:
            return self.committed.get((topic, partition))

        waits = RedisWaits(self.metrics, 0.2)
        self.ingestor = Ingestor(
            self.store, self.metrics, send_dlq, self.policy, self.archive, waits=waits
        )
        self.forgetter = Forgetter(
            self.store.forget_users, self.archive, self.metrics, send_dlq, self.policy, waits,
            committed, no_horizon, check, announce,
        )  # fmt: skip

    async def ingest(self, events: list[Event], first_offset: int = 0) -> None:
        """A batch at these offsets of clicks[0], written, then committed as Faust does."""
        await self.ingestor.handle_batch(
            [
                RawMessage("clicks", 0, first_offset + n, e.user_id.encode(), e.to_json(), None)
                for n, e in enumerate(events)
            ]
        )
        self.committed[("clicks", 0)] = first_offset + len(events)

    async def close(self) -> None:
        self.archive.close()
        await self.store.redis.flushdb()
        await self.store.close()


def events(user_id: str, count: int, start: int = 0) -> list[Event]:
    return [
        Event(f"{user_id}-{n}", user_id, f"i{n}", EventType.CLICK, 1_000_000 + n)
        for n in range(start, start + count)
    ]


@pytest.fixture
async def harness(make_settings: Callable[..., Settings], tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(make_settings("forget-unit"), tmp_path / "archive")
    yield h
    await h.close()


async def test_a_forget_waits_for_the_users_earlier_events_then_removes_them(
    harness: Harness,
) -> None:
    h = harness
    await h.ingest(events("gone", 2) + events("kept", 2))  # offsets 0-3
    request = ForgetRequest("gone", 1, (Horizon("clicks", 0, 6), Horizon("purchases", 0, 0)))
    forgetting = asyncio.create_task(h.forgetter.forget(request, 0))
    await asyncio.sleep(0.2)
    assert not forgetting.done()  # offsets 4 and 5 are not applied yet
    await h.ingest(events("gone", 2, start=2), first_offset=4)  # the in-flight events
    done = await asyncio.wait_for(forgetting, 5)
    assert done.outcome == "forgotten" and done.archive_rows == 4
    assert (await h.store.read_user("gone")).recent_events == ()
    assert len((await h.store.read_user("kept")).recent_events) == 2
    assert {a.event.user_id for a in read_archive(h.archive.root)} == {"kept"}
    assert h.announced == [("gone", 0)]
    # A partition committed past the horizon long ago needs no wait.
    h.committed[("clicks", 1)] = 50
    request = ForgetRequest("kept", 1, (Horizon("clicks", 1, 50),))
    assert (await asyncio.wait_for(h.forgetter.forget(request, 1), 5)).outcome == "forgotten"
    # Again, and for a user never seen: nothing to remove, no error.
    assert (await h.forgetter.forget(ForgetRequest("gone", 1), 0)).outcome == "absent"
    assert (await h.forgetter.forget(ForgetRequest("nobody", 1), 0)).outcome == "absent"


async def test_a_failure_between_redis_and_the_archive_rewrite_leaves_nothing_readable(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    await h.ingest(events("gone", 3) + events("kept", 1))

    def crash(*args: object) -> None:
        raise ArchiveError("disk full while rewriting")

    monkeypatch.setattr("stream.forget.compact", crash)
    done = await h.forgetter.forget(ForgetRequest("gone", 1), 0)
    assert (done.redis_keys, done.archive_rows) == (7, 0)  # ev items cnt meta + 3 dedup
    assert h.metrics.archive_errors._value.get() == 1
    on_disk = b"".join(p.read_bytes() for _, f in segments(h.archive.root) for p in f.iterdir())
    assert b'"user_id":"gone"' in on_disk  # not rewritten...
    assert {a.event.user_id for a in read_archive(h.archive.root)} == {"kept"}  # ...not read
    assert (await h.store.read_user("gone")).recent_events == ()

    monkeypatch.undo()
    await h.forgetter.full_pass()  # the worker's periodic pass finishes the job
    on_disk = b"".join(p.read_bytes() for _, f in segments(h.archive.root) for p in f.iterdir())
    assert b'"user_id":"gone"' not in on_disk and b'"user_id":"kept"' in on_disk


async def test_malformed_requests_go_to_the_dlq_with_a_reason(harness: Harness) -> None:
    h = harness

    def message(offset: int, key: bytes | None, value: bytes | None) -> ItemMessage:
        raw = RawMessage("users.forget", 0, offset, key, value or b"", 1.0)
        return ItemMessage(raw, tombstone=value is None)

    await h.forgetter.handle_batch(
        [
            message(0, None, b'{"user_id": "u"}'),
            message(1, b"u", b"[1]"),
            message(2, b"u", b'{"user_id": "u", "horizon": [{"topic": "clicks"}]}'),
            message(3, b"x" * 129, None),
            message(4, b"u", None),  # a bare tombstone: a valid request
            # A horizon that could never be reached would stop the agent for good.
            message(5, b"u", b'{"user_id": "u", "horizon": '
                             b'[{"topic": "nope", "partition": 0, "offset": 1}]}'),
        ]
    )  # fmt: skip
    assert [d["streamrec.reason"] for d in h.dead] == [
        b"missing_field", b"not_object", b"wrong_type", b"too_long", b"bad_value"
    ]  # fmt: skip
    assert h.metrics.forgets.labels("rejected")._value.get() == 5
    assert h.metrics.forgets.labels("absent")._value.get() == 1
