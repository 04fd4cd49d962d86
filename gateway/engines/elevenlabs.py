"""ElevenLabs Conversational AI over WebSocket (protocols.md §E).

The agent's audio formats are set on the ElevenLabs agent, not per conversation: the session reads
them from `conversation_initiation_metadata` and the bridge converts accordingly (`ulaw_8000` both
ways is passthrough; `pcm_*` at any rate is transcoded). ElevenLabs stops its own speech on barge-in
and says so with `interruption`; audio from before it (event_id ≤ the interruption's) is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import aiohttp
import structlog
from yarl import URL

from gateway import fastws
from gateway.audio import ULAW_8K, AudioFormat
from gateway.config import ElevenLabsAgentConfig, ElevenLabsConfig
from gateway.engines.base import (
    MODEL_MAX_MESSAGE_BYTES,
    AudioDelta,
    AudioDone,
    BadFrame,
    EngineEvent,
    SpeechStarted,
    Turn,
)
from gateway.engines.elevenlabs_events import ConversationState, Ping, decode_message, map_server_event
from gateway.engines.replay import context_text
from gateway.errors import EngineError, ProtocolError
from gateway.frames import socket_error_reason

log = structlog.get_logger("gateway.elevenlabs")

CONNECT_TIMEOUT_S = 10.0
METADATA_TIMEOUT_S = 10.0
HEARTBEAT_S = 15.0
# ElevenLabs marks no end of an agent turn in its audio stream; this long without audio ends one
# (and flushes the outbound resampler, so the last milliseconds are not held back).
AUDIO_IDLE_FLUSH_S = 0.25


def audio_format(name: str) -> AudioFormat:
    """`ulaw_8000` or `pcm_<rate>` (§E.4) as an AudioFormat."""
    if name == "ulaw_8000":
        return ULAW_8K
    kind, _, rate = name.partition("_")
    if kind == "pcm" and rate.isdigit():
        return AudioFormat("pcm16", int(rate))
    raise EngineError(f"unsupported ElevenLabs audio format {name!r} (set ulaw_8000 or pcm_* on the agent)")


def initiation_data(agent: ElevenLabsAgentConfig, *, resuming: bool = False) -> dict[str, Any]:
    """`conversation_initiation_client_data` with only the overrides the YAML sets (§E.2).

    `resuming` (a reconnect): an empty first message, so the agent waits instead of greeting the
    caller again ("empty = agent waits for user", SDK AgentConfig docstring). Sent only when the YAML
    sets `first_message`, i.e. when that override is enabled on the agent: otherwise ElevenLabs would
    refuse the conversation, and its stored greeting plays again.
    """
    agent_override: dict[str, Any] = {}
    if agent.prompt is not None:
        agent_override["prompt"] = {"prompt": agent.prompt}
    if agent.first_message is not None:
        agent_override["first_message"] = "" if resuming else agent.first_message
    if agent.language is not None:
        agent_override["language"] = agent.language
    override: dict[str, Any] = {}
    if agent_override:
        override["agent"] = agent_override
    if agent.voice is not None:
        override["tts"] = {"voice_id": agent.voice}
    data: dict[str, Any] = {"type": "conversation_initiation_client_data"}
    if override:
        data["conversation_config_override"] = override
    if agent.dynamic_variables:
        data["dynamic_variables"] = dict(agent.dynamic_variables)
    return data


def _obj(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class ElevenLabsSession:
    """One call's ElevenLabs conversation. Not shared between calls."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, agent: ElevenLabsAgentConfig) -> None:
        self._ws = ws
        self._agent = agent
        self.input_format = ULAW_8K
        self.output_format = ULAW_8K
        self.conversation_id = ""
        # Events (and bad frames) that arrived before the metadata.
        self._early: deque[dict[str, Any] | BadFrame] = deque()
        self._state = ConversationState()
        self._audio_open = False
        self._flush_at = 0.0  # loop time at which an open turn without new audio is over
        self._chunk_prefix = '{"user_audio_chunk":"'
        self._direct = fastws.writer(ws)

    async def _send(self, event: dict[str, Any]) -> None:
        await self._send_text(json.dumps(event))

    async def _send_text(self, text: str) -> None:
        if self._ws.closed:
            return
        with contextlib.suppress(ConnectionResetError):
            await self._ws.send_str(text)

    async def _receive(self, wait_s: float | None) -> dict[str, Any] | BadFrame | None:
        """The next JSON event, or a BadFrame; None when the socket is closed. Raises TimeoutError
        after `wait_s`."""
        while True:
            message = await self._ws.receive(timeout=wait_s)
            if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                return None
            if message.type == aiohttp.WSMsgType.ERROR:
                # The socket is closed after this; a message over the size limit is the peer's fault.
                reason = socket_error_reason(message.data)
                if reason is not None:
                    return BadFrame(reason)
                log.warning("engine.socket_error", error=type(message.data).__name__)
                return None
            if message.type == aiohttp.WSMsgType.BINARY:
                return BadFrame("binary")
            if message.type == aiohttp.WSMsgType.TEXT:
                return decode_message(message.data)

    async def start(self, context: str | None = None) -> None:
        await self._initiate(initiation_data(self._agent))
        if context is not None:
            # Non-interrupting context; the agent's own first message greets the caller.
            await self._send({"type": "contextual_update", "text": f"Taking over a call. So far: {context}"})

    async def resume(self, turns: Sequence[Turn], instructions: str | None) -> None:
        # A new conversation: ElevenLabs has no way to continue the old one or add turns to this one,
        # so the turns become background context.
        await self._initiate(initiation_data(self._agent, resuming=True))
        if turns:
            await self._send({"type": "contextual_update", "text": context_text(turns)})
        if instructions is not None:
            await self.say(instructions)

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code

    async def _initiate(self, data: dict[str, Any]) -> None:
        await self._send(data)
        try:
            async with asyncio.timeout(METADATA_TIMEOUT_S):
                while True:
                    event = await self._receive(None)
                    if event is None:
                        code = self._ws.close_code
                        raise EngineError(
                            f"ElevenLabs closed the conversation before it started (code {code})",
                            code=None if code is None else str(code),
                        )
                    if isinstance(event, BadFrame):
                        self._early.append(event)  # counted by the bridge once the call runs
                    elif event.get("type") == "conversation_initiation_metadata":
                        break
                    elif event.get("type") == "ping":
                        await self._pong(_obj(event.get("ping_event")).get("event_id"))
                    else:
                        self._early.append(event)
        except TimeoutError:
            raise EngineError("no conversation_initiation_metadata from ElevenLabs", retryable=True) from None
        metadata = _obj(event.get("conversation_initiation_metadata_event"))
        self.conversation_id = str(metadata.get("conversation_id", ""))
        self.input_format = audio_format(str(metadata.get("user_input_audio_format", "pcm_16000")))
        self.output_format = audio_format(str(metadata.get("agent_output_audio_format", "pcm_16000")))
        log.info("engine.conversation", conversation_id=self.conversation_id)

    async def _pong(self, event_id: object) -> None:
        await self._send({"type": "pong", "event_id": event_id})

    async def send_audio(self, audio_b64: str) -> None:
        await self._send_text(self._chunk_prefix + audio_b64 + '"}')

    def audio_writer(self) -> Callable[[str], None] | None:
        direct = self._direct
        return self._write_audio if direct is not None and direct.ready() else None

    def _write_audio(self, audio_b64: str) -> None:
        assert self._direct is not None
        self._direct.write((self._chunk_prefix + audio_b64 + '"}',))

    def tap_audio(self, take: Callable[[AudioDelta], bool]) -> bool:
        """Not here: an ElevenLabs delta also moves the end-of-turn clock that `events()` keeps."""
        return False

    async def cancel_response(self) -> None:
        """ElevenLabs stops its own speech on interruption; nothing to send."""

    async def truncate(self, item_id: str, audio_end_ms: int) -> None:
        """ElevenLabs keeps no truncatable items; nothing to send."""

    async def send_tool_result(self, call_id: str, output: str, is_error: bool) -> None:
        await self._send(
            {"type": "client_tool_result", "tool_call_id": call_id, "result": output, "is_error": is_error}
        )

    async def send_user_text(self, text: str) -> None:
        await self._send({"type": "user_message", "text": text})

    async def say(self, instructions: str) -> None:
        # ElevenLabs has no "speak now" for the client: a bracketed note as the caller's turn makes
        # the agent answer it.
        await self._send({"type": "user_message", "text": f"[{instructions}]"})

    async def events(self) -> AsyncIterator[EngineEvent]:
        while True:
            if self._early:
                event: dict[str, Any] | BadFrame | None = self._early.popleft()
            else:
                # The deadline runs from the last *audio*: pings and other events must not push it
                # back. (Never 0: aiohttp reads a zero timeout as "no timeout".)
                loop = asyncio.get_running_loop()
                wait_s = max(0.001, self._flush_at - loop.time()) if self._audio_open else None
                timed_out = False
                try:
                    event = await self._receive(wait_s)
                except TimeoutError:
                    event, timed_out = None, True
                if self._audio_open and loop.time() >= self._flush_at:
                    self._audio_open = False
                    yield AudioDone("", self._state.item_id)
                if timed_out:
                    continue
            if event is None:
                break
            if isinstance(event, BadFrame):
                yield event
                continue
            for item in await self._map(event):
                yield item
        log.info("engine.closed", close_code=self._ws.close_code)

    async def _map(self, event: dict[str, Any]) -> tuple[EngineEvent, ...]:
        """Map one event, answering pings and keeping the end-of-turn clock; never raises."""
        try:
            mapped = map_server_event(event, self._state)
        except ProtocolError as exc:
            return (BadFrame(exc.reason, str(exc)),)
        events: list[EngineEvent] = []
        for item in mapped:
            if isinstance(item, Ping):
                await self._pong(item.event_id)
                continue
            if isinstance(item, AudioDelta):
                self._audio_open = True
                self._flush_at = asyncio.get_running_loop().time() + AUDIO_IDLE_FLUSH_S
            elif isinstance(item, SpeechStarted):
                self._audio_open = False
            events.append(item)
        return tuple(events)

    async def aclose(self) -> None:
        await self._ws.close()


