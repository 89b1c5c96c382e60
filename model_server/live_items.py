"""New items served before a retrain: each server process follows the catalogue's
change log (`Catalogue.changes_since`) and gives every live item the served version
has no vector for one from its content, through the bundle's content tower
(streamrec/content.py, retrain/encoder.py), in the version's `LiveIndex`.
Retrieval searches it beside the bundle's index (model_server/recommender.py).

A new version starts with an empty live index and reads the whole log before it
swaps in (`prepare`); the items it learned an id embedding for are in its bundle
and no longer live. An item keeps the vector of the content it had when added;
availability and deletes are the answer's filters' business, as for any item.
"""

from __future__ import annotations

import numpy as np
from redis.exceptions import RedisError

from model_server.polling import Polling
from streamrec.catalogue import Catalogue
from streamrec.content import content_tokens
from streamrec.errors import BundleError
from streamrec.loaded import ModelHolder, ServedModel
from streamrec.metrics import ServeMetrics

# Changes read per Redis call; a catch-up reads on until none are left.
READ_BATCH = 1000


class LiveItems:
    def __init__(
        self, holder: ModelHolder, catalogue: Catalogue, metrics: ServeMetrics, poll_s: float
    ) -> None:
        self.holder = holder
        self.catalogue = catalogue
        self.metrics = metrics
        self._polling = Polling(poll_s, "live items: following the catalogue")

    async def catch_up(self, model: ServedModel) -> int:
        """Add what the log holds past what `model` read; returns how many were added."""
        if model.bundle.content_tower is None:
            return 0
        live = model.live
        added = 0
        while True:
            changes = await self.catalogue.changes_since(live.seq, READ_BATCH)
            if not changes:
                return added
            new = [i for i, _ in changes if i not in model.bundle.rows and i not in live]
            records = await self.catalogue.items(new) if new else []
            fresh = [
                (item_id, record.content)
                for item_id, record in zip(new, records, strict=True)
                if record is not None and not record.deleted and not record.content.empty
            ]
            if fresh:
                tokens = np.stack([content_tokens(content) for _, content in fresh])
                live.add([item_id for item_id, _ in fresh], model.bundle.content_vectors(tokens))
                self.metrics.live_items_added.inc(len(fresh))
                added += len(fresh)
            live.seq = changes[-1][1]
            if len(changes) < READ_BATCH:
                return added

    async def prepare(self, model: ServedModel) -> None:
        """Before `model` swaps in (`ModelHolder.before_swap`): its live items, so that a
        new item answered a moment ago is not missing from the next answer."""
        await self.catch_up(model)

    async def follow(self) -> None:
        """Catch the served version up every `poll_s` until `stop()`; a Redis outage is
        logged and the next poll reads on from where this one stopped."""

        async def step() -> None:
            if self.holder.held is not None:
                await self.catch_up(self.holder.held)

        await self._polling.run(step, (RedisError, BundleError))

    def stop(self) -> None:
        self._polling.stop()
