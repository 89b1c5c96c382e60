"""New items served before a retrain: each server process gives every item of its
copy of the catalogue (model_server/catalogue_mirror.py) that the served version
has no vector for one from its content, through the bundle's content tower
(streamrec/content.py, retrain/encoder.py), in the version's `LiveIndex`.
Retrieval searches it beside the bundle's index (model_server/recommender.py).

A new version starts with an empty live index and takes every such item before it
swaps in (`prepare`); the items it learned an id embedding for are in its bundle
and no longer live. An item keeps the vector of the content it had when added;
availability and deletes are the answer's filters' business, as for any item.
"""

from __future__ import annotations

import asyncio

import numpy as np

from model_server.catalogue_mirror import CatalogueMirror
from model_server.polling import Polling
from streamrec.content import content_tokens
from streamrec.errors import BundleError
from streamrec.loaded import ModelHolder, ServedModel
from streamrec.metrics import ServeMetrics

# Items given a vector per content-tower call; the event loop runs between calls.
BATCH = 1000


class LiveItems:
    def __init__(
        self, holder: ModelHolder, mirror: CatalogueMirror, metrics: ServeMetrics, poll_s: float
    ) -> None:
        self.holder = holder
        self.mirror = mirror
        self.metrics = metrics
        self._polling = Polling(poll_s, "live items")

    async def catch_up(self, model: ServedModel) -> int:
        """Add what the catalogue copy changed past what `model` took (everything,
        when the copy no longer holds its changes that far back); returns how many
        were added."""
        if model.bundle.content_tower is None:
            return 0
        live = model.live
        seq = self.mirror.seq
        changed = self.mirror.changed_since(live.seq)
        item_ids = list(self.mirror.records) if changed is None else changed
        fresh = []
        for item_id in dict.fromkeys(item_ids):
            record = self.mirror.record(item_id)
            if item_id in model.bundle.rows or item_id in live or record is None:
                continue
            if not record.content.empty:
                fresh.append((item_id, record.content))
        for start in range(0, len(fresh), BATCH):
            batch = fresh[start : start + BATCH]
            tokens = np.stack([content_tokens(content) for _, content in batch])
            live.add([item_id for item_id, _ in batch], model.bundle.content_vectors(tokens))
            self.metrics.live_items_added.inc(len(batch))
            await asyncio.sleep(0)
        live.seq = seq
        return len(fresh)

    async def prepare(self, model: ServedModel) -> None:
        """Before `model` swaps in (`ModelHolder.before_swap`): its live items, so that a
        new item answered a moment ago is not missing from the next answer."""
        await self.catch_up(model)

    async def follow(self) -> None:
        """Catch the served version up every `poll_s` until `stop()`; a failure is
        logged and the next poll reads on from where this one stopped."""

        async def step() -> None:
            if self.holder.held is not None:
                await self.catch_up(self.holder.held)
            for model in self.holder.arm_models:  # an experiment's arms' versions
                await self.catch_up(model)

        await self._polling.run(step, (BundleError,))

    def stop(self) -> None:
        self._polling.stop()
