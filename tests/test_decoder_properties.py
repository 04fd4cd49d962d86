"""Property tests of every decoder a peer's bytes reach: Twilio and Telnyx frames, OpenAI Realtime
events (beta and GA spellings), ElevenLabs events.

Two properties each: whatever arrives (any text, any JSON, frames shaped like the real ones with any
field replaced or missing), the decoder returns one of its declared results or raises ProtocolError,
never anything else; and well-formed frames round-trip to exactly the values they carry.
"""

from __future__ import annotations

import base64
import json
import typing
from pathlib import Path
from types import UnionType
from typing import Any

import openai.types.beta.realtime as beta_types
import openai.types.realtime as ga_types
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.carriers import telnyx, twilio
from gateway.carriers.base import CarrierEvent, Dtmf, MarkEcho, Media, StreamStart
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
from gateway.engines.elevenlabs_events import SERVER_EVENT_TYPES as ELEVENLABS_EVENTS
from gateway.engines.elevenlabs_events import ConversationState, Ping, decode_message
from gateway.engines.elevenlabs_events import map_server_event as map_elevenlabs
from gateway.engines.openai_events import (
    FATAL_ERROR_CODES,
    RETRYABLE_ERROR_CODES,
    map_server_event,
    parse_server_message,
)
from gateway.engines.openai_events import SERVER_EVENT_TYPES as OPENAI_EVENTS
from gateway.errors import ProtocolError

CARRIER_EVENTS = typing.get_args(CarrierEvent)
ENGINE_EVENTS = typing.get_args(EngineEvent)  # BadFrame included

# -- strategies -------------------------------------------------------------------------------------

