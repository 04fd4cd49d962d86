"""OpenAI Realtime over WebSocket, in both wire dialects (protocols.md §A beta, §B GA).

A dialect object builds the client events in its shape; server events from either dialect are mapped
to the bridge's event set at the edge, accepting both spellings of the audio events (§B.4: some GA
sessions were reported to emit the beta names).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, ClassVar

import aiohttp
import structlog
from yarl import URL

from gateway import fastws
from gateway.audio import PCM_24K, AudioFormat
from gateway.config import OpenAIAgentConfig, OpenAIConfig, SemanticVad
from gateway.engines.base import (
    MODEL_MAX_MESSAGE_BYTES,
    AudioDelta,
    BadFrame,
    EngineEvent,
    ResponseDone,
    ResponseStarted,
    Turn,
)
from gateway.engines.openai_events import (
    SESSION_UPDATE_EVENT_ID,
    fast_audio_delta,
    parse_server_message,
)
from gateway.engines.replay import openai_items
from gateway.errors import EngineError
from gateway.frames import socket_error_reason
from gateway.tools import function_specs

log = structlog.get_logger("gateway.openai")

CONNECT_TIMEOUT_S = 10.0
# A dead peer that stops reading would otherwise block sends until max_call_duration_s.
HEARTBEAT_S = 15.0


def _add_tools(session: dict[str, Any], agent: OpenAIAgentConfig) -> None:
    if agent.tools:
        session["tools"] = function_specs(agent.tools)
        session["tool_choice"] = "auto"


def handoff_instructions(context: str, first_message: str | None) -> str:
    greeting = (
        f"Greet them by saying: {first_message}"
        if first_message
        else "Greet them briefly, say you are taking over, and carry on."
    )
    return f"You are taking over a phone call from a colleague. What happened so far: {context}\n{greeting}"


def first_message_instructions(text: str) -> str:
    return f"Greet the caller by saying exactly the following, word for word, and nothing else: {text}"


def _turn_detection(agent: OpenAIAgentConfig) -> dict[str, Any]:
    td = agent.turn_detection
    shape: dict[str, Any] = td.model_dump()
    if isinstance(td, SemanticVad):
        shape = {"type": td.type, "eagerness": td.eagerness}
    # The gateway relies on the server to answer turns and to stop talking when interrupted.
    shape.update(create_response=True, interrupt_response=True)
    return shape


class BetaDialect:
    """`OpenAI-Beta: realtime=v1`: flat session fields, `response.audio.*` events (§A)."""

    engine: ClassVar[str] = "openai_realtime"
    headers: ClassVar[dict[str, str]] = {"OpenAI-Beta": "realtime=v1"}
    assistant_text: ClassVar[str] = "text"  # the content part type of an assistant message (§A.3)

    @staticmethod
    def session_update(agent: OpenAIAgentConfig, fmt: AudioFormat) -> dict[str, Any]:
        wire_format = {"pcm16": "pcm16", "ulaw": "g711_ulaw", "alaw": "g711_alaw"}[fmt.encoding]
        session: dict[str, Any] = {
            "modalities": ["audio", "text"],
            "voice": agent.voice,
            "input_audio_format": wire_format,
            "output_audio_format": wire_format,
            "turn_detection": _turn_detection(agent),
        }
        if agent.prompt:
            session["instructions"] = agent.prompt
        if agent.input_audio_transcription_model:
            session["input_audio_transcription"] = {"model": agent.input_audio_transcription_model}
        _add_tools(session, agent)
        return {"type": "session.update", "event_id": SESSION_UPDATE_EVENT_ID, "session": session}


class GADialect:
    """The GA shape: `session.type`, nested `audio.input/output` with MIME formats (§B.2)."""

    engine: ClassVar[str] = "openai_realtime_2"
    headers: ClassVar[dict[str, str]] = {}
    assistant_text: ClassVar[str] = "output_text"  # §B.3: GA assistant parts are output_text/audio

    @staticmethod
    def session_update(agent: OpenAIAgentConfig, fmt: AudioFormat) -> dict[str, Any]:
        # pcmu/pcma carry no rate: the server rejects it as an unknown parameter (§F gotchas).
        formats: dict[str, dict[str, Any]] = {
            "pcm16": {"type": "audio/pcm", "rate": 24000},
            "ulaw": {"type": "audio/pcmu"},
            "alaw": {"type": "audio/pcma"},
        }
        wire_format = formats[fmt.encoding]
        audio_in: dict[str, Any] = {"format": wire_format, "turn_detection": _turn_detection(agent)}
        if agent.input_audio_transcription_model:
            audio_in["transcription"] = {"model": agent.input_audio_transcription_model}
        session: dict[str, Any] = {
            "type": "realtime",
            "model": agent.resolved_model,
            "output_modalities": ["audio"],
            "audio": {"input": audio_in, "output": {"format": dict(wire_format), "voice": agent.voice}},
        }
        if agent.prompt:
            session["instructions"] = agent.prompt
        if agent.reasoning_effort is not None:
            session["reasoning"] = {"effort": agent.reasoning_effort}
        _add_tools(session, agent)
        return {"type": "session.update", "event_id": SESSION_UPDATE_EVENT_ID, "session": session}


Dialect = type[BetaDialect] | type[GADialect]
DIALECTS: dict[str, Dialect] = {"openai_realtime": BetaDialect, "openai_realtime_2": GADialect}


_SOCKET_DONE = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)


class OpenAIRealtimeSession:
    """One call's model socket. Not shared between calls."""

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        dialect: Dialect,
        agent: OpenAIAgentConfig,
        carrier_format: AudioFormat,
    ) -> None:
        self._ws = ws
        self._dialect = dialect
        self._agent = agent
        # g711 mode: the model hears and speaks the carrier's own G.711 law, so nothing is transcoded.
        self.input_format = self.output_format = PCM_24K if agent.audio == "pcm24k" else carrier_format
        self._response_active = False
        # Appends are the hot path: only the payload changes, so the rest is serialised once.
        self._append_prefix = '{"type":"input_audio_buffer.append","audio":"'
        self._direct = fastws.writer(ws)

    async def _send_text(self, text: str) -> None:
        # A closing socket is reported once, by events() ending; sends to it are dropped, never queued.
        if self._ws.closed:
            return
        with contextlib.suppress(ConnectionResetError):
            await self._ws.send_str(text)

    async def _send(self, event: dict[str, Any]) -> None:
        await self._send_text(json.dumps(event))

    async def start(self, context: str | None = None) -> None:
        await self._send(self._dialect.session_update(self._agent, self.input_format))
        if context is not None:
            await self.say(handoff_instructions(context, self._agent.first_message))
        elif self._agent.first_message:
            await self.say(first_message_instructions(self._agent.first_message))

    async def resume(self, turns: Sequence[Turn], instructions: str | None) -> None:
        await self._send(self._dialect.session_update(self._agent, self.input_format))
        for item in openai_items(turns, self._dialect.assistant_text):
            await self._send({"type": "conversation.item.create", "item": item})
        if instructions is not None:
            await self.say(instructions)

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code

    async def say(self, instructions: str) -> None:
        # A system message, then a plain response.create. `response.instructions` would replace the
        # session's instructions (the agent's prompt) for that response (§A.3, §B.3): the greeting, a
        # check-in or the answer after a reconnect would be given without the agent's persona,
        # language and rules. System content is `input_text` in both dialects.
        content = [{"type": "input_text", "text": instructions}]
        item = {"type": "message", "role": "system", "content": content}
        await self._send({"type": "conversation.item.create", "item": item})
        await self._send({"type": "response.create"})

    async def send_tool_result(self, call_id: str, output: str, is_error: bool) -> None:
        # The output text itself says whether it is an error ({"error": ...}); the item has no flag.
        item = {"type": "function_call_output", "call_id": call_id, "output": output}
        await self._send({"type": "conversation.item.create", "item": item})
        await self._send({"type": "response.create"})

    async def send_user_text(self, text: str) -> None:
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
        await self._send({"type": "conversation.item.create", "item": item})
        await self._send({"type": "response.create"})

    async def send_audio(self, audio_b64: str) -> None:
        await self._send_text(self._append_prefix + audio_b64 + '"}')

    def audio_writer(self) -> Callable[[str], None] | None:
        direct = self._direct
        return self._write_audio if direct is not None and direct.ready() else None

    def _write_audio(self, audio_b64: str) -> None:
        assert self._direct is not None
        self._direct.write((self._append_prefix + audio_b64 + '"}',))

    def tap_audio(self, take: Callable[[AudioDelta], bool]) -> bool:
        def offer(text: str) -> bool:
            event = fast_audio_delta(text)
            return event is not None and take(event)

        return fastws.tap(self._ws, offer, MODEL_MAX_MESSAGE_BYTES) is not None

    async def cancel_response(self) -> None:
        # response.cancel with nothing in flight only earns an error event, so send it only when needed.
        if self._response_active:
            self._response_active = False
            await self._send({"type": "response.cancel"})

    async def truncate(self, item_id: str, audio_end_ms: int) -> None:
        await self._send(
            {
                "type": "conversation.item.truncate",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": audio_end_ms,
            }
        )

    async def events(self) -> AsyncIterator[EngineEvent]:
        while True:
            message = await self._ws.receive()
            if message.type in _SOCKET_DONE:
                break
            event: EngineEvent | None = None
            if message.type == aiohttp.WSMsgType.TEXT:
                event = parse_server_message(message.data)
            elif message.type == aiohttp.WSMsgType.BINARY:
                event = BadFrame("binary")
            elif message.type == aiohttp.WSMsgType.ERROR:
                # The socket is closed after this; a message over the size limit is the peer's fault.
                reason = socket_error_reason(message.data)
                if reason is not None:
                    event = BadFrame(reason)
                else:
                    log.warning("engine.socket_error", error=type(message.data).__name__)
            if isinstance(event, ResponseStarted):
                self._response_active = True
            elif isinstance(event, ResponseDone):
                self._response_active = False
            if event is not None:
                yield event
        log.info("engine.closed", close_code=self._ws.close_code)

    async def aclose(self) -> None:
        await self._ws.close()


