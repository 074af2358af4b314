"""A cap on request bodies, applied while they stream in (before uploads are spooled to disk)."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import problem

FORM_OVERHEAD = 1024 * 1024  # room for the form fields and multipart framing around a photo


class _BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Answer 413 (a problem body) to any request whose body is over `max_bytes`.

    A declared Content-Length over the cap is refused before reading anything; a body that
    streams past the cap stops being read, and whatever the app answered is replaced by the
    413 (the app only sees a body it could not parse).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0
        overflow = False

        async def limited_receive() -> Message:
            nonlocal received, overflow
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    overflow = True
                    raise _BodyTooLarge
            return message

        refused = False

        async def guarded_send(message: Message) -> None:
            nonlocal refused
            if not overflow:
                await send(message)
            elif not refused:  # the app's answer to a cut-off body: send the 413 instead
                refused = True
                await self._refuse(scope, receive, send)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            if not refused:
                await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"the request body is over the limit of {self.max_bytes} bytes"
        await problem(413, detail, "request_too_large")(scope, receive, send)