# JSON values as json.loads produces them (NaN and Infinity included: Python's parser accepts them),
# weighted towards values that break naive conversions: int() of infinity or of a superscript digit,
# str() of a huge int, booleans where numbers belong.
NASTY_SCALARS: list[Any] = [
    *(float("inf"), float("-inf"), float("nan"), 1e308, -1, 0, True, False),
    *("", "²", "٣", "1" * 5000, "NaN", "x" * 300),
]
nasty = st.sampled_from(NASTY_SCALARS)
scalars = (
    nasty
    | st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats()
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def shaped_like(template: Any) -> st.SearchStrategy[Any]:
    """Values shaped like `template`: each field kept (recursively shaped), replaced by any JSON value,
    or left out."""
    if isinstance(template, dict):
        return st.fixed_dictionaries(
            {}, optional={k: shaped_like(v) | json_values for k, v in template.items()}
        )
    return st.just(template) | json_values


def frames_like(templates: dict[str, dict[str, Any]], key: str, names: list[str]) -> st.SearchStrategy[str]:
    """JSON text of frames shaped like one of `templates`, its event name (`key`) a known one or any."""
    return (
        st.sampled_from(sorted(templates))
        .flatmap(
            lambda name: st.tuples(
                shaped_like(templates[name]), st.sampled_from(names) | st.text(max_size=12)
            )
        )
        .map(lambda pair: json.dumps({**pair[0], key: pair[1]}))
    )


def deep(opener: str, closer: str) -> st.SearchStrategy[str]:
    """Nesting around the depths where json.loads or str() exhausts the interpreter's recursion limit
    (about 1,000 frames for str() everywhere and json.loads on 3.11; json.loads on 3.13 goes deeper).
    60,000 still fits in the carrier socket's default 64 KiB message."""
    depths = st.sampled_from([100, 800, 990, 1200, 3000, 10_000, 30_000, 60_000])
    return depths.map(lambda n: opener * n + closer * n)


def anything(frames: st.SearchStrategy[str], *, wrap: str) -> st.SearchStrategy[str]:
    """Any text, any JSON, realistic frames, and deeply nested values inside a realistic frame."""
    return (
        st.text()
        | json_values.map(json.dumps)
        | frames
        | deep("[", "]")
        | deep("[", "]").map(lambda inner: wrap.replace("VALUE", inner))
    )


NASTY_VALUES: list[Any] = [*NASTY_SCALARS, None, [], {}, [1], {"a": None}]


def field_mutations(template: Any) -> list[Any]:
    """Every variant of `template` with exactly one field (at any depth) replaced by each nasty value
    or removed: a systematic sweep that random generation would take long to stumble on."""
    if not isinstance(template, dict):
        return list(NASTY_VALUES)
    variants: list[Any] = []
    for key, value in template.items():
        variants.append({k: v for k, v in template.items() if k != key})
        variants += [{**template, key: mutated} for mutated in field_mutations(value)]
    return variants


b64 = st.binary(max_size=400).map(lambda raw: base64.b64encode(raw).decode())
ids = st.text(max_size=40)

# -- Twilio -------------------------------------------------------------------------------------------

TWILIO_FRAMES: dict[str, dict[str, Any]] = json.loads(
    (Path(__file__).parent / "data" / "twilio_frames.json").read_text(encoding="utf-8")
)["frames"]
TWILIO_NAMES = ["connected", "start", "media", "mark", "dtmf", "stop"]


def carrier_result(decode: Any, frame: Any) -> None:
    """Assert `decode(json text of frame)` gives a CarrierEvent or raises ProtocolError."""
    try:
        event = decode(json.dumps(frame))
    except ProtocolError as exc:
        assert exc.reason in ("malformed_json", "malformed_frame"), frame
    else:
        assert isinstance(event, CARRIER_EVENTS), frame


class TestTwilioDecode:
    @pytest.mark.parametrize("name", sorted(TWILIO_FRAMES))
    def test_every_field_swapped_for_a_hostile_value(self, name: str) -> None:
        """Each recorded frame with any one field removed or replaced by a hostile value (infinity, a
        superscript digit, a 5,000-digit string, a list, ...) decodes or raises ProtocolError."""
        for variant in field_mutations(TWILIO_FRAMES[name]):
            carrier_result(twilio.decode_frame, variant)

    @settings(max_examples=300)
    @given(
        anything(
            frames_like(TWILIO_FRAMES, "event", TWILIO_NAMES), wrap='{"event":"mark","mark":{"name":VALUE}}'
        )
    )
    def test_any_text_decodes_or_raises_protocol_error(self, text: str) -> None:
        """Whatever Twilio (or anyone) sends, decode_frame returns a CarrierEvent or raises ProtocolError."""
        try:
            event = twilio.decode_frame(text)
        except ProtocolError as exc:
            assert exc.reason in ("malformed_json", "malformed_frame")
        else:
            assert isinstance(event, CARRIER_EVENTS)

    @settings(max_examples=150)
    @given(digit=st.text(max_size=40).filter(lambda d: d.upper() not in set("0123456789*#ABCD")))
    def test_a_dtmf_digit_that_is_no_key_is_refused(self, digit: str) -> None:
        """A dtmf `digit` is forwarded to the model as the caller's words, so anything but one of the
        sixteen DTMF keys is a malformed frame, never an event."""
        for carrier, frame in (
            (twilio, {"event": "dtmf", "streamSid": "s", "dtmf": {"track": "inbound_track", "digit": digit}}),
            (telnyx, {"event": "dtmf", "stream_id": "s", "dtmf": {"digit": digit}}),
        ):
            with pytest.raises(ProtocolError) as error:
                carrier.decode_frame(json.dumps(frame))
            assert error.value.reason == "malformed_frame"

    @settings(max_examples=150)
    @given(
        call_sid=ids,
        stream_sid=ids,
        params=st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=4),
        encoding=st.sampled_from(["audio/x-mulaw", "audio/x-alaw"]),
        rate=st.integers(min_value=1, max_value=192_000),
    )
    def test_start_round_trips(
        self, call_sid: str, stream_sid: str, params: dict[str, str], encoding: str, rate: int
    ) -> None:
        """A well-formed `start` decodes to exactly its call, stream, format and parameters."""
        frame = {
            "event": "start",
            "sequenceNumber": "1",
            "streamSid": stream_sid,
            "start": {
                "callSid": call_sid,
                "streamSid": stream_sid,
                "customParameters": params,
                "mediaFormat": {"encoding": encoding, "sampleRate": rate, "channels": 1},
            },
        }
        assert twilio.decode_frame(json.dumps(frame)) == StreamStart(
            call_sid, stream_sid, encoding, rate, params
        )

    @settings(max_examples=150)
    @given(stream_sid=ids, payload=b64, name=st.text(max_size=30), digit=st.sampled_from("0123456789*#"))
    def test_media_mark_dtmf_round_trip_both_ways(
        self, stream_sid: str, payload: str, name: str, digit: str
    ) -> None:
        """Inbound media/mark/dtmf decode to their payload, name and digit; the gateway's outbound
        media and mark frames parse back to what it encoded, stream id included."""
        seq = {"sequenceNumber": "2", "streamSid": stream_sid}
        media = {"event": "media", **seq, "media": {"track": "inbound", "chunk": "1", "payload": payload}}
        assert twilio.decode_frame(json.dumps(media)) == Media(payload)
        assert twilio.decode_frame(json.dumps({"event": "mark", **seq, "mark": {"name": name}})) == MarkEcho(
            name
        )
        dtmf = {"event": "dtmf", **seq, "dtmf": {"track": "inbound_track", "digit": digit}}
        assert twilio.decode_frame(json.dumps(dtmf)) == Dtmf(digit)
        codec = twilio.TwilioMediaCodec(stream_sid)
        assert json.loads(codec.media(payload)) == {
            "event": "media",
            "streamSid": stream_sid,
            "media": {"payload": payload},
        }
        assert json.loads(codec.mark(name)) == {
            "event": "mark",
            "streamSid": stream_sid,
            "mark": {"name": name},
        }


