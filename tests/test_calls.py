"""Whole calls through a real gateway: fake Twilio caller ⇄ gateway ⇄ fake OpenAI Realtime server."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gateway.audio import pcm16_to_ulaw
from tests.conftest import StartGateway

MS = 8  # µ-law bytes per millisecond at 8 kHz
PCM24_MS = 48  # PCM16 24 kHz bytes per millisecond


def tone_ulaw(ms: int, hz: float = 440.0) -> bytes:
    t = np.arange(ms * 8) / 8000
    pcm = (0.3 * 32767 * np.sin(2 * np.pi * hz * t)).astype("<i2").tobytes()
    return pcm16_to_ulaw(pcm)


def tone_pcm24(ms: int, hz: float = 440.0) -> bytes:
    t = np.arange(ms * 24) / 24000
    return (0.3 * 32767 * np.sin(2 * np.pi * hz * t)).astype("<i2").tobytes()


class TestFullCall:
    @pytest.mark.parametrize("dialect", ["ga", "beta"])
    async def test_g711_passthrough_is_byte_exact(self, start_gateway: StartGateway, dialect: str) -> None:
        """In g711 mode caller bytes reach the model unchanged and model bytes reach the caller unchanged."""
        gw = await start_gateway(dialect, agent={"audio": "g711"})
        call = await gw.twilio.call()
        model = await gw.model.next_connection()
        update = (await model.wait_for("session.update"))[0]["session"]
        if dialect == "ga":
            assert update["audio"]["input"]["format"] == {"type": "audio/pcmu"}
            assert update["audio"]["output"]["format"] == {"type": "audio/pcmu"}
        else:
            assert update["input_audio_format"] == update["output_audio_format"] == "g711_ulaw"

        caller_audio = tone_ulaw(1000)
        await call.send_audio(caller_audio)
        await model.wait_audio(len(caller_audio))
        assert bytes(model.audio_in) == caller_audio

        agent_audio = tone_ulaw(1500, hz=700)
        await model.speak(agent_audio, chunk_bytes=800)
        await call.wait_audio(len(agent_audio))
        assert bytes(call.audio_out) == agent_audio
        assert len(call.of_type("mark")) == len(call.of_type("media"))

        await call.stop()
        await asyncio.wait_for(model.closed.wait(), 5)
        assert await call.wait_closed() is not None
        assert gw.twilio_api.hangups() == []
        assert (
            gw.metric(
                "gateway_calls_total",
                carrier="twilio",
                agent="receptionist",
                engine=gw.config.agents["receptionist"].engine,
                outcome="caller_hangup",
            )
            == 1
        )
        assert (
            gw.metric(
                "gateway_calls_active", carrier="twilio", engine=gw.config.agents["receptionist"].engine
            )
            == 0
        )
        assert (
            gw.metric(
                "gateway_call_duration_seconds_count",
                carrier="twilio",
                agent="receptionist",
                engine=gw.config.agents["receptionist"].engine,
            )
            == 1
        )

    @pytest.mark.parametrize("dialect", ["ga", "beta"])
    async def test_pcm24k_transcodes_with_exact_sample_accounting(
        self, start_gateway: StartGateway, dialect: str
    ) -> None:
        """In pcm24k mode 1 s of caller µ-law becomes 1 s of 24 kHz PCM and back, ± one 20 ms frame."""
        gw = await start_gateway(dialect, agent={"audio": "pcm24k"})
        call = await gw.twilio.call()
        model = await gw.model.next_connection()
        update = (await model.wait_for("session.update"))[0]["session"]
        if dialect == "ga":
            assert update["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        else:
            assert update["input_audio_format"] == update["output_audio_format"] == "pcm16"

        await call.send_audio(tone_ulaw(1000))
        await model.wait_audio(1000 * PCM24_MS - 20 * PCM24_MS)
        await call.send_audio(tone_ulaw(40))  # the resampler's delay line is not lost, just later
        await model.wait_audio(1000 * PCM24_MS)
        assert len(model.audio_in) % 2 == 0

        await model.speak(tone_pcm24(2000), chunk_bytes=100 * PCM24_MS)
        await call.wait_for("mark", count=1)
        await call.wait_audio(2000 * MS - 20 * MS)
        await model.wait_for("session.update")  # round trip, so every frame of the response has arrived
        await call.stop()
        await call.wait_closed()
        # The flush at the end of the response returns the resampler's tail: nothing held back.
        assert abs(len(call.audio_out) - 2000 * MS) <= 20 * MS

    async def test_beta_reads_ga_audio_spelling_and_vice_versa(self, start_gateway: StartGateway) -> None:
        """Either dialect accepts both spellings of the audio delta event (protocols.md §B.4)."""
        gw = await start_gateway("ga", agent={"audio": "g711"})
        call = await gw.twilio.call()
        model = await gw.model.next_connection()
        await model.response_created("resp_1")
        await model.audio_delta("resp_1", "item_1", b"\x11" * 160, name="response.audio.delta")
        await model.audio_delta("resp_1", "item_1", b"\x22" * 160, name="response.output_audio.delta")
        await call.wait_audio(320)
        assert bytes(call.audio_out) == b"\x11" * 160 + b"\x22" * 160


class TestFirstMessage:
    @pytest.mark.parametrize("dialect", ["ga", "beta"])
    async def test_first_message_is_requested_right_after_session_update(
        self, start_gateway: StartGateway, dialect: str
    ) -> None:
        """With first_message set, response.create with that exact text follows the session.update."""
        gw = await start_gateway(dialect, agent={"first_message": "Hello! How can I help today?"})
        await gw.twilio.call()
        model = await gw.model.next_connection()
        await model.wait_for("response.create")
        kinds = [e["type"] for e in model.received]
        assert kinds[:2] == ["session.update", "response.create"]
        assert "Hello! How can I help today?" in model.received[1]["response"]["instructions"]

    async def test_no_first_message_means_no_response_create(self, start_gateway: StartGateway) -> None:
        """Without first_message the agent waits for the caller: no response.create is sent."""
        gw = await start_gateway("ga", agent={"audio": "g711"})
        call = await gw.twilio.call()
        model = await gw.model.next_connection()
        await call.send_audio(tone_ulaw(100))
        await model.wait_audio(800)
        assert model.of_type("response.create") == []


class TestBargeIn:
    @pytest.mark.parametrize(("dialect", "audio"), [("ga", "g711"), ("beta", "g711"), ("ga", "pcm24k")])
    async def test_barge_in_clears_cancels_and_truncates_at_played_ms(
        self, start_gateway: StartGateway, dialect: str, audio: str
    ) -> None:
        """speech_started → Twilio clear, response.cancel, truncate with audio_end_ms = ms actually played."""
        gw = await start_gateway(dialect, agent={"audio": audio})
        call = await gw.twilio.call(auto_play=False)
        model = await gw.model.next_connection()
        await model.response_created("resp_1")
        if audio == "g711":
            for _ in range(10):
                await model.audio_delta("resp_1", "item_a", tone_ulaw(100))
        else:
            for _ in range(10):
                await model.audio_delta("resp_1", "item_a", tone_pcm24(100))
        await call.wait_for("mark", count=10)
        await call.play(300 * MS)  # the caller has heard 300 ms when they start talking
        await call.send_audio(tone_ulaw(20))  # frames are handled in order: the marks were seen first
        await model.wait_audio(1)
        await model.speech_started()

        truncate = (await model.wait_for("conversation.item.truncate"))[0]
        await call.wait_for("clear")
        assert truncate["item_id"] == "item_a"
        assert truncate["content_index"] == 0
        assert truncate["audio_end_ms"] == call.played_bytes // MS
        assert 250 <= truncate["audio_end_ms"] <= 300
        assert len(model.of_type("response.cancel")) == 1

        # Audio of the interrupted item still in flight is dropped; the next response plays.
        before = len(call.audio_out)
        late = tone_ulaw(100) if audio == "g711" else tone_pcm24(100)
        await model.audio_delta("resp_1", "item_a", late)
        await model.response_done("resp_1", status="cancelled")
        await model.response_created("resp_2")
        fresh = b"\x55" * 800 if audio == "g711" else tone_pcm24(100)
        await model.audio_delta("resp_2", "item_b", fresh)
        await call.wait_audio(before + 1)
        await model.audio_done("resp_2", "item_b")
        await model.response_done("resp_2")
        await call.wait_for("mark", count=11)
        if audio == "g711":
            assert bytes(call.audio_out[before:]) == fresh

    async def test_no_cancel_when_no_response_in_progress(self, start_gateway: StartGateway) -> None:
        """Caller speech after the agent finished: clear is sent, but no cancel and no truncate."""
        gw = await start_gateway("ga", agent={"audio": "g711"})
        call = await gw.twilio.call()
        model = await gw.model.next_connection()
        await model.speak(tone_ulaw(200), chunk_bytes=800)
        await call.wait_for("mark", count=2)
        await call.send_audio(tone_ulaw(20))
        await model.wait_audio(160)
        await model.speech_started()
        await call.wait_for("clear")
        await call.send_audio(tone_ulaw(20))
        await model.wait_audio(320)
        assert model.of_type("response.cancel") == []
        assert model.of_type("conversation.item.truncate") == []

    async def test_rejected_truncate_does_not_end_the_call(self, start_gateway: StartGateway) -> None:
        """An error event answering the truncate is logged and survived: the call keeps going."""
        gw = await start_gateway("ga", agent={"audio": "g711"})
        call = await gw.twilio.call(auto_play=False)
        model = await gw.model.next_connection()
        await model.response_created("resp_1")
        await model.audio_delta("resp_1", "item_a", tone_ulaw(500))
        await call.wait_for("mark")
        await model.speech_started()
        await model.wait_for("conversation.item.truncate")
        await model.error("invalid_value", "Audio content of 500ms is already shorter than 800ms")
        await model.speak(b"\x33" * 800, chunk_bytes=800)
        await call.wait_audio(500 * MS + 800)
        await call.send_audio(tone_ulaw(20))
        await model.wait_audio(160)
        assert gw.twilio_api.hangups() == []


class TestSignatures:
    async def test_webhook_with_bad_signature_is_403(self, start_gateway: StartGateway) -> None:
        """A voice webhook whose X-Twilio-Signature does not match is refused with 403."""
        gw = await start_gateway()
        status, _ = await gw.twilio.webhook(signature="bm90IGEgc2lnbmF0dXJl")
        assert status == 403
        assert (
            gw.metric("gateway_webhooks_total", carrier="twilio", endpoint="voice", outcome="bad_signature")
            == 1
        )

    async def test_webhook_get_is_signed_over_the_query(self, start_gateway: StartGateway) -> None:
        """GET webhooks (parameters in the query string) verify and answer TwiML."""
        gw = await start_gateway()
        status, body = await gw.twilio.webhook(method="GET")
        assert status == 200
        url, params = gw.twilio.parse_stream(body)
        assert url == f"{gw.config.server.media_base_url}/twilio/media"
        assert params == {"agent": "receptionist"}

    async def test_upgrade_with_bad_signature_closes_1008_before_any_model_socket(
        self, start_gateway: StartGateway
    ) -> None:
        """A media upgrade with a wrong signature is closed with 1008 and never reaches the model."""
        gw = await start_gateway()
        call = await gw.twilio.open_stream(
            f"{gw.config.server.media_base_url}/twilio/media", {"agent": "receptionist"}, signature="d3Jvbmc="
        )
        assert await call.wait_closed() == 1008
        assert gw.model.all_connections == []

    async def test_signatures_can_be_disabled_for_local_experiments(
        self, start_gateway: StartGateway
    ) -> None:
        """verify_signatures: false accepts unsigned requests (local use only)."""
        gw = await start_gateway(
            carriers={"twilio": {"account_sid": "AC1", "auth_token": "x", "verify_signatures": False}}
        )
        status, _ = await gw.twilio.webhook(signature="anything")
        assert status == 200


class TestRouting:
    async def test_routes_pick_the_agent_by_called_number(self, start_gateway: StartGateway) -> None:
        """`To` selects the agent from routes; other numbers fall back to default_agent."""
        agents = {"receptionist": {"engine": "openai_realtime_2"}, "sales": {"engine": "openai_realtime_2"}}
        gw = await start_gateway(
            agents=agents, routes={"+15555550100": "receptionist", "+15555550199": "sales"}
        )
        _, body = await gw.twilio.webhook(to="+15555550199")
        assert gw.twilio.parse_stream(body)[1] == {"agent": "sales"}
        _, body = await gw.twilio.webhook(to="+15555550100")
        assert gw.twilio.parse_stream(body)[1] == {"agent": "receptionist"}
        _, body = await gw.twilio.webhook(to="+15550000000")
        assert gw.twilio.parse_stream(body)[1] == {"agent": "receptionist"}

    async def test_unrouted_call_without_default_is_rejected(self, start_gateway: StartGateway) -> None:
        """No route and no default_agent → <Reject/>, counted as rejected_unrouted."""
        gw = await start_gateway(default_agent=None)
        status, body = await gw.twilio.webhook(to="+15550000000")
        assert status == 200
        assert "<Reject/>" in body
        assert (
            gw.metric(
                "gateway_calls_total", carrier="twilio", agent="", engine="", outcome="rejected_unrouted"
            )
            == 1
        )

    async def test_media_stream_for_unknown_agent_is_closed(self, start_gateway: StartGateway) -> None:
        """A start frame naming an agent that does not exist closes the socket with 1008."""
        gw = await start_gateway()
        call = await gw.twilio.open_stream(
            f"{gw.config.server.media_base_url}/twilio/media", {"agent": "ghost"}
        )
        assert await call.wait_closed() == 1008
        assert gw.model.all_connections == []

    async def test_full_gateway_answers_busy(self, start_gateway: StartGateway) -> None:
        """At max_concurrent_calls the webhook answers <Reject reason="busy"/>."""
        gw = await start_gateway(
            server={
                "host": "127.0.0.1",
                "port": 1,
                "public_url": "http://127.0.0.1:1",
                "max_concurrent_calls": 1,
            }
        )
        # server.port in the document is ignored by the test server, which listens on its own port.
        await gw.twilio.call()
        await gw.model.next_connection()
        status, body = await gw.twilio.webhook()
        assert status == 200
        assert 'reason="busy"' in body


class TestModelFailure:
    async def test_model_socket_dying_hangs_up_through_rest(self, start_gateway: StartGateway) -> None:
        """The model socket closing mid-call ends the call: REST hang-up, media socket closed."""
        gw = await start_gateway()
        call = await gw.twilio.call()
        model = await gw.model.next_connection()
        await call.send_audio(tone_ulaw(100))
        await model.wait_audio(1)
        await model.close(code=1011)
        await gw.twilio_api.wait_hangup(call.call_sid)
        assert gw.twilio_api.updates[-1] == (call.call_sid, {"Status": "completed"})
        await call.wait_closed()
        assert (
            gw.metric(
                "gateway_calls_total",
                carrier="twilio",
                agent="receptionist",
                engine="openai_realtime_2",
                outcome="engine_closed",
            )
            == 1
        )

    async def test_fatal_error_event_hangs_up(self, start_gateway: StartGateway) -> None:
        """A fatal error event (e.g. beta_api_shape_disabled) ends the call with a hang-up."""
        gw = await start_gateway("beta", agent={})
        call = await gw.twilio.call()
        model = await gw.model.next_connection()
        await model.error("beta_api_shape_disabled", "The Realtime Beta API is no longer supported.")
        await gw.twilio_api.wait_hangup(call.call_sid)
        await call.wait_closed()

    async def test_unreachable_model_hangs_up(self, start_gateway: StartGateway) -> None:
        """A model that refuses the upgrade ends the call at once, counted as engine_connect_failed."""
        gw = await start_gateway()
        gw.model.refuse_with = 503
        call = await gw.twilio.call()
        await gw.twilio_api.wait_hangup(call.call_sid)
        await call.wait_closed()
        assert (
            gw.metric(
                "gateway_calls_total",
                carrier="twilio",
                agent="receptionist",
                engine="openai_realtime_2",
                outcome="engine_connect_failed",
            )
            == 1
        )

    async def test_hangup_of_an_already_ended_call_is_success(self, start_gateway: StartGateway) -> None:
        """Twilio's 404 (20404) for the hang-up means the call already ended; nothing else happens."""
        gw = await start_gateway()
        call_sid = "CA" + "f" * 32
        gw.twilio_api.status_for[call_sid] = 404
        _status, body = await gw.twilio.webhook(call_sid=call_sid)
        url, params = gw.twilio.parse_stream(body)
        call = await gw.twilio.open_stream(url, params, call_sid=call_sid)
        model = await gw.model.next_connection()
        await model.close()
        await gw.twilio_api.wait_hangup(call_sid)
        await call.wait_closed()

    async def test_max_call_duration_ends_the_call(self, start_gateway: StartGateway) -> None:
        """max_call_duration_s hangs the call up through REST, like any gateway-side ending."""
        gw = await start_gateway(agent={"max_call_duration_s": 0.3})
        call = await gw.twilio.call()
        await gw.twilio_api.wait_hangup(call.call_sid)
        await call.wait_closed()
        assert (
            gw.metric(
                "gateway_calls_total",
                carrier="twilio",
                agent="receptionist",
                engine="openai_realtime_2",
                outcome="max_duration",
            )
            == 1
        )


