"""Telnyx end to end: TeXML and Call Control calls with each OpenAI dialect, Ed25519 webhook
signatures, media tokens, PCMA, hang-up and cost (protocols.md §D)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from gateway import keys
from gateway.audio import ALAW_8K, PCM_24K, Converter, pcm16_to_alaw
from tests.conftest import Gateway, StartGateway
from tests.fakes.signals import PCM24_MS, tone_pcm24, tone_ulaw
from tests.fakes.telnyx import FakeTelnyxCall, new_call_control_id

MS = 8


def tone_alaw(ms: int) -> bytes:
    t = np.arange(ms * 8) / 8000
    return pcm16_to_alaw((0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes())


def ended(gw: Gateway, outcome: str) -> float:
    return gw.metric("gateway_calls_total", carrier="telnyx", agent="receptionist",
                     engine=gw.config.agents["receptionist"].engine, outcome=outcome)  # fmt: skip


async def converse_g711(gw: Gateway, call: FakeTelnyxCall, caller: bytes, agent: bytes) -> None:
    """Caller audio reaches the model unchanged and model audio reaches the caller unchanged."""
    model = await gw.model.next_connection()
    await call.send_audio(caller)
    await model.wait_audio(len(caller))
    assert bytes(model.audio_in) == caller
    await model.speak(agent, chunk_bytes=800)
    await call.wait_audio(len(agent))
    assert bytes(call.audio_out) == agent
    await call.stop()
    await call.wait_closed()


class TestTeXML:
    @pytest.mark.parametrize(("dialect", "method"), [("ga", "GET"), ("beta", "POST")])
    async def test_texml_call_end_to_end(
        self, start_gateway: StartGateway, dialect: str, method: str
    ) -> None:
        """A TeXML call (GET or POST fetch) bridges to the model in each dialect, byte exact in g711."""
        gw = await start_gateway(dialect, agent={"audio": "g711"})
        call = await gw.telnyx.call_texml(method=method)
        await converse_g711(gw, call, tone_ulaw(500), tone_ulaw(700))
        assert ended(gw, "caller_hangup") == 1
        assert gw.telnyx_api.hangups() == []

    async def test_texml_streams_in_rtp_mode_with_the_configured_codec(
        self, start_gateway: StartGateway
    ) -> None:
        """The <Stream> always says bidirectionalMode="rtp" (else one-way audio) and names the codec."""
        for codec in ("PCMU", "PCMA"):
            gw = await start_gateway(telnyx={"codec": codec})
            status, body = await gw.telnyx.texml_webhook()
            assert status == 200
            url, attrs, params = gw.telnyx.parse_texml_stream(body)
            assert attrs["bidirectionalMode"] == "rtp"
            assert attrs["bidirectionalCodec"] == attrs["codec"] == codec
            assert attrs["track"] == "inbound_track"
            assert url.startswith(f"{gw.config.server.media_base_url}/telnyx/media/")
            assert params == {}
            for secret in ("+15551230000", "+15555550100", "KEY-telnyx-test"):
                assert secret not in body

    async def test_unrouted_and_busy_texml_calls_are_rejected(self, start_gateway: StartGateway) -> None:
        """No route and no default → <Reject/>; a full gateway → <Reject reason="busy"/>."""
        gw = await start_gateway(default_agent=None, routes={"+15555550100": "receptionist"},
                                 server={"host": "127.0.0.1", "port": 1, "public_url": "http://127.0.0.1:1",
                                         "max_concurrent_calls": 1})  # fmt: skip
        _, body = await gw.telnyx.texml_webhook(to="+15550000000")
        assert "<Reject/>" in body
        _, first = await gw.telnyx.texml_webhook()
        assert "<Stream" in first
        _, second = await gw.telnyx.texml_webhook()
        assert 'reason="busy"' in second


class TestCallControl:
    @pytest.mark.parametrize("dialect", ["ga", "beta"])
    async def test_call_control_call_end_to_end(self, start_gateway: StartGateway, dialect: str) -> None:
        """call.initiated → answer action with an rtp stream → media → model, in each dialect."""
        gw = await start_gateway(dialect, agent={"audio": "g711"})
        call = await gw.telnyx.call_control(gw.telnyx_api)
        answer = gw.telnyx_api.answers()[0][1]
        assert answer["stream_bidirectional_mode"] == "rtp"
        assert answer["stream_bidirectional_codec"] == answer["stream_codec"] == "PCMU"
        assert answer["stream_track"] == "inbound_track"
        assert answer["stream_url"].startswith(f"{gw.config.server.media_base_url}/telnyx/media/")
        await converse_g711(gw, call, tone_ulaw(300), tone_ulaw(400))
        status, _ = await gw.telnyx.call_hangup(call.call_control_id)
        assert status == 200

    async def test_unrouted_call_is_rejected_through_the_api(self, start_gateway: StartGateway) -> None:
        """An unrouted call.initiated is rejected with the reject action; nothing is answered."""
        gw = await start_gateway(default_agent=None)
        call_control_id, status, _ = await gw.telnyx.call_initiated(to="+15550000000")
        assert status == 200
        body = await gw.telnyx_api.wait_action(call_control_id, "reject")
        assert body == {"cause": "CALL_REJECTED"}
        assert gw.telnyx_api.answers() == []

    async def test_other_events_are_acknowledged(self, start_gateway: StartGateway) -> None:
        """Events the gateway does not act on still get a 200 (Telnyx retries anything else)."""
        gw = await start_gateway()
        status, _ = await gw.telnyx.call_control_event(
            "call.machine.detection.ended", {"call_control_id": new_call_control_id()}
        )
        assert status == 200

    async def test_model_failure_hangs_up_through_the_api(self, start_gateway: StartGateway) -> None:
        """The model socket dying ends the call with the hangup action; an already-ended call is fine."""
        gw = await start_gateway()
        call = await gw.telnyx.call_control(gw.telnyx_api)
        gw.telnyx_api.status_for[(call.call_control_id, "hangup")] = 422  # 90018: already ended
        model = await gw.model.next_connection()
        await model.close(code=1008)  # not retried: a new socket would be refused the same way
        await gw.telnyx_api.wait_action(call.call_control_id, "hangup")
        await call.wait_closed()
        assert ended(gw, "engine_closed") == 1
        assert gw.metric("gateway_calls_active", carrier="telnyx", engine="openai_realtime_2") == 0


class TestCallControlBookkeeping:
    async def test_hangup_event_frees_the_place_of_an_unstreamed_call(
        self, start_gateway: StartGateway
    ) -> None:
        """A call answered but hung up before streaming gives its place back on call.hangup."""
        gw = await start_gateway(server=_one_call_server())
        first, _, _ = await gw.telnyx.call_initiated()
        await gw.telnyx_api.wait_action(first, "answer")
        second, _, _ = await gw.telnyx.call_initiated()
        assert await gw.telnyx_api.wait_action(second, "reject") == {"cause": "USER_BUSY"}
        await gw.telnyx.call_hangup(first)
        third, _, _ = await gw.telnyx.call_initiated()
        assert "stream_url" in await gw.telnyx_api.wait_action(third, "answer")

    @pytest.mark.parametrize("status", [500, 422])
    async def test_failed_or_too_late_answer_frees_the_place(
        self, start_gateway: StartGateway, status: int
    ) -> None:
        """An answer that fails (500) or finds the call gone (422 / 90018) does not keep a place."""
        gw = await start_gateway(server=_one_call_server())
        call_id = new_call_control_id()
        gw.telnyx_api.status_for[(call_id, "answer")] = status
        await gw.telnyx.call_initiated(call_control_id=call_id)
        await gw.telnyx_api.wait_action(call_id, "answer")
        nxt, _, _ = await gw.telnyx.call_initiated()
        assert "stream_url" in await gw.telnyx_api.wait_action(nxt, "answer")

    async def test_repeated_call_initiated_answers_once(self, start_gateway: StartGateway) -> None:
        """Telnyx retrying call.initiated for a call already answered does not answer it again."""
        gw = await start_gateway()
        call_id = new_call_control_id()
        await gw.telnyx.call_initiated(call_control_id=call_id)
        await gw.telnyx_api.wait_action(call_id, "answer")
        _, status, _ = await gw.telnyx.call_initiated(call_control_id=call_id)
        assert status == 200
        assert len(gw.telnyx_api.answers()) == 1

    async def test_streaming_failed_hangs_up_and_frees_the_place(self, start_gateway: StartGateway) -> None:
        """streaming.failed after an answer hangs the caller up instead of leaving them in silence."""
        gw = await start_gateway(server=_one_call_server())
        call_id, _, _ = await gw.telnyx.call_initiated()
        await gw.telnyx_api.wait_action(call_id, "answer")
        status, _ = await gw.telnyx.call_control_event(
            "streaming.failed", {"call_control_id": call_id, "failure_reason": "connection refused"}
        )
        assert status == 200
        await gw.telnyx_api.wait_action(call_id, "hangup")
        nxt, _, _ = await gw.telnyx.call_initiated()
        assert "stream_url" in await gw.telnyx_api.wait_action(nxt, "answer")

    async def test_refused_stream_of_an_answered_call_hangs_it_up(self, start_gateway: StartGateway) -> None:
        """A stream the gateway refuses after answering (here: a codec it cannot carry) is hung up."""
        gw = await start_gateway()
        call_id, _, _ = await gw.telnyx.call_initiated()
        answer = await gw.telnyx_api.wait_action(call_id, "answer")
        call = await gw.telnyx.open_stream(answer["stream_url"], call_control_id=call_id, encoding="G722")
        assert await call.wait_closed() == 1008
        assert call.close_reason == "unsupported codec G722"
        await gw.telnyx_api.wait_action(call_id, "hangup")
        assert gw.model.all_connections == []

    async def test_twilio_token_is_not_a_telnyx_token(self, start_gateway: StartGateway) -> None:
        """A token minted for a Twilio call does not open a Telnyx media socket."""
        gw = await start_gateway()
        _, body = await gw.twilio.webhook(call_sid="CA" + "5" * 32)
        token = gw.twilio.parse_stream(body)[1]["token"]
        call = await gw.telnyx.open_stream(
            f"{gw.config.server.media_base_url}/telnyx/media/{token}", call_control_id="CA" + "5" * 32
        )
        assert await call.wait_closed() == 1008
        assert call.close_reason == "stream token invalid"


def _one_call_server() -> dict[str, object]:
    # server.port/public_url are placeholders: the test server listens on its own port.
    return {"host": "127.0.0.1", "port": 1, "public_url": "http://127.0.0.1:1", "max_concurrent_calls": 1}


class TestSignatures:
    @pytest.mark.parametrize(
        ("skew_s", "signature", "reason"),
        [
            (0, "c2lnbmF0dXJl", "bad_signature"),
            (-301, None, "stale_timestamp"),
            (301, None, "stale_timestamp"),
            (0, "", "missing_signature"),
        ],
    )
    async def test_bad_old_future_or_missing_signatures_are_403(
        self, start_gateway: StartGateway, skew_s: int, signature: str | None, reason: str
    ) -> None:
        """Both webhooks refuse a wrong signature and timestamps beyond the tolerance (replays)."""
        gw = await start_gateway()
        timestamp = int(time.time()) + skew_s
        status, _ = await gw.telnyx.texml_webhook(method="POST", timestamp=timestamp, signature=signature)
        assert status == 403
        _, status, _ = await gw.telnyx.call_initiated(timestamp=timestamp, signature=signature)
        assert status == 403
        assert gw.metric("gateway_webhook_rejections_total", carrier="telnyx", reason=reason) == 2
        assert gw.telnyx_api.actions == []

    @pytest.mark.parametrize("skew_s", [-299, 299])
    async def test_within_tolerance_is_accepted(self, start_gateway: StartGateway, skew_s: int) -> None:
        """Signatures up to 300 s old or early are good, on both webhooks."""
        gw = await start_gateway()
        timestamp = int(time.time()) + skew_s
        status, _ = await gw.telnyx.texml_webhook(method="POST", timestamp=timestamp)
        assert status == 200
        _, status, _ = await gw.telnyx.call_initiated(timestamp=timestamp)
        assert status == 200

    async def test_signature_over_another_body_is_refused(self, start_gateway: StartGateway) -> None:
        """A genuine signature of one body does not vouch for another."""
        gw = await start_gateway()
        timestamp = str(int(time.time()))
        forged = gw.telnyx.keys.sign(timestamp, b"CallSid=v3%3Aother&To=%2B15555550100")
        status, _ = await gw.telnyx.texml_webhook(method="POST", timestamp=int(timestamp), signature=forged)
        assert status == 403

    async def test_get_fetch_needs_the_texml_secret(self, start_gateway: StartGateway) -> None:
        """GET fetches (query not covered by a signature) need `?secret=`; wrong or absent → 403."""
        gw = await start_gateway()
        status, _ = await gw.telnyx.texml_webhook(method="GET")
        assert status == 200
        gw.telnyx.texml_secret = "wrong"
        status, _ = await gw.telnyx.texml_webhook(method="GET")
        assert status == 403
        gw.telnyx.texml_secret = None
        status, _ = await gw.telnyx.texml_webhook(method="GET")
        assert status == 403
        assert gw.metric("gateway_webhook_rejections_total", carrier="telnyx", reason="bad_texml_secret") == 2

    async def test_get_fetch_without_a_configured_secret_is_refused(
        self, start_gateway: StartGateway
    ) -> None:
        """Without carriers.telnyx.texml_secret, GET fetches cannot be authenticated and are refused."""
        gw = await start_gateway(telnyx={"texml_secret": None})
        status, body = await gw.telnyx.texml_webhook(method="GET")
        assert status == 403
        assert "texml_secret" in body
        status, _ = await gw.telnyx.texml_webhook(method="POST")
        assert status == 200

    async def test_post_fetch_ignores_unsigned_query_parameters(self, start_gateway: StartGateway) -> None:
        """Parameters in a POST's query string are not signed, so they are not read."""
        gw = await start_gateway(default_agent=None)
        timestamp = str(int(time.time()))
        body = b"CallSid=v3%3Aabc&To=%2B15550000000"  # an unrouted number, signed
        headers = {
            "telnyx-timestamp": timestamp,
            "telnyx-signature-ed25519": gw.telnyx.keys.sign(timestamp, body),
            "Content-Type": "application/x-www-form-urlencoded",
        }
        async with gw.http.post(
            gw.url + "/telnyx/voice?To=%2B15555550100", data=body, headers=headers
        ) as response:
            assert response.status == 200
            assert "<Reject/>" in await response.text()