# -- Telnyx -------------------------------------------------------------------------------------------

TELNYX_FRAMES: dict[str, dict[str, Any]] = {
    "connected": {"event": "connected", "version": "1.0.0"},
    "start": {
        "event": "start",
        "sequence_number": "1",
        "stream_id": "32de0dea-53cb-4b21-89a4-9c3a6ec00f4b",
        "start": {
            "user_id": "u",
            "call_control_id": "v3:abc",
            "call_session_id": "s",
            "from": "+15551230000",
            "to": "+15557654321",
            "tags": [],
            "client_state": None,
            "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
        },
    },
    "media": {
        "event": "media",
        "sequence_number": "4",
        "stream_id": "x",
        "media": {"track": "inbound", "chunk": "2", "timestamp": "5", "payload": "f39/fw=="},
    },
    "mark": {"event": "mark", "sequence_number": "5", "stream_id": "x", "mark": {"name": "item:1"}},
    "dtmf": {
        "event": "dtmf",
        "sequence_number": "5",
        "stream_id": "x",
        "occurred_at": "t",
        "dtmf": {"digit": "1"},
    },
    "error": {"event": "error", "stream_id": "x", "payload": {"code": 100003, "title": "malformed_frame"}},
    "stop": {
        "event": "stop",
        "sequence_number": "5",
        "stream_id": "x",
        "stop": {"call_control_id": "v3:abc"},
    },
}


class TestTelnyxDecode:
    @pytest.mark.parametrize("name", sorted(TELNYX_FRAMES))
    def test_every_field_swapped_for_a_hostile_value(self, name: str) -> None:
        """Each documented frame with any one field removed or replaced by a hostile value decodes or
        raises ProtocolError."""
        for variant in field_mutations(TELNYX_FRAMES[name]):
            carrier_result(telnyx.decode_frame, variant)

    @settings(max_examples=300)
    @given(
        anything(
            frames_like(TELNYX_FRAMES, "event", [*TELNYX_FRAMES]),
            wrap='{"event":"start","stream_id":"s","start":{"call_control_id":VALUE}}',
        )
    )
    def test_any_text_decodes_or_raises_protocol_error(self, text: str) -> None:
        """Whatever arrives, decode_frame returns a CarrierEvent or raises ProtocolError."""
        try:
            event = telnyx.decode_frame(text)
        except ProtocolError as exc:
            assert exc.reason in ("malformed_json", "malformed_frame")
        else:
            assert isinstance(event, CARRIER_EVENTS)

    @settings(max_examples=150)
    @given(
        call_id=ids,
        stream_id=ids,
        encoding=st.sampled_from(["PCMU", "PCMA", "audio/x-mulaw"]),
        rate=st.integers(min_value=1, max_value=999_999)
        | st.integers(min_value=1, max_value=999_999).map(str),
    )
    def test_start_round_trips(self, call_id: str, stream_id: str, encoding: str, rate: int | str) -> None:
        """A well-formed `start` decodes to its call, stream and format (the rate as number or string)."""
        start = {"call_control_id": call_id, "media_format": {"encoding": encoding, "sample_rate": rate}}
        frame = {"event": "start", "sequence_number": "1", "stream_id": stream_id, "start": start}
        assert telnyx.decode_frame(json.dumps(frame)) == StreamStart(call_id, stream_id, encoding, int(rate))

    @settings(max_examples=150)
    @given(payload=b64, name=st.text(max_size=30), digit=st.sampled_from("0123456789*#ABCD"))
    def test_media_mark_dtmf_round_trip_both_ways(self, payload: str, name: str, digit: str) -> None:
        """Inbound frames decode to their values; outbound media and mark parse back as encoded."""
        seq = {"sequence_number": "3", "stream_id": "s"}
        media = {"event": "media", **seq, "media": {"track": "inbound", "payload": payload}}
        assert telnyx.decode_frame(json.dumps(media)) == Media(payload)
        assert telnyx.decode_frame(json.dumps({"event": "mark", **seq, "mark": {"name": name}})) == MarkEcho(
            name
        )
        assert telnyx.decode_frame(json.dumps({"event": "dtmf", **seq, "dtmf": {"digit": digit}})) == Dtmf(
            digit
        )
        codec = telnyx.TelnyxMediaCodec()
        assert json.loads(codec.media(payload)) == {"event": "media", "media": {"payload": payload}}
        assert json.loads(codec.mark(name)) == {"event": "mark", "mark": {"name": name}}


