"""Dead-letter records: a rejected message's own key and bytes with the reason and
its source in headers (as Kafka Connect's DLQ does), cut to fit when too large,
and sent until the broker confirms every one.

A message the broker accepted can be larger than the worker's producer may send
(its request size, `dlq_max_record_bytes`) or than the DLQ topic takes. Such a
record keeps the first bytes of its value that fit and says so in the header
`streamrec.truncated` (the original value's length in bytes); a key longer than
`MAX_KEY_BYTES` is cut the same way (`streamrec.key.truncated`). A broker that
refuses a record as too large gets it again at half the size, down to an empty
value. Every other producer error is retried with backoff: the batch is acked
only after its DLQ records are confirmed, so a record may appear twice, never
zero times.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

from aiokafka.errors import (
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)
from faust.exceptions import ProducerSendError

log = logging.getLogger(__name__)

DlqSender = Callable[[bytes | None, bytes, list[tuple[str, bytes]]], Awaitable[None]]

TRUNCATED_HEADER = "streamrec.truncated"
KEY_TRUNCATED_HEADER = "streamrec.key.truncated"
# A user id is at most 128 characters; a key far beyond that is garbage to keep a sample of.
MAX_KEY_BYTES = 1024
# What a record costs beyond its key, value and header bytes (record and batch framing).
RECORD_OVERHEAD_BYTES = 512
# Errors of the producer that a retry cannot cure by waiting, only by a smaller record.
_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError)
# Whatever the producer raises: aiokafka's errors, and Faust's wrapper around them.
PRODUCER_ERRORS = (KafkaError, ProducerSendError)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    # The untruncated value, kept to cut again when the broker refuses this size.
    original_value: bytes

    @property
    def size_bytes(self) -> int:
        headers = sum(len(name) + len(value) for name, value in self.headers)
        return len(self.key or b"") + len(self.value) + headers + RECORD_OVERHEAD_BYTES

    def cut_to(self, value_bytes: int) -> DeadLetter:
        """The same record with at most `value_bytes` of the original value."""
        if value_bytes >= len(self.original_value):
            return self
        headers = [(n, v) for n, v in self.headers if n != TRUNCATED_HEADER]
        headers.append((TRUNCATED_HEADER, str(len(self.original_value)).encode()))
        return replace(self, value=self.original_value[:value_bytes], headers=tuple(headers))


def dead_letter(
    key: bytes | None,
    value: bytes,
    headers: Sequence[tuple[str, bytes]],
    max_record_bytes: int,
) -> DeadLetter:
    """The record for one rejected message, cut to `max_record_bytes` at most."""
    kept_headers = list(headers)
    if key is not None and len(key) > MAX_KEY_BYTES:
        kept_headers.append((KEY_TRUNCATED_HEADER, str(len(key)).encode()))
        key = key[:MAX_KEY_BYTES]
    letter = DeadLetter(key, value, tuple(kept_headers), value)
    excess = letter.size_bytes + len(str(len(value))) + len(TRUNCATED_HEADER) - max_record_bytes
    if excess > 0:
        letter = letter.cut_to(max(0, len(value) - excess))
    return letter


def is_too_large(exc: BaseException) -> bool:
    """True for a producer error that says the record is too large (Faust wraps them)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, _TOO_LARGE):
            return True
        cause = cause.__cause__
    return False


async def send_dead_letters(
    letters: Sequence[DeadLetter], send: DlqSender, retry_max_s: float
) -> int:
    """Send every record until the broker confirms it; return how many were cut
    further because the producer or the broker refused their size."""
    pending = list(letters)
    backoff_s = 0.05
    recut = 0
    while pending:
        results = await asyncio.gather(
            *(send(letter.key, letter.value, list(letter.headers)) for letter in pending),
            return_exceptions=True,
        )
        failed: list[DeadLetter] = []
        waiting_for: BaseException | None = None
        for letter, result in zip(pending, results, strict=True):
            if result is None:
                continue
            if not isinstance(result, PRODUCER_ERRORS):
                raise result
            if is_too_large(result) and letter.value:
                recut += 1
                log.warning(
                    "DLQ record of %d bytes refused as too large (%s); sending %d value bytes",
                    letter.size_bytes, result, len(letter.value) // 2,
                )  # fmt: skip
                failed.append(letter.cut_to(len(letter.value) // 2))
            else:
                failed.append(letter)
                waiting_for = result
        if waiting_for is not None:
            # Not a matter of size: the producer or the broker is failing; wait.
            log.warning(
                "%d DLQ records not sent (%r); retrying in %.2f s",
                len(failed), waiting_for, backoff_s,
            )  # fmt: skip
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, retry_max_s)
        pending = failed
    return recut
