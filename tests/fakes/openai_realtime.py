"""A fake OpenAI Realtime server (beta or GA dialect) on a real loopback WebSocket.

Every client event it receives is validated against the `openai` SDK types of its dialect (no extra
keys); problems are collected in `FakeRealtimeServer.problems` for the test to assert empty. Tests
script the server side through the `FakeRealtimeConnection` of each call.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
from typing import Any, Literal

from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from tests.fakes.openai_validation import Dialect, validate_client_event

WAIT_S = 5.0
_ids = itertools.count(1)


def _id(prefix: str) -> str:
    return f"{prefix}_{next(_ids)}"


class FakeRealtimeConnection:
    """The server end of one model socket."""

    def __init__(self, server: FakeRealtimeServer, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.server = server
        # A server in "auto" mode (hand-off tests) speaks each connection's own dialect, told apart
        # by the OpenAI-Beta header.
        self.dialect: Dialect = (
            server.dialect
            if server.dialect != "auto"
            else ("beta" if request.headers.get("OpenAI-Beta") == "realtime=v1" else "ga")
        )
        self.ws = ws
        self._transport = request.transport
        self.headers = dict(request.headers)
        self.model = request.query.get("model")
        self.received: list[dict[str, Any]] = []
        self.audio_in = bytearray()  # decoded input_audio_buffer.append payloads
        self._changed = asyncio.Condition()
        self.closed = asyncio.Event()

    # -- what the gateway sent ------------------------------------------------------------------

    async def _record(self, event: dict[str, Any]) -> None:
        self.server.problems += validate_client_event(event, self.dialect)
        if event.get("type") == "input_audio_buffer.append":
            self.audio_in += base64.b64decode(event["audio"])
        async with self._changed:
            self.received.append(event)
            self._changed.notify_all()

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.received if e.get("type") == kind]

    def system_notes(self) -> list[str]:
        """The text of each system message the gateway added, in order: what it asked the agent to say
        (greeting, check-ins, goodbyes, carrying on after a reconnect) and replayed tool notes."""
        return [
            part["text"]
            for event in self.of_type("conversation.item.create")
            if event["item"].get("type") == "message" and event["item"].get("role") == "system"
            for part in event["item"]["content"]
        ]

    async def wait_for(self, kind: str, count: int = 1) -> list[dict[str, Any]]:
        """Wait until `count` events of `kind` arrived; returns them."""
        async with asyncio.timeout(WAIT_S), self._changed:
            await self._changed.wait_for(lambda: len(self.of_type(kind)) >= count)
        return self.of_type(kind)

    async def wait_audio(self, nbytes: int) -> None:
        """Wait until at least `nbytes` of caller audio arrived."""
        async with asyncio.timeout(WAIT_S), self._changed:
            await self._changed.wait_for(lambda: len(self.audio_in) >= nbytes)

    # -- scripting the server side --------------------------------------------------------------

    async def send(self, event: dict[str, Any]) -> None:
        event.setdefault("event_id", _id("event"))
        await self.ws.send_str(json.dumps(event))

    def _audio_name(self, suffix: str) -> str:
        return f"response.output_audio.{suffix}" if self.dialect == "ga" else f"response.audio.{suffix}"

    async def response_created(self, response_id: str) -> None:
        await self.send(
            {
                "type": "response.created",
                "response": {
                    "id": response_id,
                    "object": "realtime.response",
                    "status": "in_progress",
                    "output": [],
                },
            }
        )

    async def audio_delta(
        self, response_id: str, item_id: str, audio: bytes, *, name: str | None = None
    ) -> None:
        await self.send(
            {
                "type": name or self._audio_name("delta"),
                "response_id": response_id,
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                "delta": base64.b64encode(audio).decode(),
            }
        )

    async def audio_done(self, response_id: str, item_id: str) -> None:
        await self.send(
            {
                "type": self._audio_name("done"),
                "response_id": response_id,
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
            }
        )

    async def response_done(
        self, response_id: str, status: str = "completed", usage: dict[str, Any] | None = None
    ) -> None:
        response: dict[str, Any] = {
            "id": response_id,
            "object": "realtime.response",
            "status": status,
            "output": [],
        }
        if usage is not None:
            response["usage"] = usage
        await self.send({"type": "response.done", "response": response})

    async def speech_stopped(self, item_id: str = "item_caller", audio_end_ms: int = 0) -> None:
        await self.send(
            {"type": "input_audio_buffer.speech_stopped", "item_id": item_id, "audio_end_ms": audio_end_ms}
        )

    async def transcription_completed(self, usage: dict[str, Any], item_id: str = "item_caller") -> None:
        await self.send(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": item_id,
                "content_index": 0,
                "transcript": "(caller words)",
                "usage": usage,
            }
        )

    async def speak(
        self, audio: bytes, *, chunk_bytes: int, response_id: str | None = None, item_id: str | None = None
    ) -> tuple[str, str]:
        """A whole response: created, audio deltas of `chunk_bytes`, audio done, response done."""
        response_id = response_id or _id("resp")
        item_id = item_id or _id("item")
        await self.response_created(response_id)
        for offset in range(0, len(audio), chunk_bytes):
            await self.audio_delta(response_id, item_id, audio[offset : offset + chunk_bytes])
        await self.audio_done(response_id, item_id)
        await self.response_done(response_id)
        return response_id, item_id

    async def speech_started(self, item_id: str = "item_caller", audio_start_ms: int = 0) -> None:
        await self.send(
            {
                "type": "input_audio_buffer.speech_started",
                "item_id": item_id,
                "audio_start_ms": audio_start_ms,
            }
        )

    async def function_call(
        self,
        call_id: str,
        name: str,
        arguments: str,
        *,
        response_id: str | None = None,
        item_id: str | None = None,
        status: str = "completed",
        streamed: bool = False,
    ) -> None:
        """`response.output_item.done` with a `function_call` item (§B.5 step 1).

        `status="incomplete"` is a call cut short (its `arguments` may be a fragment). With
        `streamed=True` the item's `output_item.added`, one `function_call_arguments.delta` and
        `function_call_arguments.done` come first, as the server streams them.
        """
        response_id = response_id or _id("resp")
        item: dict[str, Any] = {
            "id": item_id or _id("item"),
            "object": "realtime.item",
            "type": "function_call",
            "status": status,
            "call_id": call_id,
            "name": name,
            "arguments": arguments,
        }
        where = {"response_id": response_id, "output_index": 0}
        if streamed:
            added = {**item, "status": "in_progress", "arguments": ""}
            await self.send({"type": "response.output_item.added", **where, "item": added})
            ids = {**where, "item_id": item["id"], "call_id": call_id}
            await self.send({"type": "response.function_call_arguments.delta", **ids, "delta": arguments})
            done = {**ids, "arguments": arguments, **({"name": name} if self.dialect == "ga" else {})}
            await self.send({"type": "response.function_call_arguments.done", **done})
        await self.send({"type": "response.output_item.done", **where, "item": item})

    async def agent_transcript(self, text: str, *, response_id: str, item_id: str) -> None:
        """The transcript of an agent audio item, in the dialect's spelling."""
        await self.send(
            {
                "type": "response.output_audio_transcript.done"
                if self.dialect == "ga"
                else "response.audio_transcript.done",
                "response_id": response_id,
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                "transcript": text,
            }
        )

    async def error(self, code: str, message: str = "fake error") -> None:
        await self.send(
            {"type": "error", "error": {"type": "invalid_request_error", "code": code, "message": message}}
        )

    async def close(self, code: int = 1000, message: str = "") -> None:
        await self.ws.close(code=code, message=message.encode())

    def drop(self) -> None:
        """The connection dies without a close frame (a crashed server, a cut network path): RST."""
        assert self._transport is not None
        self._transport.abort()


