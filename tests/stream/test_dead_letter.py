"""DLQ records cut to fit, and sent whatever the producer raises (without a broker:
the sender is a function that fails the way aiokafka and Faust fail)."""

from __future__ import annotations

import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError
from faust.exceptions import ProducerSendError

from stream.dead_letter import (
    KEY_TRUNCATED_HEADER,
    TRUNCATED_HEADER,
    dead_letter,
    send_dead_letters,
)

HEADERS = [("streamrec.reason", b"too_large"), ("streamrec.detail", b"message is big")]
Sent = list[tuple[bytes | None, bytes, dict[str, bytes]]]


def test_a_record_that_fits_is_the_original_bytes() -> None:
    letter = dead_letter(b"user", b"x" * 5000, HEADERS, max_record_bytes=10_000)
    assert (letter.key, letter.value) == (b"user", b"x" * 5000)
    assert TRUNCATED_HEADER not in dict(letter.headers)


def test_a_record_too_large_keeps_the_first_bytes_that_fit_and_says_so() -> None:
    value = bytes(range(256)) * 8000
    letter = dead_letter(b"user", value, HEADERS, max_record_bytes=100_000)
    assert letter.size_bytes <= 100_000
    assert value.startswith(letter.value) and len(letter.value) > 90_000
    assert dict(letter.headers)[TRUNCATED_HEADER] == str(len(value)).encode()


def test_a_huge_key_is_cut_too() -> None:
    letter = dead_letter(b"k" * 50_000, b"v", HEADERS, max_record_bytes=10_000)
    assert letter.key == b"k" * 1024 and letter.value == b"v"
    assert dict(letter.headers)[KEY_TRUNCATED_HEADER] == b"50000"


async def test_a_broker_that_refuses_the_size_gets_it_smaller_until_it_fits() -> None:
    sent: Sent = []

    async def send(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        if len(value) > 3000:
            # What Faust raises for aiokafka's own size check.
            raise ProducerSendError("Error while sending") from MessageSizeTooLargeError()
        sent.append((key, value, dict(headers)))

    value = b"y" * 20_000
    letters = [
        dead_letter(b"u", value, HEADERS, 1_000_000),
        dead_letter(b"v", b"ok", HEADERS, 10**6),
    ]
    recut = await send_dead_letters(letters, send, retry_max_s=0.01)
    assert recut == 3  # 20,000 -> 10,000 -> 5,000 -> 2,500
    by_key = {key: (v, h) for key, v, h in sent}
    assert by_key[b"u"][0] == b"y" * 2500
    assert by_key[b"u"][1][TRUNCATED_HEADER] == b"20000"
    assert by_key[b"v"] == (b"ok", dict(HEADERS))
    assert len(sent) == 2, "a record the broker confirmed is not sent again"


async def test_a_failing_broker_is_waited_for() -> None:
    failures = iter([KafkaConnectionError(), ProducerSendError("buffer full"), None])
    sent: Sent = []

    async def send(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        error = next(failures)
        if error is not None:
            raise error
        sent.append((key, value, dict(headers)))

    await send_dead_letters([dead_letter(b"u", b"v", HEADERS, 10**6)], send, retry_max_s=0.01)
    assert [v for _, v, _ in sent] == [b"v"]


async def test_an_error_that_is_not_the_producers_is_a_bug_and_escapes() -> None:
    async def send(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        await send_dead_letters([dead_letter(b"u", b"v", HEADERS, 10**6)], send, 0.01)