class TestMediaTokens:
    async def test_missing_token_is_closed_before_any_model_socket(self, start_gateway: StartGateway) -> None:
        """A media socket without a token is closed with 1008; no model socket is opened."""
        gw = await start_gateway()
        call = await gw.telnyx.open_stream(
            f"{gw.config.server.media_base_url}/telnyx/media",
            call_control_id=new_call_control_id(),
            send_start=False,
        )
        assert await call.wait_closed() == 1008
        assert call.close_reason == "stream token missing"
        assert gw.model.all_connections == []

    async def test_forged_token_is_refused(self, start_gateway: StartGateway) -> None:
        """A token the gateway did not sign is refused."""
        gw = await start_gateway()
        call = await gw.telnyx.open_stream(f"{gw.config.server.media_base_url}/telnyx/media/abc.def",
                                           call_control_id=new_call_control_id())  # fmt: skip
        assert await call.wait_closed() == 1008
        assert call.close_reason == "stream token invalid"

    async def test_reused_token_is_refused(self, start_gateway: StartGateway) -> None:
        """A stream URL works once: the same token a second time is refused."""
        gw = await start_gateway()
        call_id = new_call_control_id()
        _, body = await gw.telnyx.texml_webhook(call_sid=call_id)
        url, _, _ = gw.telnyx.parse_texml_stream(body)
        first = await gw.telnyx.open_stream(url, call_control_id=call_id)
        await gw.model.next_connection()
        again = await gw.telnyx.open_stream(url, call_control_id=call_id)
        assert await again.wait_closed() == 1008
        assert again.close_reason == "stream token reused"
        await first.stop()
        await first.wait_closed()

    async def test_expired_token_is_refused(self, start_gateway: StartGateway) -> None:
        """A token older than its lifetime is refused."""
        gw = await start_gateway()
        gw.app[keys.TOKENS]._ttl_s = -1.0  # every token the webhook issues is already stale
        call_id = new_call_control_id()
        _, body = await gw.telnyx.texml_webhook(call_sid=call_id)
        url, _, _ = gw.telnyx.parse_texml_stream(body)
        call = await gw.telnyx.open_stream(url, call_control_id=call_id)
        assert await call.wait_closed() == 1008
        assert call.close_reason == "stream token expired"
        assert gw.model.all_connections == []

    async def test_token_for_another_call_is_refused(self, start_gateway: StartGateway) -> None:
        """A valid token presented with another call's start frame is refused."""
        gw = await start_gateway()
        _, body = await gw.telnyx.texml_webhook(call_sid=new_call_control_id())
        url, _, _ = gw.telnyx.parse_texml_stream(body)
        call = await gw.telnyx.open_stream(url, call_control_id=new_call_control_id())
        assert await call.wait_closed() == 1008
        assert call.close_reason == "stream token wrong_call"
        assert gw.model.all_connections == []


