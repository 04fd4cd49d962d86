"""OpenAI Realtime over WebSocket, in both wire dialects (protocols.md §A beta, §B GA).

A dialect object builds the client events in its shape; server events from either dialect are mapped
to the bridge's event set at the edge, accepting both spellings of the audio events (§B.4: some GA
sessions were reported to emit the beta names).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, ClassVar

import aiohttp
import structlog
from yarl import URL

from gateway import fastjson, fastws
from gateway.audio import PCM_24K, AudioFormat
from gateway.config import OpenAIAgentConfig, OpenAIConfig, SemanticVad
from gateway.engines.base import (
    MODEL_MAX_MESSAGE_BYTES,
    AudioDelta,
    AudioDone,
    BadFrame,
    EngineEvent,
    EngineFailure,
    InputCommitted,
    ResponseDone,
    ResponseStarted,
    SpeechStarted,
    SpeechStopped,
    ToolCall,
    Transcript,
    TranscriptionDone,
    Turn,
)
from gateway.engines.openai_events import SERVER_EVENT_TYPES
from gateway.engines.replay import openai_items
from gateway.errors import EngineError, ProtocolError
from gateway.frames import safe_name, socket_error_reason
from gateway.tools import function_specs

log = structlog.get_logger("gateway.openai")

# Errors after which the session cannot go on (the server closes the socket after most of them anyway).
FATAL_ERROR_CODES = frozenset(
    {"beta_api_shape_disabled", "invalid_api_key", "session_expired", "insufficient_quota", "model_not_found"}
)
# Of those, the ones a new session cures. OpenAI caps a session's length and then sends
# {"type":"error","error":{"type":"invalid_request_error","code":"session_expired","message":"Your
# session hit the maximum duration of 15 minutes."}} (reported in twilio-samples/speech-assistant-
# openai-realtime-api-python#10 and livekit/agents#1122; the cap has since grown to 60 minutes).
RETRYABLE_ERROR_CODES = frozenset({"session_expired"})
CONNECT_TIMEOUT_S = 10.0
# A dead peer that stops reading would otherwise block sends until max_call_duration_s.
HEARTBEAT_S = 15.0
SESSION_UPDATE_EVENT_ID = "gateway_session_update"


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


def _obj(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _ms(value: object) -> int:
    """An optional millisecond count: anything but a finite number (a string, null, NaN) reads as 0."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return 0


def map_server_event(event: dict[str, Any]) -> EngineEvent | None:
    """One server event in either dialect → the bridge's event, or None for events it does not use.

    Raises ProtocolError, and nothing else, for an event the bridge needs that lacks what it needs
    (an audio delta without a string payload); optional fields that are missing or malformed read as
    empty.
    """
    try:
        return _map_event(event)
    except RecursionError:  # str() of a field nested nearly as deep as json.loads allows
        kind = event.get("type")
        name = safe_name(kind) if isinstance(kind, str) else "?"
        raise ProtocolError(f"{name}: nested too deeply") from None


def _map_event(event: dict[str, Any]) -> EngineEvent | None:
    kind = event.get("type")
    if kind in ("response.output_audio.delta", "response.audio.delta"):
        delta = event.get("delta")
        if not isinstance(delta, str):
            raise ProtocolError(f"{kind}: delta is not a string")
        return AudioDelta(str(event.get("response_id", "")), str(event.get("item_id", "")), delta)
    if kind in ("response.output_audio.done", "response.audio.done"):
        return AudioDone(str(event.get("response_id", "")), str(event.get("item_id", "")))
    if kind == "input_audio_buffer.speech_started":
        return SpeechStarted(str(event.get("item_id", "")), _ms(event.get("audio_start_ms")))
    if kind == "input_audio_buffer.speech_stopped":
        return SpeechStopped(str(event.get("item_id", "")), _ms(event.get("audio_end_ms")))
    if kind == "input_audio_buffer.committed":
        return InputCommitted(str(event.get("item_id", "")))
    if kind == "conversation.item.input_audio_transcription.completed":
        usage = event.get("usage")
        return TranscriptionDone(
            str(event.get("item_id", "")),
            usage if isinstance(usage, dict) else None,
            str(event.get("transcript") or ""),
        )
    if kind in ("response.output_audio_transcript.done", "response.audio_transcript.done"):
        return Transcript("agent", str(event.get("transcript") or ""))
    if kind == "response.output_item.done":
        item = _obj(event.get("item"))
        # Only completed calls: an interrupted one's arguments may be a fragment (§B.5).
        if item.get("type") == "function_call" and item.get("status") == "completed":
            return ToolCall(
                str(item.get("call_id", "")), str(item.get("name", "")), str(item.get("arguments") or "")
            )
        return None
    if kind == "response.created":
        return ResponseStarted(str(_obj(event.get("response")).get("id", "")))
    if kind == "response.done":
        response = _obj(event.get("response"))
        usage = response.get("usage")
        return ResponseDone(
            str(response.get("id", "")),
            str(response.get("status", "")),
            usage if isinstance(usage, dict) else None,
        )
    if kind == "error":
        error = _obj(event.get("error"))
        code = str(error.get("code") or error.get("type") or "unknown")
        # An error answering our session.update means the call runs unconfigured (wrong audio
        # format: the caller would hear noise), so it is as fatal as a dead socket.
        fatal = code in FATAL_ERROR_CODES or error.get("event_id") == SESSION_UPDATE_EVENT_ID
        return EngineFailure(code, str(error.get("message", "")), fatal, code in RETRYABLE_ERROR_CODES)
    return None


_DELTA_TYPES = ("response.output_audio.delta", "response.audio.delta")


def fast_audio_delta(text: str) -> AudioDelta | None:
    """An audio delta (GA or beta), parsed the fast way (gateway.fastjson); None for any other
    message, and for a delta with fields of unexpected types: `parse_server_message` judges those."""
    try:
        raw = fastjson.loads(text)
    except ValueError:
        return None
    if type(raw) is not dict or raw.get("type") not in _DELTA_TYPES:
        return None
    delta, response_id, item_id = raw.get("delta"), raw.get("response_id", ""), raw.get("item_id", "")
    if type(delta) is not str or type(response_id) is not str or type(item_id) is not str:
        return None
    return AudioDelta(response_id, item_id, delta)


def parse_server_message(text: str) -> EngineEvent | None:
    """One text message from the server: the bridge's event, a BadFrame, or None (a known event the
    bridge does not use). Never raises, whatever the text."""
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the interpreter allows
        return BadFrame("malformed_json", "not JSON")
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        return BadFrame("malformed_json", "not an object with a type")
    kind = raw["type"]
    if kind not in SERVER_EVENT_TYPES:
        return BadFrame("unknown_event", safe_name(kind))
    try:
        return map_server_event(raw)
    except ProtocolError as exc:
        return BadFrame(exc.reason, str(exc))


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
        self._tap: fastws.FrameTap | None = None

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

        if self._tap is None:
            self._tap = fastws.tap(self._ws, offer, MODEL_MAX_MESSAGE_BYTES)
        else:
            self._tap.handler = offer
        return self._tap is not None

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
            message = await fastws.receive(self._ws, self._tap)
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
