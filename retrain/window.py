"""The training window: the archive's events read into compact columns as they
stream past (never a list of event objects), at most `max_events` of them, the
newest kept; then grouped into the per-user sequences training takes.

A million archived events as `ArchivedEvent` objects took ~0.7 GB before training
began; as columns (user and item interned once, type and time per event) they take
~17 bytes each plus the distinct ids (docs/operations.md, "Retraining memory")."""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable

import numpy as np

from retrain.data import UserSequence
from streamrec.archive import ArchivedEvent
from streamrec.events import EventType

_TYPES = list(EventType)
_TYPE_CODE = {t: code for code, t in enumerate(_TYPES)}
# A replay sample keeps a user when the user's hash lands below fraction x this.
_REPLAY_BUCKETS = 10_000


class TrainingWindow:
    """Events added oldest first (the archive's order); once more than `max_events`
    are held the oldest go, so memory is bounded by the setting, not the window."""

    def __init__(self, max_events: int) -> None:
        self.max_events = max_events
        self.new_events = 0  # read from the window, before any was dropped
        self.replay_events = 0
        self.dropped = 0  # the oldest, beyond max_events
        self.offsets: dict[str, list[int]] = {}  # topic:partition -> [first, last] offset
        self._user_index: dict[str, int] = {}
        self._item_index: dict[str, int] = {}
        self._users = array("i")
        self._items = array("i")
        self._types = array("b")
        self._ts_ms = array("q")

    def __len__(self) -> int:
        return len(self._users)

    def read_new(self, archived: Iterable[ArchivedEvent]) -> None:
        """The window's own events: counted, their Kafka offsets spanned."""
        spans = self.offsets
        for record in archived:
            self.new_events += 1
            span = spans.setdefault(f"{record.topic}:{record.partition}", [record.offset] * 2)
            span[0], span[1] = min(span[0], record.offset), max(span[1], record.offset)
            self._add(record)
        self._drop_oldest()

    def read_replay(self, archived: Iterable[ArchivedEvent], fraction: float) -> None:
        """Older events of a stable `fraction` of their users (a hash of the user id
        picks them, the same users every read), so old tastes are not forgotten; they
        are older than the window's own, so they take only the room those leave."""
        room = self.max_events - len(self)
        if room <= 0 or fraction <= 0:
            return
        kept = TrainingWindow(room)
        kept._user_index, kept._item_index = self._user_index, self._item_index
        threshold = round(fraction * _REPLAY_BUCKETS)
        chosen: dict[str, bool] = {}
        for record in archived:
            user_id = record.event.user_id
            keep = chosen.get(user_id)
            if keep is None:
                keep = chosen[user_id] = _replay_bucket(user_id) < threshold
            if keep:
                kept._add(record)
        kept._drop_oldest()
        self.replay_events = len(kept)
        self.dropped += kept.dropped
        # Older, so first: the columns stay in arrival order.
        self._users = kept._users + self._users
        self._items = kept._items + self._items
        self._types = kept._types + self._types
        self._ts_ms = kept._ts_ms + self._ts_ms

    def sequences(self) -> list[UserSequence]:
        """Per user, events by time (ties in arrival order); users by their first event
        time, then id: what `retrain.data.group_by_user` gives for the same events."""
        if not len(self):
            return []
        users = np.frombuffer(self._users, dtype=np.int32)
        ts_ms = np.frombuffer(self._ts_ms, dtype=np.int64)
        order = np.lexsort((np.arange(len(users)), ts_ms, users))
        users_sorted = users[order]
        starts = np.flatnonzero(np.r_[True, users_sorted[1:] != users_sorted[:-1]])
        ends = np.r_[starts[1:], len(order)]
        user_ids = list(self._user_index)
        item_ids = np.array(list(self._item_index), dtype=object)
        items_sorted = item_ids[np.frombuffer(self._items, dtype=np.int32)[order]]
        types_sorted = np.frombuffer(self._types, dtype=np.int8)[order]
        ts_sorted = ts_ms[order]
        sequences = [
            UserSequence(
                user_id=user_ids[users_sorted[start]],
                item_ids=tuple(items_sorted[start:end].tolist()),
                types=tuple(_TYPES[code] for code in types_sorted[start:end].tolist()),
                ts_ms=tuple(ts_sorted[start:end].tolist()),
            )
            for start, end in zip(starts.tolist(), ends.tolist(), strict=True)
        ]
        sequences.sort(key=lambda seq: (seq.ts_ms[0], seq.user_id))
        return sequences

    def _add(self, record: ArchivedEvent) -> None:
        event = record.event
        self._users.append(self._user_index.setdefault(event.user_id, len(self._user_index)))
        self._items.append(self._item_index.setdefault(event.item_id, len(self._item_index)))
        self._types.append(_TYPE_CODE[event.type])
        self._ts_ms.append(event.ts_ms)
        if len(self._users) >= 2 * self.max_events:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        """Down to `max_events`: while reading, only once twice as many are held (to
        copy rarely), and at the end of each read."""
        extra = len(self._users) - self.max_events
        if extra <= 0:
            return
        self.dropped += extra
        del self._users[:extra], self._items[:extra], self._types[:extra], self._ts_ms[:extra]


def _replay_bucket(user_id: str) -> int:
    digest = hashlib.blake2b(user_id.encode(), digest_size=8, person=b"replay").digest()
    return int.from_bytes(digest, "big") % _REPLAY_BUCKETS