# -- OpenAI Realtime ----------------------------------------------------------------------------------


def _sdk_event_types(union: Any) -> set[str]:
    found: set[str] = set()
    origin = typing.get_origin(union)
    if origin is typing.Annotated:
        return _sdk_event_types(typing.get_args(union)[0])
    if origin in (typing.Union, UnionType):
        for member in typing.get_args(union):
            found |= _sdk_event_types(member)
        return found
    field = getattr(union, "model_fields", {}).get("type")
    return set(typing.get_args(field.annotation)) if field is not None else set()


def openai_templates(dialect: str) -> dict[str, dict[str, Any]]:
    """One realistic event per kind the bridge maps, in the dialect's spelling (§A.4, §B.4)."""
    audio = "response.output_audio" if dialect == "ga" else "response.audio"
    transcript = "response.output_audio_transcript" if dialect == "ga" else "response.audio_transcript"
    where = {"event_id": "e", "response_id": "r", "item_id": "i", "output_index": 0, "content_index": 0}
    usage = {
        "total_tokens": 3,
        "input_tokens": 2,
        "output_tokens": 1,
        "input_token_details": {"audio_tokens": 2},
    }
    return {
        "delta": {"type": f"{audio}.delta", **where, "delta": "AAAA"},
        "done": {"type": f"{audio}.done", **where},
        "transcript": {"type": f"{transcript}.done", **where, "transcript": "hi"},
        "started": {"type": "input_audio_buffer.speech_started", "item_id": "i", "audio_start_ms": 10},
        "stopped": {"type": "input_audio_buffer.speech_stopped", "item_id": "i", "audio_end_ms": 20},
        "committed": {"type": "input_audio_buffer.committed", "item_id": "i"},
        "caller": {
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": "i",
            "transcript": "x",
            "usage": {"type": "duration", "seconds": 1},
        },
        "tool": {
            "type": "response.output_item.done",
            "item": {
                "type": "function_call",
                "status": "completed",
                "call_id": "c",
                "name": "n",
                "arguments": "{}",
            },
        },
        "created": {"type": "response.created", "response": {"id": "r", "status": "in_progress"}},
        "response": {"type": "response.done", "response": {"id": "r", "status": "completed", "usage": usage}},
        "error": {"type": "error", "error": {"type": "invalid_request_error", "code": "x", "message": "m"}},
    }


