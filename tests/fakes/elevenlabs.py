"""A fake ElevenLabs Conversational AI API on real loopback sockets (protocols.md §E).

It serves the signed-URL endpoint of private agents and the conversation WebSocket. Every client
message is validated against §E.2, narrowed to the overrides the gateway may set; problems are
collected in `FakeElevenLabsServer.problems` for the test to assert empty. Tests script the agent side
through the `FakeElevenLabsConnection` of each conversation.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import secrets
from typing import Any
from urllib.parse import urlencode

from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

WAIT_S = 5.0
PATH = "/v1/convai/conversation"
USER_AUDIO_CHUNK = "user_audio_chunk"  # the kind under which the untyped audio messages are recorded

CLIENT_DATA_KEYS = {
    "type",
    "conversation_config_override",
    "custom_llm_extra_body",
    "dynamic_variables",
    "user_id",
    "source_info",
}
# The subset of §E.2's override tree the gateway may set; each leaf is a string.
OVERRIDE_TREE: dict[str, Any] = {
    "agent": {"first_message": str, "language": str, "prompt": {"prompt": str}},
    "tts": {"voice_id": str},
}
SOURCE_INFO_KEYS = {"source", "version"}
# Client messages whose full shape §E.2 shows: type -> (required keys, optional keys).
MESSAGE_KEYS: dict[str, tuple[set[str], set[str]]] = {
    "pong": ({"type", "event_id"}, set()),
    "client_tool_result": ({"type", "tool_call_id", "result"}, {"is_error"}),
    "contextual_update": ({"type", "text"}, set()),
    "user_message": ({"type", "text"}, set()),
    "user_activity": ({"type"}, set()),
}
FIELD_TYPES: dict[str, type] = {"tool_call_id": str, "result": str, "is_error": bool, "text": str}


def _error(status: str, message: str) -> dict[str, Any]:
    # FastAPI-style error body; the exact error payloads are not in §E and are UNCONFIRMED.
    return {"detail": {"status": status, "message": message}}


def _check_tree(value: Any, tree: dict[str, Any], where: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{where} is {type(value).__name__}, not an object"]
    problems: list[str] = []
    for key, item in value.items():
        if key not in tree:
            problems.append(f"{where}.{key} is not an override the gateway may set")
        elif isinstance(tree[key], dict):
            problems += _check_tree(item, tree[key], f"{where}.{key}")
        elif not isinstance(item, tree[key]):
            problems.append(f"{where}.{key} is {type(item).__name__}, not {tree[key].__name__}")
    return problems


def check_client_data(message: dict[str, Any]) -> list[str]:
    """Problems with one `conversation_initiation_client_data` message (§E.2)."""
    where = "conversation_initiation_client_data"
    problems = [f"{where}: unexpected key {key!r}" for key in sorted(set(message) - CLIENT_DATA_KEYS)]
    if "conversation_config_override" in message:
        problems += [
            f"{where}: {p}"
            for p in _check_tree(message["conversation_config_override"], OVERRIDE_TREE, "override")
        ]
    if "custom_llm_extra_body" in message and not isinstance(message["custom_llm_extra_body"], dict):
        problems.append(f"{where}: custom_llm_extra_body is not an object")
    if "dynamic_variables" in message:
        variables = message["dynamic_variables"]
        if not isinstance(variables, dict):
            problems.append(f"{where}: dynamic_variables is not an object")
        else:
            problems += [
                f"{where}: dynamic variable {name!r} is {type(value).__name__}, not str/int/float/bool"
                for name, value in variables.items()
                if not isinstance(value, str | int | float | bool)
            ]
    if "user_id" in message and not isinstance(message["user_id"], str):
        problems.append(f"{where}: user_id is not a string")
    if "source_info" in message:
        source_info = message["source_info"]
        if not isinstance(source_info, dict) or not set(source_info) <= SOURCE_INFO_KEYS:
            problems.append(f"{where}: source_info must be an object of {sorted(SOURCE_INFO_KEYS)}")
    return problems


def message_kind(message: dict[str, Any]) -> str | None:
    """`type`, or "user_audio_chunk" for the one client message that has no type (§E.2)."""
    if "type" in message:
        return str(message["type"])
    return USER_AUDIO_CHUNK if USER_AUDIO_CHUNK in message else None


class FakeElevenLabsConnection:
    """The agent end of one conversation socket."""

    def __init__(
        self,
        server: FakeElevenLabsServer,
        ws: web.WebSocketResponse,
        request: web.Request,
        conversation_id: str,
    ) -> None:
        self.server = server
        self.ws = ws
        self.headers = dict(request.headers)
        self.query = dict(request.query)
        self.signature = request.query.get("conversation_signature")
        self.public = server.api_key is None  # False: opened with a signed URL of a private agent
        self.conversation_id = conversation_id
        self.received: list[dict[str, Any]] = []
        self.audio_in = bytearray()  # decoded user_audio_chunk payloads
        self.client_data: dict[str, Any] | None = None  # the conversation_initiation_client_data message
        self.outstanding_pings: set[int] = set()  # event ids of pings sent and not yet ponged
        self._changed = asyncio.Condition()
        self.closed = asyncio.Event()
        self.close_code: int | None = None  # whoever closed first chose it

    # -- what the gateway sent ------------------------------------------------------------------

    def _problem(self, text: str) -> None:
        self.server.problems.append(f"{self.conversation_id}: {text}")

    def _check(self, message: dict[str, Any], kind: str | None) -> None:
        if not self.received and kind != "conversation_initiation_client_data":
            self._problem(f"first message is {kind!r}, not conversation_initiation_client_data")
        if kind == "conversation_initiation_client_data":
            if self.client_data is not None:
                self._problem("conversation_initiation_client_data sent twice")
            for problem in check_client_data(message):
                self._problem(problem)
        elif kind == USER_AUDIO_CHUNK:
            if set(message) != {USER_AUDIO_CHUNK}:
                self._problem(f"user_audio_chunk message keys {sorted(message)} != ['user_audio_chunk']")
            try:
                self.audio_in += base64.b64decode(message[USER_AUDIO_CHUNK], validate=True)
            except (TypeError, ValueError):  # ValueError: binascii.Error, or non-ASCII text
                self._problem("user_audio_chunk is not a base64 string")
        elif kind in MESSAGE_KEYS:
            self._check_shape(message, kind)
        else:
            # Includes `feedback` and `multimodal_message`: the SDK defines them but §E.2 shows no
            # shape, so the gateway must not send them.
            self._problem(f"unknown client message type {kind!r}")

    def _check_shape(self, message: dict[str, Any], kind: str) -> None:
        required, optional = MESSAGE_KEYS[kind]
        if not required <= set(message) <= required | optional:
            self._problem(f"{kind} keys {sorted(message)}: required {sorted(required)}")
        elif kind == "pong":
            self._check_pong(message["event_id"])
        for key, value in message.items():
            if key in FIELD_TYPES and not isinstance(value, FIELD_TYPES[key]):
                self._problem(f"{kind}.{key} is {type(value).__name__}, not {FIELD_TYPES[key].__name__}")

    def _check_pong(self, event_id: Any) -> None:
        if not isinstance(event_id, int) or isinstance(event_id, bool):
            self._problem(f"pong event_id {event_id!r} is not an integer")
        elif event_id not in self.outstanding_pings:
            self._problem(f"pong for event_id {event_id}, which no outstanding ping has")
        else:
            self.outstanding_pings.discard(event_id)

    async def _record(self, message: dict[str, Any]) -> None:
        kind = message_kind(message)
        self._check(message, kind)
        async with self._changed:
            self.received.append(message)
            self._changed.notify_all()
        if kind == "conversation_initiation_client_data" and self.client_data is None:
            self.client_data = message
            await self.send(
                {
                    "type": "conversation_initiation_metadata",
                    "conversation_initiation_metadata_event": {
                        "conversation_id": self.conversation_id,
                        "agent_output_audio_format": self.server.output_format,
                        "user_input_audio_format": self.server.input_format,
                    },
                }
            )

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        """Messages of `kind`: their `type`, or "user_audio_chunk" for the untyped audio messages."""
        return [m for m in self.received if message_kind(m) == kind]

    async def wait_for(self, kind: str, count: int = 1) -> list[dict[str, Any]]:
        """Wait until `count` messages of `kind` arrived; returns them."""
        async with asyncio.timeout(WAIT_S), self._changed:
            await self._changed.wait_for(lambda: len(self.of_type(kind)) >= count)
        return self.of_type(kind)

    async def wait_audio(self, nbytes: int) -> None:
        """Wait until at least `nbytes` of caller audio arrived."""
        async with asyncio.timeout(WAIT_S), self._changed:
            await self._changed.wait_for(lambda: len(self.audio_in) >= nbytes)

    async def wait_pong(self, event_id: int) -> dict[str, Any]:
        """Wait for the pong answering ping `event_id`; returns it."""

        def pongs() -> list[dict[str, Any]]:
            return [m for m in self.of_type("pong") if m.get("event_id") == event_id]

        async with asyncio.timeout(WAIT_S), self._changed:
            await self._changed.wait_for(pongs)
        return pongs()[0]

    # -- scripting the agent side ---------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        """Send `message` as it is: ElevenLabs server messages carry no envelope to fill in."""
        await self.ws.send_str(json.dumps(message))

    async def audio(self, audio: bytes, event_id: int) -> None:
        await self.send(
            {
                "type": "audio",
                "audio_event": {"audio_base_64": base64.b64encode(audio).decode(), "event_id": event_id},
            }
        )

    async def interruption(self, event_id: int) -> None:
        await self.send({"type": "interruption", "interruption_event": {"event_id": event_id}})

    async def ping(self, event_id: int, ping_ms: int = 50) -> None:
        # Outstanding before sending: the pong may be read before send() returns.
        self.outstanding_pings.add(event_id)
        await self.send({"type": "ping", "ping_event": {"event_id": event_id, "ping_ms": ping_ms}})

    async def agent_response(self, text: str) -> None:
        await self.send({"type": "agent_response", "agent_response_event": {"agent_response": text}})

    async def user_transcript(self, text: str) -> None:
        await self.send({"type": "user_transcript", "user_transcription_event": {"user_transcript": text}})

    async def client_error(self, message: str) -> None:
        # `client_error` is a listed client event (§E.3) but its payload shape is UNCONFIRMED; this
        # shape follows the `<type>: {...}` pattern of the others. Gateways should read it defensively.
        await self.send({"type": "client_error", "client_error": {"message": message}})

    async def close(self, code: int = 1000) -> None:
        self.close_code = code  # ws.close_code would be the code the client echoes back
        await self.ws.close(code=code)


class FakeElevenLabsServer:
    """Serves the signed-URL endpoint and the conversation socket of one agent.

    With `api_key` set the agent is private: sockets need a signed URL, each signature used once.
    With `api_key=None` it is public: sockets open with only `?agent_id=`.
    """

    def __init__(
        self,
        *,
        api_key: str | None = "xi-test",
        agent_id: str = "agent_test",
        input_format: str = "ulaw_8000",
        output_format: str = "ulaw_8000",
        refuse_with: int | None = None,
    ) -> None:
        self.api_key = api_key
        self.agent_id = agent_id
        self.input_format = input_format
        self.output_format = output_format
        self.refuse_with = refuse_with  # answer the upgrade with this HTTP status instead
        self.problems: list[str] = []
        self.refused: list[str] = []  # why each upgrade was refused; tests provoke these on purpose
        self.signed_url_requests = 0
        self.issued_signatures: list[str] = []
        self.used_signatures: set[str] = set()
        self.connections: asyncio.Queue[FakeElevenLabsConnection] = asyncio.Queue()
        self.all_connections: list[FakeElevenLabsConnection] = []
        self._conversation_ids = itertools.count(1)
        app = web.Application()
        app.router.add_get(PATH + "/get-signed-url", self._signed_url)
        app.router.add_get(PATH, self._handle)
        self._server = TestServer(app, host="127.0.0.1")

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self._server.port}{PATH}"

    async def __aenter__(self) -> FakeElevenLabsServer:
        await self._server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._server.close()

    async def next_connection(self) -> FakeElevenLabsConnection:
        async with asyncio.timeout(WAIT_S):
            return await self.connections.get()

    async def _signed_url(self, request: web.Request) -> web.Response:
        self.signed_url_requests += 1
        if self.api_key is None:
            self.problems.append("signed URL requested for a public agent (no API key configured)")
            return web.json_response(_error("invalid_api_key", "Invalid API key"), status=401)
        if request.headers.get("xi-api-key") != self.api_key:
            self.problems.append("signed URL: wrong or missing xi-api-key header")
            return web.json_response(_error("invalid_api_key", "Invalid API key"), status=401)
        agent_id = request.query.get("agent_id")
        if not agent_id:
            self.problems.append("signed URL: no ?agent_id=")
            return web.json_response(_error("invalid_request", "agent_id is required"), status=422)
        if agent_id != self.agent_id:
            return web.json_response(_error("agent_not_found", "Agent not found"), status=404)
        signature = secrets.token_urlsafe(24)
        self.issued_signatures.append(signature)
        query = urlencode({"agent_id": agent_id, "conversation_signature": signature})
        return web.json_response({"signed_url": f"{self.ws_url}?{query}"})

    def _refusal(self, request: web.Request) -> str | None:
        if request.query.get("agent_id") != self.agent_id:
            return f"agent_id {request.query.get('agent_id')!r} is not {self.agent_id!r}"
        if self.api_key is None:
            return None
        signature = request.query.get("conversation_signature")
        if signature is None:
            return "private agent: no conversation_signature"
        if signature not in self.issued_signatures:
            return "conversation_signature was never issued"
        if signature in self.used_signatures:
            return "conversation_signature already used"
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.refuse_with is not None:
            self.refused.append(f"refuse_with {self.refuse_with}")
            return web.Response(status=self.refuse_with, text="refused")
        reason = self._refusal(request)
        if reason is not None:
            self.refused.append(reason)
            return web.json_response(_error("forbidden", reason), status=403)
        if self.api_key is not None:
            self.used_signatures.add(request.query["conversation_signature"])
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        conn = FakeElevenLabsConnection(self, ws, request, f"conv_{next(self._conversation_ids)}")
        self.all_connections.append(conn)
        await self.connections.put(conn)
        try:
            async for message in ws:
                if message.type == WSMsgType.ERROR:
                    break
                if message.type != WSMsgType.TEXT:
                    conn._problem(f"non-text frame {message.type.name}")
                    continue
                try:
                    parsed = json.loads(message.data)
                except json.JSONDecodeError:
                    conn._problem("text frame is not JSON")
                    continue
                if not isinstance(parsed, dict):
                    conn._problem("message is not a JSON object")
                    continue
                await conn._record(parsed)
        finally:
            if conn.close_code is None:
                conn.close_code = ws.close_code
            conn.closed.set()
        return ws
