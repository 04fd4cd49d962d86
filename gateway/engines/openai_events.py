"""OpenAI Realtime's server events, in both dialects (protocols.md §A.4, §B.4): which types exist,
and how each one the bridge uses maps to its own events (audio events in both spellings: §B.4 says
some GA sessions were reported to emit the beta names).

SERVER_EVENT_TYPES is the union of the literal `type` values of the `openai` SDK's beta and GA
`RealtimeServerEvent` (3.54.0; tests/test_hardening_decoders.py checks the two stay equal). A type
outside this set is counted as an `unknown_event` bad frame: the server speaks a newer protocol than
the gateway knows. Events in the set that the bridge has no use for are ignored without a sound.
"""

from __future__ import annotations

import json
import math
from typing import Any

from gateway import fastjson
from gateway.engines.base import (
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
)
from gateway.errors import ProtocolError
from gateway.frames import safe_name

# Names shared by both dialects.
_COMMON = frozenset(
    {
        "conversation.created",
        "conversation.item.created",
        "conversation.item.deleted",
        "conversation.item.input_audio_transcription.completed",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.failed",
        "conversation.item.retrieved",
        "conversation.item.truncated",
        "error",
        "input_audio_buffer.cleared",
        "input_audio_buffer.committed",
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "output_audio_buffer.cleared",
        "output_audio_buffer.started",
        "output_audio_buffer.stopped",
        "rate_limits.updated",
        "response.content_part.added",
        "response.content_part.done",
        "response.created",
        "response.done",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.added",
        "response.output_item.done",
        "session.created",
        "session.updated",
    }
)
# Beta spellings the GA dialect renamed; some GA sessions were reported to send them still (§B.4).
_BETA_ONLY = frozenset(
    {
        "response.audio.delta",
        "response.audio.done",
        "response.audio_transcript.delta",
        "response.audio_transcript.done",
        "response.text.delta",
        "response.text.done",
        "transcription_session.updated",
    }
)
_GA_ONLY = frozenset(
    {
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.input_audio_transcription.segment",
        "input_audio_buffer.dtmf_event_received",
        "input_audio_buffer.timeout_triggered",
        "mcp_list_tools.completed",
        "mcp_list_tools.failed",
        "mcp_list_tools.in_progress",
        "response.mcp_call.completed",
        "response.mcp_call.failed",
        "response.mcp_call.in_progress",
        "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.done",
        "response.output_audio.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.delta",
        "response.output_audio_transcript.done",
        "response.output_text.delta",
        "response.output_text.done",
    }
)
SERVER_EVENT_TYPES = _COMMON | _BETA_ONLY | _GA_ONLY

# Errors after which the session cannot go on (the server closes the socket after most of them anyway).
FATAL_ERROR_CODES = frozenset(
    {"beta_api_shape_disabled", "invalid_api_key", "session_expired", "insufficient_quota", "model_not_found"}
)
# Of those, the ones a new session cures. OpenAI caps a session's length and then sends
# {"type":"error","error":{"type":"invalid_request_error","code":"session_expired","message":"Your
# session hit the maximum duration of 15 minutes."}} (reported in twilio-samples/speech-assistant-
# openai-realtime-api-python#10 and livekit/agents#1122; the cap has since grown to 60 minutes).
RETRYABLE_ERROR_CODES = frozenset({"session_expired"})
SESSION_UPDATE_EVENT_ID = "gateway_session_update"


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
