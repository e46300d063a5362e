"""The request guard, a plain ASGI middleware in front of the routes: bearer token, body size limit and a
deadline for the body, each answered with the service's JSON error before the body is parsed.

It is ASGI rather than a FastAPI dependency because dependencies run after the body has been read: a
client without the token, or with an oversized or trickling body, must be stopped while it is still
sending. The routes' own errors (400 from a body that stopped half-way) are replaced by the guard's answer.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Open without a token: the page and its assets hold no data, and load balancers probe health.
PUBLIC_PREFIXES = ("/static/",)
PUBLIC_PATHS = ("/", "/favicon.ico", "/v1/health")


class _Abort(Exception):
    """Raised from ``receive`` to stop the route reading a body the guard refuses."""


def error_body(error: str, fix: str) -> bytes:
    return json.dumps({"error": error, "fix": fix}).encode()


async def send_error(send: Send, status: int, error: str, fix: str, headers: list | None = None) -> None:
    body = error_body(error, fix)
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    head += [(b"connection", b"close")] if status in (408, 413) else []
    await send({"type": "http.response.start", "status": status, "headers": head + (headers or [])})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """``token``: required as ``Authorization: Bearer TOKEN`` outside the public paths (None: open).
    ``max_body``: bytes of one request body (413 beyond). ``body_timeout_s``: the whole body must arrive
    within this many seconds of the request's start (408 otherwise: a slow client cannot hold a worker)."""

    def __init__(self, app: Any, *, token: str | None, max_body: int, body_timeout_s: float) -> None:
        self.app = app
        self.token = token
        self.max_body = max_body
        self.body_timeout_s = body_timeout_s

    def _authorised(self, scope: Scope) -> bool:
        path = scope.get("path", "")
        if self.token is None or path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            return True
        given = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, value = given.partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(value.strip(), self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self._authorised(scope):
            await send_error(
                send, 401, "missing or wrong bearer token", "send the header Authorization: Bearer TOKEN",
                [(b"www-authenticate", b"Bearer")],
            )  # fmt: skip
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await send_error(send, 413, f"request body of {int(declared)} bytes", self._size_fix())
            return
        await self._guarded(scope, receive, send)

    def _size_fix(self) -> str:
        return f"send at most {self.max_body / 2**20:g} MiB per request (downscale the images)"

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s
        state: dict[str, Any] = {"received": 0, "done": False, "fail": None, "started": False}

        async def limited_receive() -> Message:
            if state["done"]:  # body complete: later receives wait for a disconnect, no deadline
                return await receive()
            try:
                msg = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.001))
            except asyncio.TimeoutError:  # builtin TimeoutError only from Python 3.11
                late = f"request body not received within {self.body_timeout_s:g} s"
                state["fail"] = (408, late, "send the whole request promptly (check the client's connection)")
                raise _Abort from None
            if msg["type"] == "http.request":
                state["received"] += len(msg.get("body", b""))
                if state["received"] > self.max_body:
                    state["fail"] = (413, f"request body over {self.max_body} bytes", self._size_fix())
                    raise _Abort
                state["done"] = not msg.get("more_body", False)
            return msg

        async def guarded_send(msg: Message) -> None:
            if state["fail"] is not None:  # the route's answer to an aborted body is replaced by ours
                return
            if msg["type"] == "http.response.start":
                state["started"] = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _Abort:
            pass
        except Exception:
            if state["fail"] is None:
                raise
        if state["fail"] is not None and not state["started"]:
            await send_error(send, *state["fail"])