class TestOpenAIEvents:
    def test_known_types_are_the_sdk_union_of_both_dialects(self) -> None:
        """SERVER_EVENT_TYPES is exactly the beta | GA server event types of the pinned openai SDK."""
        sdk = _sdk_event_types(beta_types.RealtimeServerEvent) | _sdk_event_types(
            ga_types.RealtimeServerEvent
        )
        assert sdk == OPENAI_EVENTS

    @pytest.mark.parametrize("dialect", ["beta", "ga"])
    def test_every_field_swapped_for_a_hostile_value(self, dialect: str) -> None:
        """Each mapped event of the dialect with any one field removed or replaced by a hostile value
        maps or raises ProtocolError; as text it always parses to an event, a BadFrame or None."""
        for template in openai_templates(dialect).values():
            for variant in field_mutations(template):
                try:
                    mapped = map_server_event(variant)
                except ProtocolError:
                    pass
                else:
                    assert mapped is None or isinstance(mapped, ENGINE_EVENTS), variant
                result = parse_server_message(json.dumps(variant))
                assert result is None or isinstance(result, ENGINE_EVENTS), variant

    @settings(max_examples=250)
    @given(
        st.sampled_from(["beta", "ga"]).flatmap(
            lambda dialect: frames_like(openai_templates(dialect), "type", sorted(OPENAI_EVENTS))
        )
    )
    def test_any_event_maps_or_raises_protocol_error(self, text: str) -> None:
        """Events shaped like either dialect's, with any field replaced or missing, map to an event or
        None, or raise ProtocolError: never anything else."""
        event = json.loads(text)
        try:
            mapped = map_server_event(event)
        except ProtocolError as exc:
            assert exc.reason == "malformed_frame"
        else:
            assert mapped is None or isinstance(mapped, ENGINE_EVENTS)

    @settings(max_examples=250)
    @given(
        anything(
            st.sampled_from(["beta", "ga"]).flatmap(
                lambda dialect: frames_like(openai_templates(dialect), "type", sorted(OPENAI_EVENTS))
            ),
            wrap='{"type":"response.output_audio.done","item_id":VALUE}',
        )
    )
    def test_any_message_parses_without_raising(self, text: str) -> None:
        """parse_server_message never raises: an event, a BadFrame, or None for a known unused event."""
        result = parse_server_message(text)
        assert result is None or isinstance(result, ENGINE_EVENTS)

    @settings(max_examples=100)
    @given(kind=st.text(max_size=30).filter(lambda k: k not in OPENAI_EVENTS))
    def test_unknown_types_are_reported_as_such(self, kind: str) -> None:
        """A type neither dialect defines is an unknown_event BadFrame (detail: the name, if printable)."""
        result = parse_server_message(json.dumps({"type": kind, "event_id": "e"}))
        assert isinstance(result, BadFrame)
        assert result.reason == "unknown_event"

    @settings(max_examples=150)
    @given(
        dialect=st.sampled_from(["beta", "ga"]),
        response_id=ids,
        item_id=ids,
        audio=st.binary(max_size=2000),
        start_ms=st.integers(min_value=0, max_value=10**9),
        code=st.sampled_from(sorted(FATAL_ERROR_CODES)) | st.text(min_size=1, max_size=20),
    )
    def test_well_formed_events_round_trip(  # noqa: PLR0917 - one argument per generated value
        self, dialect: str, response_id: str, item_id: str, audio: bytes, start_ms: int, code: str
    ) -> None:
        """Audio deltas (both spellings), speech_started, tool calls and errors carry their values."""
        name = "response.output_audio.delta" if dialect == "ga" else "response.audio.delta"
        delta = base64.b64encode(audio).decode()
        event = {"type": name, "response_id": response_id, "item_id": item_id, "delta": delta}
        assert parse_server_message(json.dumps(event)) == AudioDelta(response_id, item_id, delta)
        started = {
            "type": "input_audio_buffer.speech_started",
            "item_id": item_id,
            "audio_start_ms": start_ms,
        }
        assert parse_server_message(json.dumps(started)) == SpeechStarted(item_id, start_ms)
        item = {"type": "function_call", "status": "completed", "call_id": response_id, "name": item_id}
        tool = {"type": "response.output_item.done", "item": {**item, "arguments": '{"a": 1}'}}
        assert parse_server_message(json.dumps(tool)) == ToolCall(response_id, item_id, '{"a": 1}')
        error = {
            "type": "error",
            "error": {"type": "invalid_request_error", "code": code, "message": item_id},
        }
        assert parse_server_message(json.dumps(error)) == EngineFailure(
            code, item_id, code in FATAL_ERROR_CODES, retryable=code in RETRYABLE_ERROR_CODES
        )


# -- ElevenLabs ---------------------------------------------------------------------------------------

