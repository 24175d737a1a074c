"""A request body limit, applied before anything reads or parses the body.

FastAPI reads a JSON body whole and parses it before the endpoint (and its token check, and
``max_batch``) runs, so without this a client could make the process hold any amount of memory.
The limit is an ASGI middleware rather than a route dependency for that reason: it sees the
body as it arrives and stops at the limit.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .models import Problem


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB" if n >= 1024 * 1024 else f"{n} bytes"


class BodyLimit:
    """Answer 413 to a body over ``max_bytes``: at once when Content-Length says so, otherwise
    (a chunked body) as soon as the bytes received pass the limit. At most ``max_bytes`` are
    held; the app then gets the body as if it had just arrived."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                break
        if declared is not None and declared < 0:
            await self._refuse(scope, receive, send, 400,
                               "the Content-Length header is not a byte count")
            return
        if declared is not None and declared > self.max_bytes:
            await self._too_large(scope, receive, send, f"{_mib(declared)} declared")
            return
        if declared == 0 or (declared is None and not _may_have_body(scope)):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                # The client went away: let the app see that, as it would have.
                await self.app(scope, _replay([message], receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send, "more was sent")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, seen: str) -> None:
        await self._refuse(
            scope, receive, send, 413,
            f"the request body is over the {_mib(self.max_bytes)} limit ({seen}; "
            "SKIPLOCK_API_MAX_BODY_BYTES): send fewer jobs per batch, or keep large data "
            "elsewhere and pass its key in args")

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int,
                      message: str) -> None:
        # Connection: close, so the server does not read the rest of the body to reuse the
        # connection.
        response = JSONResponse(Problem(error=message, fields=[]).model_dump(),
                                status_code=status, headers={"Connection": "close"})
        await response(scope, receive, send)


def _may_have_body(scope: Scope) -> bool:
    """No Content-Length: a body only if it is chunked (HTTP/1.1) or the protocol streams."""
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding" and b"chunked" in value.lower():
            return True
    return scope.get("http_version") not in ("1.0", "1.1")


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