class TestConcurrency:
    async def test_twenty_concurrent_calls_are_isolated(self, start_gateway: StartGateway) -> None:
        """20 simultaneous calls: each caller hears only its own model's audio, each model only its caller."""
        gw = await start_gateway(agent={"audio": "g711"})
        calls = await asyncio.gather(*(gw.twilio.call() for _ in range(20)))
        models = [await gw.model.next_connection() for _ in range(20)]

        async def converse(index: int) -> None:
            await calls[index].send_audio(bytes([index + 1]) * 1600)

        async def echo(model_index: int) -> None:
            model = models[model_index]
            await model.wait_audio(1600)
            marker = model.audio_in[0]
            assert set(model.audio_in) == {marker}
            await model.speak(bytes([marker + 100]) * 2400, chunk_bytes=800)

        await asyncio.gather(*(converse(i) for i in range(20)), *(echo(i) for i in range(20)))
        for index, call in enumerate(calls):
            await call.wait_audio(2400)
            assert set(call.audio_out) == {index + 101}
        assert gw.metric("gateway_calls_active", carrier="twilio", engine="openai_realtime_2") == 20
        await asyncio.gather(*(call.stop() for call in calls))
        await asyncio.gather(*(call.wait_closed() for call in calls))
        assert (
            gw.metric(
                "gateway_calls_total",
                carrier="twilio",
                agent="receptionist",
                engine="openai_realtime_2",
                outcome="caller_hangup",
            )
            == 20
        )


