"""Request body size limit: a pure ASGI middleware that answers 413 before a large
body is read into memory (by its Content-Length, or while it streams in)."""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """`max_bytes` for every path but those `by_path` names (POST /v1/events takes
    batches); the limit that applies is left in the request's state."""

    def __init__(self, app: ASGIApp, max_bytes: int, by_path: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.by_path = by_path or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.by_path.get(scope["path"], self.max_bytes)
        scope.setdefault("state", {})["max_body_bytes"] = limit
        declared = streamed = False
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit():
                if int(value) > limit:
                    await self._refuse(send, limit)
                    return
                declared = True
            elif name in (b"content-length", b"transfer-encoding"):
                streamed = True
        if declared and not streamed:
            # The server reads no more body than a Content-Length within the limit
            # says (uvicorn's parsers frame the request by it), so there is nothing
            # to count: the request goes on untouched, without the two wrappers
            # below (3 µs of a request's floor).
            await self.app(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send, limit)

    async def _refuse(self, send: Send, limit: int) -> None:
        body = orjson.dumps(
            {
                "error": "body_too_large",
                "detail": f"request bodies are limited to {limit} bytes",
            }
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
