"""A fake tool webhook service on a real loopback HTTP server.

Each tool has its own path (`url(name)`) and script (`ToolScript`): how long to take, which status
and body to answer with. A tool can also be held until the test releases it, so "the tool is still
running" is a state the test controls rather than a race against a delay. Every request is recorded
with its headers and decoded JSON body; requests that are not JSON are reported in `problems`.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

WAIT_S = 5.0


@dataclass
class ToolScript:
    """How one tool answers. `body` bytes are sent as they are (garbage included)."""

    status: int = 200
    body: str | bytes = '{"ok": true}'
    content_type: str = "application/json"
    delay_s: float = 0.0  # answer after this long
    held: bool = False  # answer only once `FakeToolServer.release(name)` is called (delay_s unused)
    released: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class ToolRequest:
    tool: str
    method: str
    headers: dict[str, str]
    body: Any  # the decoded JSON body (None when it was not JSON)
    received_at: float  # time.monotonic()


class FakeToolServer:
    def __init__(self) -> None:
        self.scripts: dict[str, ToolScript] = {}
        self.requests: list[ToolRequest] = []
        self.answered: list[str] = []  # tool names, in the order their answers were sent
        self.problems: list[str] = []
        self._changed = asyncio.Condition()
        self._closing = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/tools/{tool}", self._handle)
        self._server = TestServer(app, host="127.0.0.1")

    def url(self, tool: str) -> str:
        return f"http://127.0.0.1:{self._server.port}/tools/{tool}"

    def script(self, tool: str, **options: Any) -> ToolScript:
        """Set how `tool` answers (see ToolScript); returns the script."""
        self.scripts[tool] = ToolScript(**options)
        return self.scripts[tool]

    def release(self, tool: str) -> None:
        """Let a `held` tool answer."""
        self.scripts[tool].released.set()

    async def __aenter__(self) -> FakeToolServer:
        await self._server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing.set()  # slow and held tools answer now, so the server closes at once
        await self._server.close()

    async def _wait(self, condition: Any) -> None:
        async with asyncio.timeout(WAIT_S), self._changed:
            await self._changed.wait_for(condition)

    async def wait_requests(self, count: int = 1) -> list[ToolRequest]:
        """Wait until `count` requests arrived; returns all of them."""
        await self._wait(lambda: len(self.requests) >= count)
        return self.requests

    async def _handle(self, request: web.Request) -> web.Response:
        tool = request.match_info["tool"]
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
            self.problems.append(f"{tool}: request body is not JSON")
        if request.content_type != "application/json":
            self.problems.append(f"{tool}: request sent as {request.content_type}, not application/json")
        async with self._changed:
            self.requests.append(
                ToolRequest(tool, request.method, dict(request.headers), body, time.monotonic())
            )
            self._changed.notify_all()
        script = self.scripts.get(tool, ToolScript())
        if script.held or script.delay_s:
            waits = [asyncio.ensure_future(self._closing.wait())]
            if script.held:
                waits.append(asyncio.ensure_future(script.released.wait()))
            timeout_s = None if script.held else script.delay_s
            try:
                await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waits:
                    waiter.cancel()
        async with self._changed:
            self.answered.append(tool)
            self._changed.notify_all()
        body_bytes = script.body.encode() if isinstance(script.body, str) else script.body
        return web.Response(status=script.status, body=body_bytes, content_type=script.content_type)
