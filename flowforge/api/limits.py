"""Request body size limit: an oversized body is a 413 before anything parses it."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flowforge.api.errors import send_error

MAX_BODY_BYTES = 1_048_576  # 1 MiB: a workflow of 100 steps with 64 KiB configs fits


class BodySizeLimit:
    """Refuse request bodies over `max_bytes` with a 413, before anything parses them.

    A body with a Content-Length is judged by it (the server never delivers
    more than that). A body without one (chunked transfer) is read here up to
    the limit and handed on whole: counting it while the app reads would
    surface mid-parse, where FastAPI turns any error into a 400. A request with
    neither has no body and passes untouched.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is None and b"transfer-encoding" not in headers:
            # No body (RFC 9112, 6.3): nothing to count, and receive() is left
            # untouched for the app (a middleware may replay the request).
            await self.app(scope, receive, send)
            return
        if length is not None:
            try:
                too_large = int(length) > self.max_bytes
            except ValueError:
                too_large = False  # the server rejects a malformed length itself
            if too_large:
                await self._refuse(send)
                return
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away: there is no one to answer
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()  # waits for the disconnect, as the server would
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        await send_error(
            send,
            413,
            "payload_too_large",
            f"The request body is larger than {self.max_bytes} bytes.",
            {"max_bytes": self.max_bytes},
        )
