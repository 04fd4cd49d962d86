"""ElevenLabs Conversational AI agents end to end (protocols.md §E): fake Twilio or Telnyx caller ⇄ real
gateway ⇄ fake ElevenLabs server, all on loopback sockets."""

from __future__ import annotations

import asyncio
import math
import types
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import numpy as np
import pytest
from structlog.testing import capture_logs

import tests.fakes.elevenlabs as fake_elevenlabs
from gateway.audio import ALAW_8K, ULAW_8K, AudioFormat, Converter, pcm16_to_alaw
from gateway.config import ElevenLabsAgentConfig, parse_config
from gateway.engines.elevenlabs import initiation_data
from tests.conftest import Gateway, StartGateway
from tests.fakes.elevenlabs import PATH, FakeElevenLabsConnection, message_kind
from tests.fakes.signals import MS, tone_ulaw
from tests.fakes.twilio import FakeTwilioCall

AGENT: dict[str, Any] = {"agent_id": "agent_test"}
ENGINE = "elevenlabs_convai"
PCM_16K = AudioFormat("pcm16", 16000)
PCM16K_MS = 32  # PCM16 16 kHz bytes per millisecond
FRAME = 160  # one 20 ms G.711 frame, as both carriers send caller audio


def tone_pcm16k(ms: int, hz: float = 440.0) -> bytes:
    t = np.arange(ms * 16) / 16000
    return (0.3 * 32767 * np.sin(2 * np.pi * hz * t)).astype("<i2").tobytes()


def tone_alaw(ms: int, hz: float = 440.0) -> bytes:
    t = np.arange(ms * 8) / 8000
    return pcm16_to_alaw((0.3 * 32767 * np.sin(2 * np.pi * hz * t)).astype("<i2").tobytes())


def reference(src: AudioFormat, dst: AudioFormat, audio: bytes, chunk: int, *, flush: bool) -> bytes:
    """What a fresh per-call converter makes of `audio` fed in `chunk`-byte pieces (and flushed)."""
    converter = Converter(src, dst)
    out = b"".join(converter.convert(audio[i : i + chunk]) for i in range(0, len(audio), chunk))
    return out + converter.flush() if flush else out


async def speak(conn: FakeElevenLabsConnection, audio: bytes, chunk: int, first_event_id: int = 1) -> None:
    """Agent audio in `chunk`-byte `audio` events with consecutive event ids."""
    for n, offset in enumerate(range(0, len(audio), chunk)):
        await conn.audio(audio[offset : offset + chunk], event_id=first_event_id + n)


async def twilio_call(gw: Gateway) -> tuple[FakeTwilioCall, FakeElevenLabsConnection]:
    """An inbound Twilio call to the ElevenLabs agent, past the initiation handshake."""
    call = await gw.twilio.call()
    conn = await gw.elevenlabs.next_connection()
    await conn.wait_for("conversation_initiation_client_data")
    return call, conn


def outcomes(gw: Gateway, carrier: str = "twilio") -> dict[str, float]:
    """Non-zero gateway_calls_total samples of the receptionist, by outcome."""
    found: dict[str, float] = {}
    for metric in gw.registry.collect():
        for sample in metric.samples:
            labels = sample.labels
            if (
                sample.name == "gateway_calls_total"
                and labels.get("carrier") == carrier
                and labels.get("agent") == "receptionist"
                and labels.get("engine") == ENGINE
                and sample.value
            ):
                found[labels["outcome"]] = sample.value
    return found


def before_metadata(
    monkeypatch: pytest.MonkeyPatch, action: Callable[[FakeElevenLabsConnection], Awaitable[None]]
) -> None:
    """Have the fake run `action` when a conversation's initiation data arrives, before it answers with
    conversation_initiation_metadata (the fake has no hook for that; it answers at once). If `action`
    closes the socket, no metadata follows."""
    original = FakeElevenLabsConnection._record

    async def record(self: FakeElevenLabsConnection, message: dict[str, Any]) -> None:
        if message_kind(message) == "conversation_initiation_client_data" and self.client_data is None:
            await action(self)
            if self.close_code is not None:
                return
        await original(self, message)

    monkeypatch.setattr(FakeElevenLabsConnection, "_record", record)