ELEVENLABS_TEMPLATES: dict[str, dict[str, Any]] = {
    "audio": {"type": "audio", "audio_event": {"audio_base_64": "AAAA", "event_id": 3}},
    "interruption": {"type": "interruption", "interruption_event": {"event_id": 3}},
    "ping": {"type": "ping", "ping_event": {"event_id": 1, "ping_ms": 50}},
    "user_transcript": {"type": "user_transcript", "user_transcription_event": {"user_transcript": "x"}},
    "agent_response": {"type": "agent_response", "agent_response_event": {"agent_response": "y"}},
    "client_tool_call": {
        "type": "client_tool_call",
        "client_tool_call": {"tool_name": "t", "tool_call_id": "c", "parameters": {"a": 1}},
    },
    "client_error": {"type": "client_error", "client_error": {"message": "m"}},
    "vad_score": {"type": "vad_score", "vad_score_event": {"vad_score": 0.5}},
}


class TestElevenLabsEvents:
    @pytest.mark.parametrize("name", sorted(ELEVENLABS_TEMPLATES))
    def test_every_field_swapped_for_a_hostile_value(self, name: str) -> None:
        """Each event with any one field removed or replaced by a hostile value maps or raises
        ProtocolError."""
        for variant in field_mutations(ELEVENLABS_TEMPLATES[name]):
            try:
                mapped = map_elevenlabs(variant, ConversationState())
            except ProtocolError:
                continue
            assert all(isinstance(item, (*ENGINE_EVENTS, Ping)) for item in mapped), variant

    @settings(max_examples=250)
    @given(
        anything(
            frames_like(ELEVENLABS_TEMPLATES, "type", sorted(ELEVENLABS_EVENTS)),
            wrap='{"type":"client_tool_call","client_tool_call":{"parameters":{"a":VALUE}}}',
        ),
        st.integers(min_value=-1, max_value=10),
    )
    def test_any_message_decodes_and_maps_or_raises_protocol_error(self, text: str, interrupted: int) -> None:
        """decode_message never raises; map_server_event returns events (or Pings, or an unknown_event
        BadFrame) or raises ProtocolError, whatever the message and the conversation so far."""
        message = decode_message(text)
        if isinstance(message, BadFrame):
            assert message.reason == "malformed_json"
            return
        try:
            mapped = map_elevenlabs(message, ConversationState(interrupted_upto=interrupted))
        except ProtocolError as exc:
            assert exc.reason == "malformed_frame"
        else:
            assert all(isinstance(item, (*ENGINE_EVENTS, Ping)) for item in mapped)

    @settings(max_examples=150)
    @given(
        audio=st.binary(max_size=2000),
        event_id=st.integers(min_value=0, max_value=10**6),
        text=st.text(max_size=40),
        params=st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=4),
    )
    def test_well_formed_events_round_trip(
        self, audio: bytes, event_id: int, text: str, params: dict[str, Any]
    ) -> None:
        """Audio, barge-in, pings, transcripts and tool calls carry their values; audio from before an
        interruption is dropped."""
        state = ConversationState()
        payload = base64.b64encode(audio).decode()
        message = {"type": "audio", "audio_event": {"audio_base_64": payload, "event_id": event_id}}
        assert map_elevenlabs(message, state) == (AudioDelta("", "turn-0", payload),)
        barge_in = {"type": "interruption", "interruption_event": {"event_id": event_id}}
        assert map_elevenlabs(barge_in, state) == (SpeechStarted("", 0),)
        assert map_elevenlabs(message, state) == ()  # spoken before the interruption
        ping = {"type": "ping", "ping_event": {"event_id": event_id, "ping_ms": 50}}
        assert map_elevenlabs(ping, state) == (Ping(event_id),)
        heard = {"type": "user_transcript", "user_transcription_event": {"user_transcript": text}}
        assert map_elevenlabs(heard, state) == (SpeechStopped("", 0), Transcript("caller", text))
        call = {
            "type": "client_tool_call",
            "client_tool_call": {"tool_name": text, "tool_call_id": "c", "parameters": params},
        }
        (tool,) = map_elevenlabs(call, state)
        assert isinstance(tool, ToolCall)
        assert (tool.call_id, tool.name, json.loads(tool.arguments)) == ("c", text, params)

    @settings(max_examples=100)
    @given(kind=st.text(max_size=30).filter(lambda k: k not in ELEVENLABS_EVENTS))
    def test_unknown_types_are_reported_as_such(self, kind: str) -> None:
        """A type §E.3 does not list maps to a single unknown_event BadFrame."""
        (result,) = map_elevenlabs({"type": kind}, ConversationState())
        assert isinstance(result, BadFrame)
        assert result.reason == "unknown_event"
