"""The feed with its per-user rate limit on: a change inside the interval is not
dropped but coalesced, sent once when the interval passes, so each user's
last record equals what /recommend answers for them afterwards."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from bench.scenarios.workers import produce_raw
from streamrec.settings import Settings
from tests.model_server.conftest import Served, in_process
from tests.model_server.test_end_to_end import send
from tests.model_server.test_feed import feed_records_for, running_feed

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Long enough that the second burst, sent as soon as the first record is read (a few
# seconds of consumer start-up), lands inside the first record's interval.
INTERVAL_MS = 8000


@pytest.fixture
def limited(served: Served, tmp_path: Path) -> Iterator[Settings]:
    with running_feed(served, tmp_path, feed_min_interval_ms=INTERVAL_MS) as settings:
        yield settings


async def test_changes_inside_the_interval_are_sent_once_when_it_passes(
    limited: Settings, served: Served
) -> None:
    users = ["cora", "dan"]
    for n, user in enumerate(users):
        send(limited, user, [(item, "click") for item in served.items[n * 4 : n * 4 + 4]])
    firsts = {user: feed_records_for(limited, user, wanted=1)[0] for user in users}
    # Inside the interval, in one go: a purchase of the top item and two more clicks each.
    now_ms = int(time.time() * 1000)
    messages = []
    for n, user in enumerate(users):
        bought = firsts[user]["items"][0]["item_id"]
        later = [(bought, "purchase")] + [
            (i, "click") for i in served.items[20 + 2 * n : 22 + 2 * n]
        ]
        for m, (item, kind) in enumerate(later):
            body = {"event_id": f"{user}-later-{m}", "user_id": user, "item_id": item,
                    "type": kind, "ts": now_ms + m}  # fmt: skip
            topic = limited.topic_purchases if kind == "purchase" else limited.topic_clicks
            messages.append((topic, user.encode(), orjson.dumps(body)))
    produce_raw(limited, messages)
    # The last change of each user is sent once its interval passes: wait for a
    # record that shows the purchase, then for the feed to go quiet.
    for user in users:
        bought = firsts[user]["items"][0]["item_id"]
        deadline = time.monotonic() + INTERVAL_MS / 1000 + 20
        while bought in [i["item_id"] for i in feed_records_for(limited, user, 1)[-1]["items"]]:
            assert time.monotonic() < deadline, f"{user}: the purchase was never sent"
            time.sleep(0.5)
    time.sleep(3)  # a second record of the same change would come now
    records = {user: feed_records_for(limited, user, wanted=1) for user in users}
    time.sleep(1)

    async with in_process(limited) as (client, _):
        for user in users:
            again = feed_records_for(limited, user, wanted=1)
            assert len(again) == len(records[user]), f"{user}: sent again with no change"
            assert len(records[user]) >= 2, f"{user}: {records[user]}"
            stamps = [r["ts"] for r in records[user]]
            gaps = [later - earlier for earlier, later in itertools.pairwise(stamps)]
            assert min(gaps) >= INTERVAL_MS * 0.9, f"{user}: the rate limit did not hold: {gaps}"
            final = records[user][-1]
            request = {"user_id": user, "k": limited.feed_k}
            answer = (await client.post("/recommend", json=request)).json()
            assert [i["item_id"] for i in final["items"]] == [i["item_id"] for i in answer["items"]]
            assert final["model_version"] == answer["model_version"]