class OpenAIRealtimeEngine:
    """Opens one OpenAI Realtime session per call, in the dialect the agent's `engine` names."""

    def __init__(self, config: OpenAIConfig, http: aiohttp.ClientSession) -> None:
        self._config = config
        self._http = http

    async def open(
        self, agent: OpenAIAgentConfig, call_id: str, carrier_format: AudioFormat
    ) -> OpenAIRealtimeSession:
        dialect = DIALECTS[agent.engine]
        url = URL(self._config.realtime_url).update_query(model=agent.resolved_model)
        headers = {"Authorization": f"Bearer {self._config.api_key.get_secret_value()}", **dialect.headers}
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                ws = await self._http.ws_connect(
                    url,
                    headers=headers,
                    timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                    max_msg_size=MODEL_MAX_MESSAGE_BYTES,
                    heartbeat=HEARTBEAT_S,
                    compress=0,
                )
        except aiohttp.WSServerHandshakeError as exc:
            raise EngineError(
                f"model socket refused with HTTP {exc.status}",
                code=str(exc.status),
                retryable=exc.status >= 500,
            ) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise EngineError(f"model socket unreachable: {type(exc).__name__}", retryable=True) from None
        log.info("engine.connected", model=agent.resolved_model, dialect=dialect.engine)
        return OpenAIRealtimeSession(ws, dialect, agent, carrier_format)
