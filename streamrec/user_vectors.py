"""The user vector: the encoder's inputs built from a user's Redis state, and its cache
entry (`sr:u:{U}:vec`). The model server (on a cache miss) and the stream worker
(after each batch) both compute it here, so the worker's vectors are the ones the
server would compute and carry the tag it checks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from streamrec import features
from streamrec.events import EventType
from streamrec.loaded import ServedModel
from streamrec.state import CachedVector, StoredEvent, StoredUser

EncoderInputs = tuple[np.ndarray, np.ndarray, np.ndarray]  # item rows, type ids, mask
TYPE_IDS = features.ENCODER_TYPE_IDS  # the ids training used: one table, never two


def known_events(model: ServedModel, recent: Sequence[StoredEvent]) -> list[tuple[int, int]]:
    """(vocab row, type id) of the last `max_len` recent events the model knows, oldest first."""
    return known_items(model, ((e.item_id, e.type) for e in recent))


def known_items(
    model: ServedModel, recent: Iterable[tuple[str, EventType]]
) -> list[tuple[int, int]]:
    """`known_events` from the recent events' (item id, type), oldest first."""
    rows = model.bundle.rows
    known = [(rows[item_id], TYPE_IDS[kind]) for item_id, kind in recent if item_id in rows]
    return known[-model.bundle.max_len :]


def left_padded(
    item_rows: Sequence[Sequence[int] | np.ndarray],
    type_ids: Sequence[Sequence[int] | np.ndarray],
    max_len: int,
) -> EncoderInputs:
    """(item_ids, type_ids, mask) of shape (batch, width): each sequence's last
    `max_len` events right-aligned, so every sequence's latest event is in the last
    column; the width is the longest kept sequence (at least 1). Training
    (`retrain.batches.left_pad`) and serving pad with this one function."""
    width = max(1, min(max_len, max(len(rows) for rows in item_rows)))
    item_ids = np.zeros((len(item_rows), width), dtype=np.int64)
    types = np.zeros((len(item_rows), width), dtype=np.int64)
    mask = np.zeros((len(item_rows), width), dtype=np.float32)
    for n, (rows, kinds) in enumerate(zip(item_rows, type_ids, strict=True)):
        rows, kinds = rows[-width:], kinds[-width:]
        if len(rows):
            item_ids[n, -len(rows) :] = rows
            types[n, -len(rows) :] = kinds
            mask[n, -len(rows) :] = 1.0
    return item_ids, types, mask


def encoder_inputs(users: Sequence[list[tuple[int, int]]]) -> EncoderInputs:
    """One batch of users' known events, left-padded to its longest user (a batch of
    one has no padding). Users must not be empty."""
    return left_padded(
        [[row for row, _ in known] for known in users],
        [[type_id for _, type_id in known] for known in users],
        max_len=max(len(known) for known in users),
    )


def encoded_users(model: ServedModel, users: Sequence[list[tuple[int, int]]]) -> np.ndarray:
    """(len(users), dim): `model`'s user vectors of many users' known events, one
    encoder call per group of users whose event counts share a power-of-two ceiling,
    so that one long history does not pad every other user of the batch to its
    length (a user's vector does not depend on the padding: the mask hides it). The
    stream worker's refresh and the server's prewarm call this off the event loop.
    Users must not be empty."""
    vectors = np.empty((len(users), model.dim), dtype=np.float32)
    groups: dict[int, list[int]] = {}
    for n, known in enumerate(users):
        groups.setdefault((len(known) - 1).bit_length(), []).append(n)
    for members in groups.values():
        vectors[members] = model.bundle.user_vectors(*encoder_inputs([users[n] for n in members]))
    return vectors


def user_encoder_inputs(model: ServedModel, recent: Sequence[StoredEvent]) -> EncoderInputs | None:
    """One user's inputs; None when no recent item is known to the model (trending)."""
    known = known_events(model, recent)
    return encoder_inputs([known]) if known else None


def cached_user_vector(model: ServedModel, user: StoredUser) -> np.ndarray | None:
    """(1, dim) from the cache when this version computed it from this very state."""
    return entry_vector(model, user.state_tag, user.cached_vector)


def entry_vector(
    model: ServedModel, state_tag: str, cached: CachedVector | None
) -> np.ndarray | None:
    """(1, dim) from a cache entry when `model` computed it from the very state
    tagged `state_tag` (`StoredUser.state_tag`)."""
    if (
        cached is not None
        and cached.model_version == model.version
        and cached.state_tag == state_tag
        and len(cached.values) == 4 * model.dim
    ):
        return np.frombuffer(cached.values, dtype=np.float32).reshape(1, model.dim)
    return None


def cache_entry(model: ServedModel, user: StoredUser, user_vector: np.ndarray) -> CachedVector:
    """What to store for a vector `model` computed from `user`'s state as read."""
    return tagged_entry(model, user.state_tag, user_vector)


def tagged_entry(model: ServedModel, state_tag: str, user_vector: np.ndarray) -> CachedVector:
    """What to store for a vector `model` computed from the state tagged `state_tag`."""
    return CachedVector(model.version, state_tag, user_vector.astype("<f4").tobytes())
