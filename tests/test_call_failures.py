"""Calls that end from the gateway's side (model failures, timeouts, shutdown) and model trouble a
call must survive."""

from __future__ import annotations

import asyncio
import base64

import pytest

from gateway import keys
from gateway.server import drain
from tests.conftest import Gateway, StartGateway
from tests.fakes.signals import tone_ulaw


def ended(gw: Gateway, outcome: str) -> float:
    return gw.metric(
        "gateway_calls_total",
        carrier="twilio",
        agent="receptionist",
        engine=gw.config.agents["receptionist"].engine,
        outcome=outcome,
    )


class TestModelFailure:
    async def test_model_socket_dying_hangs_up_through_rest(self, start_gateway: StartGateway) -> None:
        """The model socket closing mid-call for a reason a new socket would not cure (1008, policy)
        ends the call: REST hang-up, media socket closed. (Retryable drops: test_reconnect.py.)"""
        gw = await start_gateway()
        call = await gw.twilio.call()
        model = await gw.model.next_connection()
        await call.send_audio(tone_ulaw(100))
        await model.wait_audio(1)
        await model.close(code=1008)
        await gw.twilio_api.wait_hangup(call.call_sid)
        assert gw.twilio_api.updates[-1] == (call.call_sid, {"Status": "completed"})
        await call.wait_closed()
        assert ended(gw, "engine_closed") == 1
        assert len(gw.app[keys.CALLS]) == 0

    async def test_fatal_error_event_hangs_up(self, start_gateway: StartGateway) -> None:
        """A fatal error event (the retired beta protocol's answer) ends the call with a hang-up."""
        gw = await start_gateway("beta", agent={})
        call = await gw.twilio.call()
        model = await gw.model.next_connection()
        await model.error("beta_api_shape_disabled", "The Realtime Beta API is no longer supported.")
        await gw.twilio_api.wait_hangup(call.call_sid)
        await call.wait_closed()
        assert ended(gw, "engine_error") == 1

    async def test_rejected_session_update_is_fatal(self, start_gateway: StartGateway) -> None:
        """An error answering our session.update ends the call: unconfigured audio would be noise."""
        gw = await start_gateway()
        call = await gw.twilio.call()
        model = await gw.model.next_connection()
        update = (await model.wait_for("session.update"))[0]
        await model.send(
            {
                "type": "error",
                "error": {
                    "type": "invalid_request_error",
                    "code": "unknown_parameter",
                    "message": "Unknown parameter",
                    "event_id": update["event_id"],
                },
            }
        )
        await gw.twilio_api.wait_hangup(call.call_sid)
        await call.wait_closed()
        assert ended(gw, "engine_error") == 1

    async def test_unreachable_model_hangs_up(self, start_gateway: StartGateway) -> None:
        """A model that refuses the upgrade ends the call at once, counted as engine_connect_failed."""
        gw = await start_gateway()
        gw.model.refuse_with = 503
        call = await gw.twilio.call()
        await gw.twilio_api.wait_hangup(call.call_sid)
        await call.wait_closed()
        assert ended(gw, "engine_connect_failed") == 1

    async def test_hangup_of_an_already_ended_call_is_success(self, start_gateway: StartGateway) -> None:
        """Twilio's 404 (20404) on hang-up means the call already ended: the call is torn down cleanly."""
        gw = await start_gateway()
        call_sid = "CA" + "f" * 32
        gw.twilio_api.status_for[call_sid] = 404
        _, body = await gw.twilio.webhook(call_sid=call_sid)
        url, params = gw.twilio.parse_stream(body)
        call = await gw.twilio.open_stream(url, params, call_sid=call_sid)
        model = await gw.model.next_connection()
        await model.close()
        await gw.twilio_api.wait_hangup(call_sid)
        await call.wait_closed()
        assert ended(gw, "engine_closed") == 1
        assert gw.metric("gateway_calls_active", carrier="twilio", engine="openai_realtime_2") == 0

    async def test_max_call_duration_ends_the_call(self, start_gateway: StartGateway) -> None:
        """max_call_duration_s hangs the call up through REST, like any gateway-side ending."""
        gw = await start_gateway(agent={"max_call_duration_s": 0.3})
        call = await gw.twilio.call()
        await gw.twilio_api.wait_hangup(call.call_sid)
        await call.wait_closed()
        assert ended(gw, "max_duration") == 1

    async def test_silent_carrier_socket_ends_the_call(self, start_gateway: StartGateway) -> None:
        """A media socket that stops sending frames (Twilio sends 50 a second) is treated as dead after
        server.limits.idle_timeout_s, even though it answers the heartbeat ping sent in between (a
        pong must not restart the idle clock)."""
        server = {"host": "127.0.0.1", "port": 1, "public_url": "http://127.0.0.1:1"}
        gw = await start_gateway(server={**server, "limits": {"idle_timeout_s": 1.5, "heartbeat_s": 1}})
        call = await gw.twilio.call()
        await gw.model.next_connection()
        await gw.twilio_api.wait_hangup(call.call_sid)
        await call.wait_closed()
        assert ended(gw, "carrier_timeout") == 1

    async def test_streaming_socket_outlives_the_idle_timeout(self, start_gateway: StartGateway) -> None:
        """The idle watchdog moves its deadline with each frame: a carrier streaming for three idle
        timeouts is never cut off, and the same call ends as carrier_timeout once it falls silent."""
        server = {"host": "127.0.0.1", "port": 1, "public_url": "http://127.0.0.1:1"}
        gw = await start_gateway(server={**server, "limits": {"idle_timeout_s": 1.0}})
        call = await gw.twilio.call()
        await gw.model.next_connection()
        for _ in range(60):  # 3 s at a carrier's pace (paced, not waited on: 20x the idle margin)
            await call.send_audio(b"\xff" * 160)
            await asyncio.sleep(0.05)
        assert gw.twilio_api.hangups() == []
        assert ended(gw, "carrier_timeout") == 0
        await gw.twilio_api.wait_hangup(call.call_sid)
        await call.wait_closed()
        assert ended(gw, "carrier_timeout") == 1


