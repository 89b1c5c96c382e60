"""One Redis connection that every concurrent caller's script calls share: commands
go out as they come, replies are matched to callers in order (Redis answers a
connection's commands in the order it received them). The model server reads
each request's user state through it (docs/serving.md; the measurements: docs/decisions.md)."""

from __future__ import annotations

import asyncio
import collections
import hashlib
from collections.abc import Sequence
from typing import Any, cast

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

CONNECT_TIMEOUT_S = 5.0

Arg = str | int | bytes


def _command(args: Sequence[Arg], head: bytes = b"", head_count: int = 0) -> bytes:
    """RESP: an array of bulk strings; `head`: the first `head_count` of them, already
    encoded (a script's EVALSHA and SHA1)."""
    parts = [b"*%d\r\n" % (head_count + len(args)), head]
    for arg in args:
        if isinstance(arg, bytes):
            raw = arg
        elif type(arg) is str:  # most are: without the call to str()
            raw = arg.encode()
        else:
            raw = str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            waiter = self.waiting.popleft()
            if not waiter.done():  # a caller that gave up still had its reply read
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}")
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_exception(self.lost)

    def send(self, payload: bytes) -> asyncio.Future[Any]:
        assert self.transport is not None
        waiter = asyncio.get_running_loop().create_future()
        self.waiting.append(waiter)
        self.transport.write(payload)
        return waiter


class PipelinedConnection:
    """Opened on first use and again after it is lost; `close()` at shutdown.

    Why not redis-py here: its pool, retry and instrumentation layers cost 84 µs
    of CPU per script call on this VM against 32 µs for this (a one-off probe,
    `EVALSHA` of the user-state script), a tenth of a request. Only `redis://`
    and `unix://` URLs (`supports`); a `rediss://` one keeps redis-py."""

    def __init__(self, url: str) -> None:
        self.options = parse_url(url)
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    @staticmethod
    def supports(url: str) -> bool:
        return url.startswith(("redis://", "unix://"))

    def script(self, source: str) -> PipelinedScript:
        return PipelinedScript(self, source)

    async def call(self, *args: Arg) -> Any:
        """One command's reply; an error reply raises redis-py's exception for it. A
        connection lost before the reply raises ConnectionError: the caller decides
        whether to try again (reads may; writes should not)."""
        return await self.send(_command(args))

    async def send(self, payload: bytes) -> Any:
        """`call` for a command already encoded (`_command`)."""
        protocol = self._protocol
        if protocol is None or protocol.lost is not None:
            protocol = await self._connected()
        reply = await protocol.send(payload)
        if isinstance(reply, hiredis.ReplyError):
            message = str(reply)
            if message.startswith("NOSCRIPT"):
                raise NoScriptError(message)
            raise ResponseError(message)
        return reply

    async def _connected(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and protocol.lost is None:
            return protocol
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is None or self._protocol.lost is not None:
                self._protocol = await self._open()
            return self._protocol

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        options = self.options
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                if "path" in options:
                    _, protocol = await loop.create_unix_connection(_Protocol, options["path"])
                else:
                    _, protocol = await loop.create_connection(
                        _Protocol, options.get("host", "localhost"), options.get("port", 6379)
                    )
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
        setup: list[tuple[str, list[Arg]]] = []
        if "password" in options:
            user = options.get("username")
            setup.append(("AUTH", [*([user] if user else []), options["password"]]))
        if options.get("db"):
            setup.append(("SELECT", [options["db"]]))
        assert protocol.transport is not None
        try:
            for name, args in setup:
                reply = await protocol.send(_command([name, *args]))
                if isinstance(reply, hiredis.ReplyError):
                    raise ResponseError(f"{name}: {reply}")
        except BaseException:
            # Refused, or the caller gave up waiting (a Redis that accepts connections
            # but does not answer): the socket must not outlive the attempt.
            protocol.transport.close()
            raise
        return protocol

    async def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None


class PipelinedScript:
    """A Lua script called like redis-py's `AsyncScript`: by its SHA1, loaded with
    EVAL when Redis does not have it (after a restart or SCRIPT FLUSH). A call that
    loses its connection is sent once more on a new one: only read-only scripts
    belong here."""

    def __init__(self, connection: PipelinedConnection, source: str) -> None:
        self.connection = connection
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        # Each call's first two bulk strings, encoded once.
        self._evalsha = _command(["EVALSHA", self.sha])[len(b"*2\r\n") :]

    async def __call__(
        self, keys: Sequence[Arg] | None = None, args: Sequence[Arg] | None = None
    ) -> Any:
        keys, args = keys or (), args or ()
        try:
            return await self._run(keys, args)
        except RedisConnectionError:
            return await self._run(keys, args)

    async def _run(self, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        try:
            return await self.connection.send(
                _command([len(keys), *keys, *args], self._evalsha, head_count=2)
            )
        except NoScriptError:
            return await self.connection.call("EVAL", self.source, len(keys), *keys, *args)