class TestPCMA:
    @pytest.mark.parametrize("dialect", ["ga", "beta"])
    async def test_pcma_passthrough_is_byte_exact(self, start_gateway: StartGateway, dialect: str) -> None:
        """An A-law leg in g711 mode: the model is told pcma / g711_alaw and bytes pass untouched."""
        gw = await start_gateway(dialect, agent={"audio": "g711"}, telnyx={"codec": "PCMA"})
        call = await gw.telnyx.call_texml()
        assert call.encoding == "PCMA"
        model = await gw.model.next_connection()
        update = (await model.wait_for("session.update"))[0]["session"]
        if dialect == "ga":
            assert (
                update["audio"]["input"]["format"]
                == update["audio"]["output"]["format"]
                == {"type": "audio/pcma"}
            )
        else:
            assert update["input_audio_format"] == update["output_audio_format"] == "g711_alaw"
        gw.model.connections.put_nowait(model)  # hand it back to converse_g711
        await converse_g711(gw, call, tone_alaw(400), tone_alaw(600))

    async def test_pcma_transcoding_is_exact(self, start_gateway: StartGateway) -> None:
        """An A-law leg in pcm24k mode: A-law 8 kHz ⇄ PCM16 24 kHz, byte for byte what reference
        converters produce from the same chunks (nothing lost at frame edges, tail flushed)."""
        gw = await start_gateway(agent={"audio": "pcm24k"}, telnyx={"codec": "PCMA"})
        call = await gw.telnyx.call_control(gw.telnyx_api)
        model = await gw.model.next_connection()
        caller = tone_alaw(400)
        up = Converter(ALAW_8K, PCM_24K)
        expected_up = b"".join(up.convert(caller[i : i + 160]) for i in range(0, len(caller), 160))
        await call.send_audio(caller)
        await model.wait_audio(len(expected_up))
        await call.send_audio(tone_alaw(20))  # one more frame: everything before it has been forwarded
        await model.wait_for("input_audio_buffer.append", count=21)
        tail = up.convert(tone_alaw(20))
        assert bytes(model.audio_in) == expected_up + tail
        agent = tone_pcm24(600)
        chunk = 100 * PCM24_MS
        down = Converter(PCM_24K, ALAW_8K)
        expected_down = b"".join(down.convert(agent[i : i + chunk]) for i in range(0, len(agent), chunk))
        expected_down += down.flush()
        assert len(expected_down) == 600 * MS
        await model.speak(agent, chunk_bytes=chunk)
        await call.wait_audio(len(expected_down))
        assert bytes(call.audio_out) == expected_down
        await call.stop()
        await call.wait_closed()


class TestTelnyxCost:
    async def test_telephony_minutes_are_priced_for_telnyx(self, start_gateway: StartGateway) -> None:
        """A Telnyx call is billed one started minute at $0.0035."""
        gw = await start_gateway(agent={"audio": "g711"})
        call = await gw.telnyx.call_texml()
        await gw.model.next_connection()
        await call.stop()
        await call.wait_closed()
        assert gw.metric("gateway_cost_usd_total", agent="receptionist", model="gpt-realtime-2",
                         component="telephony") == pytest.approx(0.0035)  # fmt: skip