class TestSignedUrl:
    async def test_private_agent_opens_the_signed_url_it_fetched(self, start_gateway: StartGateway) -> None:
        """With an api_key the gateway GETs get-signed-url (xi-api-key) and opens exactly that URL."""
        gw = await start_gateway("elevenlabs", agent=AGENT)
        _, conn = await twilio_call(gw)
        assert gw.elevenlabs.signed_url_requests == 1
        assert gw.elevenlabs.refused == []
        assert len(gw.elevenlabs.issued_signatures) == 1
        signature = gw.elevenlabs.issued_signatures[0]
        assert conn.public is False
        assert conn.signature == signature
        assert conn.query == {"agent_id": "agent_test", "conversation_signature": signature}
        assert gw.elevenlabs.used_signatures == {signature}

    async def test_signed_url_is_opened_byte_for_byte(
        self, start_gateway: StartGateway, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A signature full of URL-reserved characters reaches ElevenLabs with the exact query it issued:
        the URL is opened as an opaque string, not re-encoded (§E.1)."""
        signatures = iter(["sig/1+a=b%c ~", "sig/2+a=b%c ~"])
        monkeypatch.setattr(
            fake_elevenlabs, "secrets", types.SimpleNamespace(token_urlsafe=lambda _: next(signatures))
        )
        raw_paths: list[str] = []
        original_init = FakeElevenLabsConnection.__init__

        def init(
            self: FakeElevenLabsConnection, server: Any, ws: Any, request: Any, conversation_id: str
        ) -> None:
            raw_paths.append(request.raw_path)
            original_init(self, server, ws, request, conversation_id)

        monkeypatch.setattr(FakeElevenLabsConnection, "__init__", init)
        gw = await start_gateway("elevenlabs", agent=AGENT)
        _, conn = await twilio_call(gw)
        issued = urlencode({"agent_id": "agent_test", "conversation_signature": "sig/1+a=b%c ~"})
        assert raw_paths == [f"{PATH}?{issued}"]
        assert conn.signature == "sig/1+a=b%c ~"
        assert gw.elevenlabs.refused == []

    async def test_each_call_fetches_a_fresh_single_use_signature(self, start_gateway: StartGateway) -> None:
        """Signatures are single-use: two calls mean two get-signed-url requests and two signatures."""
        gw = await start_gateway("elevenlabs", agent=AGENT)
        _, first = await twilio_call(gw)
        _, second = await twilio_call(gw)
        assert gw.elevenlabs.signed_url_requests == 2
        assert first.signature != second.signature
        assert gw.elevenlabs.used_signatures == {first.signature, second.signature}
        assert gw.elevenlabs.refused == []

    async def test_refused_signed_url_ends_the_call_as_connect_failure(
        self, start_gateway: StartGateway
    ) -> None:
        """An agent ElevenLabs does not know (get-signed-url 404): no socket; hung up and counted."""
        gw = await start_gateway("elevenlabs", agent={"agent_id": "agent_other"})
        call = await gw.twilio.call()
        await gw.twilio_api.wait_hangup(call.call_sid)
        await call.wait_closed()
        assert gw.elevenlabs.signed_url_requests == 1
        assert gw.elevenlabs.all_connections == []
        assert outcomes(gw) == {"engine_connect_failed": 1}
        assert gw.metric("gateway_engine_errors_total", engine=ENGINE, code="connect_failed") == 1


class TestPublicAgent:
    async def test_public_agent_opens_the_public_url_without_a_signature(
        self, start_gateway: StartGateway
    ) -> None:
        """Without an api_key no signed URL is fetched; the socket opens with only ?agent_id=."""
        gw = await start_gateway("elevenlabs", agent=AGENT, elevenlabs={"api_key": None})
        assert gw.config.providers.elevenlabs is not None
        assert gw.config.providers.elevenlabs.api_key is None
        _, conn = await twilio_call(gw)
        assert gw.elevenlabs.signed_url_requests == 0
        assert gw.elevenlabs.refused == []
        assert conn.public is True
        assert conn.signature is None
        assert conn.query == {"agent_id": "agent_test"}
        assert "xi-api-key" not in {name.lower() for name in conn.headers}


class TestInitiationData:
    async def test_no_overrides_sends_only_the_type(self, start_gateway: StartGateway) -> None:
        """No overrides: conversation_initiation_client_data comes first with no override key at all."""
        gw = await start_gateway("elevenlabs", agent=AGENT)
        _, conn = await twilio_call(gw)
        assert conn.received[0] == {"type": "conversation_initiation_client_data"}
        assert conn.client_data == {"type": "conversation_initiation_client_data"}

    @pytest.mark.parametrize(
        ("setting", "expected"),
        [
            (
                {"prompt": "You are a receptionist."},
                {
                    "conversation_config_override": {
                        "agent": {"prompt": {"prompt": "You are a receptionist."}}
                    }
                },
            ),
            (
                {"first_message": "Hi, thanks for calling."},
                {"conversation_config_override": {"agent": {"first_message": "Hi, thanks for calling."}}},
            ),
            ({"language": "de"}, {"conversation_config_override": {"agent": {"language": "de"}}}),
            (
                {"voice": "21m00Tcm4TlvDq8ikWAM"},
                {"conversation_config_override": {"tts": {"voice_id": "21m00Tcm4TlvDq8ikWAM"}}},
            ),
            (
                {"dynamic_variables": {"tenant": "acme", "floor": 3}},
                {"dynamic_variables": {"tenant": "acme", "floor": 3}},
            ),
        ],
        ids=["prompt", "first_message", "language", "voice", "dynamic_variables"],
    )
    async def test_each_override_alone_maps_per_protocol(
        self, start_gateway: StartGateway, setting: dict[str, Any], expected: dict[str, Any]
    ) -> None:
        """Each YAML setting, set alone, becomes exactly its §E.2 field and nothing else."""
        gw = await start_gateway("elevenlabs", agent={**AGENT, **setting})
        _, conn = await twilio_call(gw)
        assert conn.received[0] == {"type": "conversation_initiation_client_data", **expected}

    async def test_all_overrides_together(self, start_gateway: StartGateway) -> None:
        """Every override at once: agent prompt/first_message/language, tts voice_id, dynamic_variables."""
        gw = await start_gateway(
            "elevenlabs",
            agent={
                **AGENT,
                "prompt": "Be brief.",
                "first_message": "Hello!",
                "language": "fr",
                "voice": "voice_1",
                "dynamic_variables": {"tenant": "${TENANT:-acme}", "vip": True},
            },
        )
        _, conn = await twilio_call(gw)
        assert conn.received[0] == {
            "type": "conversation_initiation_client_data",
            "conversation_config_override": {
                "agent": {"prompt": {"prompt": "Be brief."}, "first_message": "Hello!", "language": "fr"},
                "tts": {"voice_id": "voice_1"},
            },
            "dynamic_variables": {"tenant": "acme", "vip": True},
        }

    def test_dynamic_variables_interpolate_environment(self) -> None:
        """dynamic_variables values take ${ENV} from the environment the config is parsed with."""
        doc = {
            "server": {"public_url": "https://gw.example.com"},
            "carriers": {"twilio": {"account_sid": "AC1", "auth_token": "t"}},
            "providers": {"elevenlabs": {"api_key": "${XI_KEY}"}},
            "agents": {
                "receptionist": {
                    "engine": ENGINE,
                    "agent_id": "agent_test",
                    "dynamic_variables": {"tenant": "${TENANT}", "region": "eu-${REGION:-west}", "n": 2},
                }
            },
            "default_agent": "receptionist",
        }
        config = parse_config(doc, env={"TENANT": "acme", "XI_KEY": "xi"})
        agent = config.agents["receptionist"]
        assert isinstance(agent, ElevenLabsAgentConfig)
        assert initiation_data(agent) == {
            "type": "conversation_initiation_client_data",
            "dynamic_variables": {"tenant": "acme", "region": "eu-west", "n": 2},
        }


class TestUlawPassthrough:
    async def test_ulaw_both_ways_is_byte_exact(self, start_gateway: StartGateway) -> None:
        """ulaw_8000 both ways: caller bytes reach ElevenLabs unchanged and agent bytes the caller."""
        gw = await start_gateway("elevenlabs", agent=AGENT)
        with capture_logs() as logs:
            call, conn = await twilio_call(gw)
            caller_audio = tone_ulaw(1000)
            await call.send_audio(caller_audio)
            await conn.wait_audio(len(caller_audio))
            assert bytes(conn.audio_in) == caller_audio
            assert len(conn.of_type("user_audio_chunk")) == 50  # one chunk per 20 ms frame

            agent_audio = tone_ulaw(1500, hz=700)
            await speak(conn, agent_audio, chunk=800)
            await call.wait_audio(len(agent_audio))
            assert bytes(call.audio_out) == agent_audio
            assert len(call.of_type("media")) == 15
            assert len(call.of_type("mark")) >= 7  # one per 200 ms of audio

            await call.stop()
            await asyncio.wait_for(conn.closed.wait(), 5)
            await call.wait_closed()
        audio = [e for e in logs if e["event"] == "engine.audio"]
        assert audio == [
            {
                "event": "engine.audio",
                "log_level": "info",
                "to_model": "ulaw/8000",
                "from_model": "ulaw/8000",
                "transcoding": False,
            }
        ]
        assert gw.twilio_api.hangups() == []
        assert outcomes(gw) == {"caller_hangup": 1}
        assert gw.metric("gateway_calls_active", carrier="twilio", engine=ENGINE) == 0


class TestPcmTranscoding:
    async def test_pcm16k_both_ways_with_exact_byte_accounting(self, start_gateway: StartGateway) -> None:
        """pcm_16000 both ways: the streams equal one stateful converter per direction fed the same
        chunks, the downlink tail flushed once the agent goes quiet."""
        gw = await start_gateway(
            "elevenlabs", agent=AGENT, elevenlabs={"input_format": "pcm_16000", "output_format": "pcm_16000"}
        )
        call, conn = await twilio_call(gw)

        caller_audio = tone_ulaw(1000)
        expected_up = reference(ULAW_8K, PCM_16K, caller_audio, FRAME, flush=False)
        assert abs(len(expected_up) - 1000 * PCM16K_MS) <= 20 * PCM16K_MS  # ± one frame of look-ahead
        await call.send_audio(caller_audio)
        await conn.wait_audio(len(expected_up))
        assert bytes(conn.audio_in) == expected_up

        agent_audio = tone_pcm16k(2000)
        chunk = 100 * PCM16K_MS
        expected_down = reference(PCM_16K, ULAW_8K, agent_audio, chunk, flush=True)
        assert len(expected_down) == 2000 * MS  # the flush makes the turn exact, not just close
        await speak(conn, agent_audio, chunk)
        await call.wait_audio(len(expected_down))
        assert bytes(call.audio_out) == expected_down

        await call.stop()
        await call.wait_closed()
        assert len(call.audio_out) == len(expected_down)
        assert len(conn.audio_in) == len(expected_up)

    async def test_pings_do_not_hold_back_the_end_of_a_turn(self, start_gateway: StartGateway) -> None:
        """The end-of-turn flush runs from the last audio: pings (and other events) arriving every few
        ms afterwards do not postpone it, so the resampler's tail still reaches the caller."""
        gw = await start_gateway("elevenlabs", agent=AGENT, elevenlabs={"output_format": "pcm_16000"})
        call, conn = await twilio_call(gw)
        agent_audio = tone_pcm16k(500)
        chunk = 100 * PCM16K_MS
        expected = reference(PCM_16K, ULAW_8K, agent_audio, chunk, flush=True)
        await speak(conn, agent_audio, chunk)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        event_id = 1000
        while len(call.audio_out) < len(expected):
            assert loop.time() < deadline, (
                f"tail never flushed: {len(call.audio_out)} of {len(expected)} bytes"
            )
            event_id += 1
            await conn.ping(event_id)
            await conn.wait_pong(event_id)
            await asyncio.sleep(0.02)  # pacing the fake's pings, as a server would; not synchronisation
        assert bytes(call.audio_out) == expected

    async def test_pcm_input_with_ulaw_output(self, start_gateway: StartGateway) -> None:
        """Mixed formats: caller audio is transcoded to pcm_16000, agent ulaw_8000 passes through."""
        gw = await start_gateway("elevenlabs", agent=AGENT, elevenlabs={"input_format": "pcm_16000"})
        with capture_logs() as logs:
            call, conn = await twilio_call(gw)
            caller_audio = tone_ulaw(600, hz=300)
            expected_up = reference(ULAW_8K, PCM_16K, caller_audio, FRAME, flush=False)
            await call.send_audio(caller_audio)
            await conn.wait_audio(len(expected_up))
            assert bytes(conn.audio_in) == expected_up

            agent_audio = tone_ulaw(700, hz=900)
            await speak(conn, agent_audio, chunk=400)
            await call.wait_audio(len(agent_audio))
            assert bytes(call.audio_out) == agent_audio
        audio = next(e for e in logs if e["event"] == "engine.audio")
        assert {k: audio[k] for k in ("to_model", "from_model", "transcoding")} == {
            "to_model": "pcm16/16000",
            "from_model": "ulaw/8000",
            "transcoding": True,
        }


class TestTelnyxCall:
    @pytest.mark.parametrize("style", ["texml", "call_control"])
    async def test_pcma_caller_with_ulaw_agent_transcodes_law_only(
        self, start_gateway: StartGateway, style: str
    ) -> None:
        """A European A-law Telnyx leg and a ulaw_8000 agent: A-law ⇄ µ-law per byte, no resampling,
        so both directions have exactly as many bytes as were sent."""
        gw = await start_gateway("elevenlabs", agent=AGENT, telnyx={"codec": "PCMA"})
        if style == "texml":
            call = await gw.telnyx.call_texml()
        else:
            call = await gw.telnyx.call_control(gw.telnyx_api)
        assert call.encoding == "PCMA"
        conn = await gw.elevenlabs.next_connection()

        caller_audio = tone_alaw(1000)
        expected_up = reference(ALAW_8K, ULAW_8K, caller_audio, FRAME, flush=False)
        assert len(expected_up) == len(caller_audio)
        await call.send_audio(caller_audio)
        await conn.wait_audio(len(expected_up))
        assert bytes(conn.audio_in) == expected_up

        agent_audio = tone_ulaw(1200, hz=600)
        expected_down = reference(ULAW_8K, ALAW_8K, agent_audio, 800, flush=True)
        assert len(expected_down) == len(agent_audio)
        await speak(conn, agent_audio, chunk=800)
        await call.wait_audio(len(expected_down))
        assert bytes(call.audio_out) == expected_down
        assert len(call.of_type("media")) == 12
        assert len(call.of_type("mark")) >= 6  # one per 200 ms of audio

        await call.stop()
        await asyncio.wait_for(conn.closed.wait(), 5)
        await call.wait_closed()
        assert gw.telnyx_api.hangups() == []
        assert outcomes(gw, carrier="telnyx") == {"caller_hangup": 1}

    async def test_pcmu_caller_with_ulaw_agent_is_passthrough(self, start_gateway: StartGateway) -> None:
        """A PCMU Telnyx leg and a ulaw_8000 agent: payloads pass through byte for byte."""
        gw = await start_gateway("elevenlabs", agent=AGENT)
        call = await gw.telnyx.call_texml()
        assert call.encoding == "PCMU"
        conn = await gw.elevenlabs.next_connection()
        caller_audio = tone_ulaw(400)
        await call.send_audio(caller_audio)
        await conn.wait_audio(len(caller_audio))
        assert bytes(conn.audio_in) == caller_audio
        agent_audio = tone_ulaw(400, hz=800)
        await speak(conn, agent_audio, chunk=800)
        await call.wait_audio(len(agent_audio))
        assert bytes(call.audio_out) == agent_audio


class TestPingPong:
    async def test_ping_is_answered_with_the_same_event_id(self, start_gateway: StartGateway) -> None:
        """Each ping mid-call gets exactly one pong carrying its event_id."""
        gw = await start_gateway("elevenlabs", agent=AGENT)
        _, conn = await twilio_call(gw)
        await conn.ping(7)
        await conn.ping(12345, ping_ms=0)
        assert await conn.wait_pong(7) == {"type": "pong", "event_id": 7}
        assert await conn.wait_pong(12345) == {"type": "pong", "event_id": 12345}
        assert conn.outstanding_pings == set()
        assert len(conn.of_type("pong")) == 2

    async def test_ping_before_the_metadata_is_answered(
        self, start_gateway: StartGateway, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A ping that arrives while the gateway still waits for the metadata is answered too, and the
        conversation then starts normally."""
        before_metadata(monkeypatch, lambda conn: conn.ping(1))
        gw = await start_gateway("elevenlabs", agent=AGENT)
        call, conn = await twilio_call(gw)
        assert await conn.wait_pong(1) == {"type": "pong", "event_id": 1}
        await conn.audio(b"\x11" * 160, event_id=1)
        await call.wait_audio(160)
        assert bytes(call.audio_out) == b"\x11" * 160
        assert [message_kind(m) for m in conn.received] == ["conversation_initiation_client_data", "pong"]


class TestEventsBeforeMetadata:
    async def test_audio_before_the_metadata_is_kept(
        self, start_gateway: StartGateway, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Agent audio that overtakes the metadata is held and played once the formats are known."""
        before_metadata(monkeypatch, lambda conn: conn.audio(b"\x22" * 160, event_id=1))
        gw = await start_gateway("elevenlabs", agent=AGENT)
        call, conn = await twilio_call(gw)
        await conn.audio(b"\x33" * 160, event_id=2)
        await call.wait_audio(320)
        assert bytes(call.audio_out) == b"\x22" * 160 + b"\x33" * 160


class TestInterruption:
    @pytest.mark.parametrize("late_event_id", [2, 3])
    async def test_interruption_clears_and_drops_earlier_audio(
        self, start_gateway: StartGateway, late_event_id: int
    ) -> None:
        """interruption(3) → one carrier clear; later audio with event_id ≤ 3 is dropped, event_id 4 plays."""
        gw = await start_gateway("elevenlabs", agent=AGENT)
        call, conn = await twilio_call(gw)
        played = [bytes([n]) * 800 for n in (0x11, 0x12, 0x13)]
        for event_id, audio in enumerate(played, start=1):
            await conn.audio(audio, event_id=event_id)
        await call.wait_audio(2400)
        await conn.interruption(3)
        await call.wait_for("clear")
        frames_at_clear = len(call.frames)

        await conn.audio(b"\x66" * 800, event_id=late_event_id)
        await conn.audio(b"\x44" * 800, event_id=4)
        await call.wait_audio(3200)
        assert bytes(call.audio_out) == b"".join(played) + b"\x44" * 800
        assert len(call.of_type("clear")) == 1
        # (its mark follows 200 ms of audio or the end of the item, neither of which has come yet)
        assert [f["event"] for f in call.frames[frames_at_clear - 1 :]] == ["clear", "media"]

    async def test_interruption_drops_transcoded_audio_too(self, start_gateway: StartGateway) -> None:
        """With pcm_16000 output, audio from before the interruption never reaches the caller either,
        and the next turn starts from a clean resampler."""
        gw = await start_gateway("elevenlabs", agent=AGENT, elevenlabs={"output_format": "pcm_16000"})
        call, conn = await twilio_call(gw)
        await conn.audio(tone_pcm16k(300), event_id=1)
        await call.wait_for("media")
        await conn.interruption(1)
        await call.wait_for("clear")
        before = len(call.audio_out)

        fresh = tone_pcm16k(500, hz=500)
        expected = reference(PCM_16K, ULAW_8K, fresh, len(fresh), flush=True)
        await conn.audio(tone_pcm16k(300, hz=200), event_id=1)
        await conn.audio(fresh, event_id=2)
        await call.wait_audio(before + len(expected))
        assert bytes(call.audio_out[before:]) == expected


class TestEngineEndsCall:
    async def test_client_error_hangs_up_as_engine_error(self, start_gateway: StartGateway) -> None:
        """client_error ends the call: conversation socket closed, REST hang-up, outcome engine_error."""
        gw = await start_gateway("elevenlabs", agent=AGENT)
        with capture_logs() as logs:
            call, conn = await twilio_call(gw)
            await conn.client_error("override not allowed")
            await gw.twilio_api.wait_hangup(call.call_sid)
            await call.wait_closed()
            await asyncio.wait_for(conn.closed.wait(), 5)
        assert gw.twilio_api.hangups() == [call.call_sid]
        assert outcomes(gw) == {"engine_error": 1}
        assert gw.metric("gateway_engine_errors_total", engine=ENGINE, code="client_error") == 1
        failed = [e for e in logs if e["event"] == "engine.failed"]
        assert [(e["error"], e["code"]) for e in failed] == [("override not allowed", "client_error")]
        ended = [e for e in logs if e["event"] == "call.ended"]
        assert [e["reason"] for e in ended] == ["engine_error"]

    @pytest.mark.parametrize("code", [1000, 1008])
    async def test_server_close_hangs_up_as_engine_closed(
        self, start_gateway: StartGateway, code: int
    ) -> None:
        """ElevenLabs closing the socket for good (1000 the conversation is over, 1008 policy) hangs
        the caller up; the close code is on the engine.closed line. (Drops it reconnects after, like
        1011: test_reconnect.py.)"""
        gw = await start_gateway("elevenlabs", agent=AGENT)
        with capture_logs() as logs:
            call, conn = await twilio_call(gw)
            await conn.audio(b"\x11" * 160, event_id=1)
            await call.wait_audio(160)
            await conn.close(code)
            await gw.twilio_api.wait_hangup(call.call_sid)
            await call.wait_closed()
        assert gw.twilio_api.hangups() == [call.call_sid]
        assert outcomes(gw) == {"engine_closed": 1}
        closed = [e for e in logs if e["event"] == "engine.closed"]
        assert closed == [{"event": "engine.closed", "log_level": "info", "close_code": code}]
        assert [e["reason"] for e in logs if e["event"] == "call.ended"] == ["engine_closed"]

    async def test_close_before_the_metadata_hangs_up_as_engine_error(
        self, start_gateway: StartGateway, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """ElevenLabs refusing the initiation data (an override not enabled: 1008 before any metadata)
        ends the call as engine_error, hung up, with the close code in the log."""
        before_metadata(monkeypatch, lambda conn: conn.close(1008))
        gw = await start_gateway("elevenlabs", agent={**AGENT, "language": "de"})
        with capture_logs() as logs:
            call = await gw.twilio.call()
            await gw.twilio_api.wait_hangup(call.call_sid)
            await call.wait_closed()
        assert outcomes(gw) == {"engine_error": 1}
        assert gw.metric("gateway_engine_errors_total", engine=ENGINE, code="start_failed") == 1
        failed = [e for e in logs if e["event"] == "engine.failed"]
        assert [(e["code"], e["error"]) for e in failed] == [
            ("1008", "ElevenLabs closed the conversation before it started (code 1008)")
        ]

    async def test_unsupported_audio_format_hangs_up_as_engine_error(
        self, start_gateway: StartGateway
    ) -> None:
        """An agent output format the gateway cannot play (mp3_44100) ends the call before any audio."""
        gw = await start_gateway("elevenlabs", agent=AGENT, elevenlabs={"output_format": "mp3_44100"})
        with capture_logs() as logs:
            call, conn = await twilio_call(gw)
            await gw.twilio_api.wait_hangup(call.call_sid)
            await call.wait_closed()
            await asyncio.wait_for(conn.closed.wait(), 5)
        assert outcomes(gw) == {"engine_error": 1}
        assert gw.metric("gateway_engine_errors_total", engine=ENGINE, code="start_failed") == 1
        assert call.audio_out == b""
        assert conn.of_type("user_audio_chunk") == []
        failed = [e for e in logs if e["event"] == "engine.failed"]
        assert [(e["error"], e["code"]) for e in failed] == [
            ("unsupported ElevenLabs audio format 'mp3_44100' (set ulaw_8000 or pcm_* on the agent)", None)
        ]


class TestEngineMinutesCost:
    async def _call_and_hang_up(self, gw: Gateway) -> float:
        call, conn = await twilio_call(gw)
        await conn.audio(b"\x11" * 800, event_id=1)
        await call.wait_audio(800)
        await call.stop()
        await call.wait_closed()
        duration_s = gw.metric(
            "gateway_call_duration_seconds_sum", carrier="twilio", agent="receptionist", engine=ENGINE
        )
        assert duration_s > 0
        return duration_s

    async def test_default_price_is_twelve_cents_a_minute(self, start_gateway: StartGateway) -> None:
        """engine_minutes ≈ connected time / 60 * $0.12, next to telephony; the call total is their sum."""
        gw = await start_gateway("elevenlabs", agent=AGENT)
        duration_s = await self._call_and_hang_up(gw)
        labels = {"agent": "receptionist", "model": ENGINE}
        engine_usd = gw.metric("gateway_cost_usd_total", **labels, component="engine_minutes")
        # Billed from the set-up conversation to the end: a little under the whole call, never over.
        assert duration_s / 60 * 0.12 - 0.12 / 60 * 0.5 < engine_usd <= duration_s / 60 * 0.12
        assert gw.metric("gateway_cost_usd_total", **labels, component="telephony") == pytest.approx(0.0085)
        assert gw.metric("gateway_call_cost_usd_sum", agent="receptionist") == pytest.approx(
            engine_usd + 0.0085, rel=1e-12
        )

    async def test_pricing_override_changes_the_rate(self, start_gateway: StartGateway) -> None:
        """pricing.engines.elevenlabs_convai.per_minute from YAML replaces the default rate."""
        gw = await start_gateway(
            "elevenlabs", agent=AGENT, pricing={"engines": {ENGINE: {"per_minute": 1.0}}}
        )
        duration_s = await self._call_and_hang_up(gw)
        engine_usd = gw.metric(
            "gateway_cost_usd_total", agent="receptionist", model=ENGINE, component="engine_minutes"
        )
        assert duration_s / 60 - 0.5 / 60 < engine_usd <= duration_s / 60
        assert not math.isclose(engine_usd, duration_s / 60 * 0.12)