class ElevenLabsEngine:
    """Opens one ElevenLabs conversation per call: signed URL for private agents, public URL otherwise."""

    def __init__(self, config: ElevenLabsConfig, http: aiohttp.ClientSession) -> None:
        self._config = config
        self._http = http

    async def _signed_url(self, agent_id: str, api_key: str) -> str:
        url = URL(self._config.api_base_url.rstrip("/") + "/v1/convai/conversation/get-signed-url")
        try:
            async with self._http.get(
                url.update_query(agent_id=agent_id),
                headers={"xi-api-key": api_key},
                timeout=aiohttp.ClientTimeout(total=CONNECT_TIMEOUT_S),
            ) as response:
                if response.status != 200:
                    raise EngineError(
                        f"ElevenLabs signed URL refused with HTTP {response.status}",
                        code=str(response.status),
                        retryable=response.status >= 500,
                    )
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise EngineError(
                f"ElevenLabs signed URL unavailable: {type(exc).__name__}", retryable=True
            ) from None
        signed = body.get("signed_url") if isinstance(body, dict) else None
        if not isinstance(signed, str):
            raise EngineError("ElevenLabs signed URL response has no signed_url")
        return signed

    async def open(
        self, agent: ElevenLabsAgentConfig, call_id: str, carrier_format: AudioFormat
    ) -> ElevenLabsSession:
        api_key = self._config.api_key.get_secret_value() if self._config.api_key else None
        if api_key:
            # Opened unchanged: the URL carries a short-lived signature (§E.1).
            url = URL(await self._signed_url(agent.agent_id, api_key), encoded=True)
        else:
            url = URL(self._config.ws_url).update_query(agent_id=agent.agent_id)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                ws = await self._http.ws_connect(
                    url, heartbeat=HEARTBEAT_S, max_msg_size=MODEL_MAX_MESSAGE_BYTES, compress=0
                )
        except aiohttp.WSServerHandshakeError as exc:
            raise EngineError(
                f"ElevenLabs socket refused with HTTP {exc.status}",
                code=str(exc.status),
                retryable=exc.status >= 500,
            ) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise EngineError(
                f"ElevenLabs socket unreachable: {type(exc).__name__}", retryable=True
            ) from None
        log.info("engine.connected", agent_id=agent.agent_id, signed=bool(api_key))
        return ElevenLabsSession(ws, agent)