class TestModelTrouble:
    @pytest.mark.parametrize("audio", ["g711", "pcm24k"])
    async def test_malformed_model_frames_are_skipped(self, start_gateway: StartGateway, audio: str) -> None:
        """Malformed model events are logged and skipped; the call goes on and later audio plays."""
        gw = await start_gateway(agent={"audio": audio})
        call = await gw.twilio.call()
        model = await gw.model.next_connection()
        await model.ws.send_str("not json")
        await model.ws.send_str('["a", "list"]')
        await model.send({"type": "error", "error": "boom"})
        await model.send({"type": "response.created", "response": None})
        await model.send(
            {"type": "response.output_audio.delta", "response_id": "r", "item_id": "i", "delta": None}
        )
        await model.send(
            {
                "type": "response.output_audio.delta",
                "response_id": "r",
                "item_id": "i",
                "delta": 'AA"}, "x": "',
            }
        )
        await model.send({"type": "input_audio_buffer.speech_started", "audio_start_ms": "soon"})
        good = b"\xd5" * 800 if audio == "g711" else b"\x00\x01" * 2400
        await model.send(
            {
                "type": "response.output_audio.delta",
                "response_id": "r",
                "item_id": "i",
                "delta": base64.b64encode(good).decode(),
            }
        )
        await call.wait_audio(1)
        if audio == "g711":
            assert bytes(call.audio_out) == good
        assert gw.twilio_api.hangups() == []

    async def test_malformed_caller_payload_is_not_spliced_into_model_events(
        self, start_gateway: StartGateway
    ) -> None:
        """A media payload that is not base64 is dropped, never forwarded into a model event."""
        gw = await start_gateway(agent={"audio": "g711"})
        call = await gw.twilio.call()
        model = await gw.model.next_connection()
        await call.send({"event": "media", "media": {"track": "inbound", "payload": 'AA", "type": "x'}})
        await call.send_audio(b"\x7f" * 160)
        await model.wait_audio(160)
        assert [e["audio"] for e in model.of_type("input_audio_buffer.append")] == [
            base64.b64encode(b"\x7f" * 160).decode()
        ]


class TestShutdown:
    async def test_drain_lets_live_calls_finish(self, start_gateway: StartGateway) -> None:
        """Draining: readyz 503 and new calls busy at once, while the live call carries on to its end."""
        gw = await start_gateway(agent={"audio": "g711"})
        call = await gw.twilio.call()
        model = await gw.model.next_connection()
        draining = asyncio.create_task(drain(gw.app, timeout_s=5))
        async with gw.http.get(gw.url + "/readyz") as response:
            assert response.status == 503
        _, body = await gw.twilio.webhook()
        assert 'reason="busy"' in body
        await model.speak(b"\x44" * 800, chunk_bytes=800)  # the live call still works
        await call.wait_audio(800)
        await call.stop()
        assert await draining is True
        assert gw.twilio_api.hangups() == []
        assert ended(gw, "caller_hangup") == 1

    async def test_calls_left_after_the_drain_timeout_are_hung_up(self, start_gateway: StartGateway) -> None:
        """Calls still live when drain_timeout_s runs out are cancelled at shutdown and hung up."""
        gw = await start_gateway()
        call = await gw.twilio.call()
        await gw.model.next_connection()
        assert await drain(gw.app, timeout_s=0.1) is False
        await gw.app.shutdown()
        await gw.twilio_api.wait_hangup(call.call_sid)
        await call.wait_closed()
        assert ended(gw, "shutdown") == 1

    async def test_force_event_cuts_the_drain_short(self, start_gateway: StartGateway) -> None:
        """A second signal (the force event) ends the drain at once even with calls live."""
        gw = await start_gateway()
        await gw.twilio.call()
        await gw.model.next_connection()
        force = asyncio.Event()
        force.set()
        assert await asyncio.wait_for(drain(gw.app, timeout_s=30, force=force), 5) is False