class FakeRealtimeServer:
    """Serves `/v1/realtime`; one FakeRealtimeConnection per accepted socket."""

    def __init__(self, dialect: Dialect | Literal["auto"], *, api_key: str = "sk-test") -> None:
        self.dialect = dialect
        self.api_key = api_key
        self.problems: list[str] = []
        self.connections: asyncio.Queue[FakeRealtimeConnection] = asyncio.Queue()
        self.all_connections: list[FakeRealtimeConnection] = []
        self.refuse_with: int | None = None  # answer the upgrade with this HTTP status instead
        self.refused: list[int] = []  # the status of each upgrade refused with `refuse_with`
        self.upgrades = 0  # upgrade requests received, refused or not
        self._hold: asyncio.Event | None = None
        self._upgraded = asyncio.Condition()
        app = web.Application()
        app.router.add_get("/v1/realtime", self._handle)
        self._server = TestServer(app, host="127.0.0.1")

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self._server.port}/v1/realtime"

    async def __aenter__(self) -> FakeRealtimeServer:
        await self._server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._server.close()

    async def next_connection(self) -> FakeRealtimeConnection:
        async with asyncio.timeout(WAIT_S):
            return await self.connections.get()

    def hold_upgrades(self) -> asyncio.Event:
        """Keep upgrade requests waiting (a slow handshake) until the returned event is set."""
        self._hold = asyncio.Event()
        return self._hold

    async def wait_upgrades(self, count: int) -> None:
        """Wait until `count` upgrade requests arrived (held, refused or accepted)."""
        async with asyncio.timeout(WAIT_S), self._upgraded:
            await self._upgraded.wait_for(lambda: self.upgrades >= count)

    def _check_handshake(self, request: web.Request) -> None:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            self.problems.append("handshake: wrong or missing Authorization header")
        beta_header = request.headers.get("OpenAI-Beta")
        if self.dialect == "auto":
            pass
        elif self.dialect == "beta" and beta_header != "realtime=v1":
            self.problems.append("handshake: beta dialect without OpenAI-Beta: realtime=v1")
        if self.dialect == "ga" and beta_header is not None:
            self.problems.append("handshake: GA dialect must not send OpenAI-Beta")
        if not request.query.get("model"):
            self.problems.append("handshake: no ?model=")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        async with self._upgraded:
            self.upgrades += 1
            self._upgraded.notify_all()
        if self._hold is not None:
            await self._hold.wait()
        if self.refuse_with is not None:
            self.refused.append(self.refuse_with)
            return web.Response(status=self.refuse_with, text="refused")
        self._check_handshake(request)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        conn = FakeRealtimeConnection(self, ws, request)
        self.all_connections.append(conn)
        await conn.send(
            {"type": "session.created", "session": {"id": _id("sess"), "object": "realtime.session"}}
        )
        await self.connections.put(conn)
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    event = json.loads(message.data)
                    await conn._record(event)
                    if event.get("type") == "session.update":
                        await conn.send({"type": "session.updated", "session": event.get("session", {})})
        finally:
            conn.closed.set()
        return ws