class TestEndpoints:
    async def test_health_ready_and_metrics(self, start_gateway: StartGateway) -> None:
        """/healthz and /readyz answer 200; /metrics serves the Prometheus text format."""
        gw = await start_gateway()
        async with gw.http.get(gw.url + "/healthz") as response:
            assert response.status == 200
        async with gw.http.get(gw.url + "/readyz") as response:
            assert response.status == 200
        async with gw.http.get(gw.url + "/metrics") as response:
            assert response.status == 200
            text = await response.text()
        for name in ("gateway_calls_total", "gateway_calls_active", "gateway_call_duration_seconds"):
            assert f"# TYPE {name.removesuffix('_total')}" in text


class TestShutdown:
    async def test_shutdown_hangs_up_live_calls_and_turns_unready(self, start_gateway: StartGateway) -> None:
        """Stopping the server ends live calls through REST hang-up, counted with outcome `shutdown`."""
        gw = await start_gateway()
        call = await gw.twilio.call()
        await gw.model.next_connection()
        await gw.app.shutdown()
        await gw.twilio_api.wait_hangup(call.call_sid)
        await call.wait_closed()
        async with gw.http.get(gw.url + "/readyz") as response:
            assert response.status == 503
        assert (
            gw.metric(
                "gateway_calls_total",
                carrier="twilio",
                agent="receptionist",
                engine="openai_realtime_2",
                outcome="shutdown",
            )
            == 1
        )
