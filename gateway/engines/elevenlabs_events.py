"""ElevenLabs Conversational AI server events (protocols.md §E.3) mapped to the bridge's events.

Pure and synchronous, like the carriers' decoders: the session feeds each message through
`decode_message` and `map_server_event` and acts on what comes back (answering a `Ping`, timing
the end of a turn), so the mapping is tested with plain dictionaries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gateway.engines.base import (
    AudioDelta,
    BadFrame,
    EngineEvent,
    EngineFailure,
    SpeechStarted,
    SpeechStopped,
    ToolCall,
    Transcript,
)
from gateway.errors import ProtocolError
from gateway.frames import safe_name

# Every server event type §E.3 lists (the agent's `client_events` choices, plus the metadata). Others
# are counted as `unknown_event` bad frames.
SERVER_EVENT_TYPES = frozenset(
    {
        "conversation_initiation_metadata",
        "asr_initiation_metadata",
        "ping",
        "audio",
        "interruption",
        "user_transcript",
        "tentative_user_transcript",
        "agent_response",
        "agent_response_correction",
        "client_tool_call",
        "mcp_tool_call",
        "mcp_connection_status",
        "agent_tool_request",
        "agent_tool_response",
        "agent_tool_response_full_payload",
        "agent_response_metadata",
        "vad_score",
        "agent_chat_response_part",
        "client_error",
        "guardrail_triggered",
        "dtmf_request",
        "agent_response_complete",
        "context_usage",
        "internal_turn_probability",
        "internal_tentative_agent_response",
    }
)


def _obj(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


@dataclass(slots=True)
class ConversationState:
    """What mapping an event needs to know of the conversation so far."""

    interrupted_upto: int = -1  # audio with an event_id up to this was spoken before a barge-in
    turn: int = 0

    @property
    def item_id(self) -> str:
        return f"turn-{self.turn}"


@dataclass(frozen=True, slots=True)
class Ping:
    """A `ping` the session must answer with a `pong` carrying the same event id."""

    event_id: object


def decode_message(text: str) -> dict[str, Any] | BadFrame:
    """One text message as a JSON object, or the BadFrame it is. Never raises."""
    try:
        event = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the interpreter allows
        return BadFrame("malformed_json", "not JSON")
    if not isinstance(event, dict):
        return BadFrame("malformed_json", "not an object")
    return event


def map_server_event(event: dict[str, Any], state: ConversationState) -> tuple[EngineEvent | Ping, ...]:
    """One server event (§E.3) → the bridge's events (often none); updates `state` on barge-in.

    Raises ProtocolError, and nothing else, for an event the bridge needs that lacks what it needs
    (audio without a string payload). Types §E.3 does not list come back as an `unknown_event`.
    """
    try:
        return _map_event(event, state)
    except RecursionError:  # str() or json.dumps of a field nested nearly as deep as json.loads allows
        kind = event.get("type")
        name = safe_name(kind) if isinstance(kind, str) else "?"
        raise ProtocolError(f"{name}: nested too deeply") from None


def _map_event(event: dict[str, Any], state: ConversationState) -> tuple[EngineEvent | Ping, ...]:
    kind = event.get("type")
    if kind == "audio":
        audio = _obj(event.get("audio_event"))
        payload = audio.get("audio_base_64")
        if not isinstance(payload, str):
            raise ProtocolError("audio: audio_base_64 is not a string")
        event_id = audio.get("event_id")
        if isinstance(event_id, int) and event_id <= state.interrupted_upto:
            return ()  # spoken before the caller interrupted: never play it
        return (AudioDelta("", state.item_id, payload),)
    if kind == "interruption":
        event_id = _obj(event.get("interruption_event")).get("event_id")
        if isinstance(event_id, int):
            state.interrupted_upto = max(state.interrupted_upto, event_id)
        state.turn += 1
        return (SpeechStarted("", 0),)
    if kind == "ping":
        return (Ping(_obj(event.get("ping_event")).get("event_id")),)
    if kind == "user_transcript":
        # The caller's turn is complete: the latency clock starts.
        text = _obj(event.get("user_transcription_event")).get("user_transcript") or ""
        return SpeechStopped("", 0), Transcript("caller", str(text))
    if kind == "agent_response":
        text = _obj(event.get("agent_response_event")).get("agent_response") or ""
        return (Transcript("agent", str(text)),)
    if kind == "client_tool_call":
        call = _obj(event.get("client_tool_call"))
        params = call.get("parameters")
        arguments = json.dumps(params if isinstance(params, dict) else {})
        return (ToolCall(str(call.get("tool_call_id", "")), str(call.get("tool_name", "")), arguments),)
    if kind == "client_error":
        message = _obj(event.get("client_error")).get("message") or event.get("message") or "client_error"
        return (EngineFailure("client_error", str(message), fatal=True),)
    if not isinstance(kind, str):
        return (BadFrame("malformed_json", "no type"),)
    if kind not in SERVER_EVENT_TYPES:
        return (BadFrame("unknown_event", safe_name(kind)),)
    return ()
