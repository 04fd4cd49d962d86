"""The OpenAI Realtime dialects: every client event shape validated against the SDK types, and the
server-event mapping of both spellings (protocols.md §A, §B)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from gateway.audio import ALAW_8K, PCM_24K, ULAW_8K, AudioFormat
from gateway.config import OpenAIAgentConfig as AgentConfig
from gateway.engines.base import (
    AudioDelta,
    AudioDone,
    EngineFailure,
    ResponseDone,
    ResponseStarted,
    SpeechStarted,
    SpeechStopped,
)
from gateway.engines.openai_events import map_server_event
from gateway.engines.openai_realtime import BetaDialect, GADialect, first_message_instructions
from tests.fakes.openai_validation import validate_client_event

TURN_DETECTIONS: list[dict[str, Any]] = [
    {"type": "server_vad"},
    {"type": "server_vad", "threshold": 0.7, "prefix_padding_ms": 200, "silence_duration_ms": 800},
    {"type": "semantic_vad"},
    {"type": "semantic_vad", "eagerness": "high"},
]
AGENT_VARIANTS: list[dict[str, Any]] = [
    {
        "audio": audio,
        "turn_detection": td,
        "reasoning_effort": effort,
        "input_audio_transcription_model": tm,
        "prompt": prompt,
    }
    for audio, td, effort, tm, prompt in itertools.product(
        ["pcm24k", "g711"], TURN_DETECTIONS, [None, "low"], ["whisper-1", None], ["", "Be brief."]
    )
]


def agent(engine: str, **fields: Any) -> AgentConfig:
    return AgentConfig.model_validate({"engine": engine, **fields})


class TestSessionUpdate:
    @pytest.mark.parametrize("fmt", [ULAW_8K, ALAW_8K])
    @pytest.mark.parametrize("fields", AGENT_VARIANTS)
    def test_ga_session_update_validates_with_no_extra_keys(
        self, fields: dict[str, Any], fmt: AudioFormat
    ) -> None:
        """Every GA session.update the gateway can build is a valid SessionUpdateEvent with no extras."""
        a = agent("openai_realtime_2", **fields)
        event = GADialect.session_update(a, PCM_24K if a.audio == "pcm24k" else fmt)
        assert validate_client_event(event, "ga") == []

    @pytest.mark.parametrize("fmt", [ULAW_8K, ALAW_8K])
    @pytest.mark.parametrize("fields", AGENT_VARIANTS)
    def test_beta_session_update_validates_with_no_extra_keys(
        self, fields: dict[str, Any], fmt: AudioFormat
    ) -> None:
        """Every beta session.update the gateway can build is a valid beta SessionUpdateEvent."""
        a = agent("openai_realtime", **fields)
        event = BetaDialect.session_update(a, PCM_24K if a.audio == "pcm24k" else fmt)
        assert validate_client_event(event, "beta") == []

    def test_ga_shape(self) -> None:
        """GA: session.type realtime, model, MIME formats (no rate on pcmu), voice under audio.output."""
        a = agent("openai_realtime_2", voice="marin", reasoning_effort="low", audio="g711")
        session = GADialect.session_update(a, ULAW_8K)["session"]
        assert session["type"] == "realtime"
        assert session["model"] == "gpt-realtime-2"
        assert session["output_modalities"] == ["audio"]
        assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
        assert session["audio"]["output"] == {"format": {"type": "audio/pcmu"}, "voice": "marin"}
        assert session["reasoning"] == {"effort": "low"}
        assert session["audio"]["input"]["transcription"] == {"model": "whisper-1"}
        assert "temperature" not in session

    def test_alaw_leg_is_declared_as_pcma_and_g711_alaw(self) -> None:
        """g711 mode on an A-law call: GA audio/pcma (no rate), beta g711_alaw, both directions."""
        ga = GADialect.session_update(agent("openai_realtime_2", audio="g711"), ALAW_8K)["session"]
        assert ga["audio"]["input"]["format"] == ga["audio"]["output"]["format"] == {"type": "audio/pcma"}
        beta = BetaDialect.session_update(agent("openai_realtime", audio="g711"), ALAW_8K)["session"]
        assert beta["input_audio_format"] == beta["output_audio_format"] == "g711_alaw"

    def test_ga_pcm_is_24k(self) -> None:
        """GA pcm24k declares audio/pcm at exactly 24000 Hz both ways."""
        session = GADialect.session_update(agent("openai_realtime_2"), PCM_24K)["session"]
        assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        assert session["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}

    def test_reasoning_effort_omitted_when_unset(self) -> None:
        """Without reasoning_effort in YAML, no `reasoning` key is sent at all."""
        session = GADialect.session_update(agent("openai_realtime_2"), PCM_24K)["session"]
        assert "reasoning" not in session

    def test_transcription_null_disables_it(self) -> None:
        """input_audio_transcription_model: null sends no transcription config in either dialect."""
        ga = GADialect.session_update(
            agent("openai_realtime_2", input_audio_transcription_model=None), ULAW_8K
        )
        beta = BetaDialect.session_update(
            agent("openai_realtime", input_audio_transcription_model=None), ULAW_8K
        )
        assert "transcription" not in ga["session"]["audio"]["input"]
        assert "input_audio_transcription" not in beta["session"]

    def test_beta_shape(self) -> None:
        """Beta: flat modalities, formats, voice, turn detection; never reasoning (beta has no such field)."""
        a = agent("openai_realtime", voice="verse", reasoning_effort="high", prompt="Hi")
        session = BetaDialect.session_update(a, PCM_24K)["session"]
        assert session["modalities"] == ["audio", "text"]
        assert session["input_audio_format"] == session["output_audio_format"] == "pcm16"
        assert session["voice"] == "verse"
        assert session["instructions"] == "Hi"
        assert session["input_audio_transcription"] == {"model": "whisper-1"}
        assert "reasoning" not in session
        assert BetaDialect.headers == {"OpenAI-Beta": "realtime=v1"}
        assert GADialect.headers == {}

    def test_turn_detection_keeps_server_in_charge_of_turns(self) -> None:
        """Turn detection asks the server to answer turns and to stop talking when interrupted."""
        a = agent("openai_realtime_2", turn_detection={"type": "semantic_vad", "eagerness": "low"})
        td = GADialect.session_update(a, ULAW_8K)["session"]["audio"]["input"]["turn_detection"]
        assert td == {
            "type": "semantic_vad",
            "eagerness": "low",
            "create_response": True,
            "interrupt_response": True,
        }

    def test_default_models_per_engine(self) -> None:
        """gpt-realtime-mini for the beta engine, gpt-realtime-2 for GA, unless model is set."""
        assert agent("openai_realtime").resolved_model == "gpt-realtime-mini"
        assert agent("openai_realtime_2").resolved_model == "gpt-realtime-2"
        assert agent("openai_realtime_2", model="gpt-realtime").resolved_model == "gpt-realtime"


class TestOtherClientEvents:
    @pytest.mark.parametrize("dialect", ["ga", "beta"])
    def test_fixed_shapes_validate(self, dialect: str) -> None:
        """append, the first message (a system message, then a plain response.create), response.cancel
        and truncate validate in both dialects."""
        greeting = [{"type": "input_text", "text": first_message_instructions("Hello!")}]
        events = [
            {"type": "input_audio_buffer.append", "audio": "AAAA"},
            {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "system", "content": greeting},
            },
            {"type": "response.create"},
            {"type": "response.cancel"},
            {
                "type": "conversation.item.truncate",
                "item_id": "item_1",
                "content_index": 0,
                "audio_end_ms": 1520,
            },
        ]
        for event in events:
            assert validate_client_event(event, dialect) == []  # type: ignore[arg-type]

    def test_checker_rejects_extras(self) -> None:
        """The validator itself catches a beta field in a GA event (so the tests above mean something)."""
        bad = {"type": "session.update", "session": {"type": "realtime", "temperature": 0.8}}
        assert validate_client_event(bad, "ga") == ["session.update: extra key event.session.temperature"]


class TestServerEvents:
    @pytest.mark.parametrize("name", ["response.output_audio.delta", "response.audio.delta"])
    def test_both_audio_delta_spellings(self, name: str) -> None:
        """GA and beta audio delta names both map to AudioDelta with the base64 payload untouched."""
        event = {
            "type": name,
            "response_id": "r",
            "item_id": "i",
            "output_index": 0,
            "content_index": 0,
            "delta": "AAEC",
        }
        assert map_server_event(event) == AudioDelta("r", "i", "AAEC")

    @pytest.mark.parametrize("name", ["response.output_audio.done", "response.audio.done"])
    def test_both_audio_done_spellings(self, name: str) -> None:
        """Both spellings of audio done map to AudioDone."""
        assert map_server_event({"type": name, "response_id": "r", "item_id": "i"}) == AudioDone("r", "i")

    def test_turn_and_response_events(self) -> None:
        """speech_started/stopped and response.created/done carry the fields the bridge needs."""
        assert map_server_event(
            {"type": "input_audio_buffer.speech_started", "item_id": "u", "audio_start_ms": 1200}
        ) == SpeechStarted("u", 1200)
        assert map_server_event(
            {"type": "input_audio_buffer.speech_stopped", "item_id": "u", "audio_end_ms": 2400}
        ) == SpeechStopped("u", 2400)
        assert map_server_event({"type": "response.created", "response": {"id": "r"}}) == ResponseStarted("r")
        usage = {"total_tokens": 3}
        assert map_server_event(
            {"type": "response.done", "response": {"id": "r", "status": "cancelled", "usage": usage}}
        ) == ResponseDone("r", "cancelled", usage)

    def test_errors_fatal_or_not(self) -> None:
        """Only session-ending error codes are fatal; a rejected truncate is not."""
        fatal = map_server_event(
            {"type": "error", "error": {"code": "beta_api_shape_disabled", "message": "m"}}
        )
        assert fatal == EngineFailure("beta_api_shape_disabled", "m", True)
        benign = map_server_event(
            {
                "type": "error",
                "error": {"type": "invalid_request_error", "code": "invalid_value", "message": "short"},
            }
        )
        assert benign == EngineFailure("invalid_value", "short", False)

    def test_unused_events_are_ignored(self) -> None:
        """Events the bridge has no use for map to None."""
        assert map_server_event({"type": "rate_limits.updated", "rate_limits": []}) is None
        assert map_server_event({"type": "session.updated", "session": {}}) is None
