"""What the carrier itself says before hanging up a call the agent cannot finish: the goodbye when the
drain time runs out, and the apology when the model is gone (`server.announcements`); and which calls
the drain waits for before it comes to that."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET

from gateway import keys
from gateway.schema import AnnouncementsConfig
from gateway.server import drain
from tests.conftest import Gateway, StartGateway
from tests.test_tools import TRANSFER

SHUTDOWN = AnnouncementsConfig().shutdown
ENGINE_FAILURE = AnnouncementsConfig().engine_failure
# (server.port is ignored by the test server, which listens on its own port.)
SERVER = {"host": "127.0.0.1", "port": 1, "public_url": "http://127.0.0.1:1"}


def ended(gw: Gateway, carrier: str, outcome: str) -> float:
    return gw.metric("gateway_calls_total", carrier=carrier, agent="receptionist",
                     engine=gw.config.agents["receptionist"].engine, outcome=outcome)  # fmt: skip


def say_element(twiml: str) -> ET.Element:
    root = ET.fromstring(twiml)  # noqa: S314 - the gateway under test wrote it
    assert [verb.tag for verb in root] == ["Say", "Hangup"], twiml
    return root[0]


class TestDrainGoodbye:
    async def test_calls_left_after_the_drain_hear_a_goodbye_and_are_hung_up(
        self, start_gateway: StartGateway
    ) -> None:
        """When drain_timeout_s runs out, each live call gets <Say>goodbye</Say><Hangup/> from Twilio
        (one call update), ends as `shutdown`, and the drain reports it did not finish in time."""
        gw = await start_gateway()
        call = await gw.twilio.call()
        await gw.model.next_connection()
        assert await drain(gw.app, timeout_s=0.05) is False
        [update] = gw.twilio_api.updates_of(call.call_sid)
        say = say_element(update["Twiml"])
        assert say.text == SHUTDOWN
        assert say.attrib == {"language": "en-US"}
        assert gw.twilio_api.said(call.call_sid) == [SHUTDOWN]
        assert len(gw.app[keys.CALLS]) == 0
        assert ended(gw, "twilio", "shutdown") == 1
        await call.wait_closed()

    async def test_telnyx_goodbye_is_spoken_before_the_hang_up(self, start_gateway: StartGateway) -> None:
        """On Telnyx the goodbye is a `speak` action; the hang-up waits for `call.speak.ended`."""
        gw = await start_gateway()
        call = await gw.telnyx.call_control(gw.telnyx_api)
        await gw.model.next_connection()
        draining = asyncio.create_task(drain(gw.app, timeout_s=0.05, goodbye_timeout_s=20))
        speak = await gw.telnyx_api.wait_action(call.call_control_id, "speak")
        assert speak == {"payload": SHUTDOWN, "payload_type": "text", "voice": "female", "language": "en-US"}
        assert call.call_control_id not in gw.telnyx_api.hangups()
        assert not draining.done()
        status, _ = await gw.telnyx.speak_ended(call.call_control_id)
        assert status == 200
        await gw.telnyx_api.wait_action(call.call_control_id, "hangup")
        assert await draining is False
        assert ended(gw, "telnyx", "shutdown") == 1

    async def test_a_second_signal_skips_the_goodbyes(self, start_gateway: StartGateway) -> None:
        """With the force event set, nobody is told goodbye: shutdown hangs the calls up at once."""
        gw = await start_gateway()
        call = await gw.twilio.call()
        await gw.model.next_connection()
        force = asyncio.Event()
        force.set()
        assert await drain(gw.app, timeout_s=30, force=force) is False
        assert gw.twilio_api.updates_of(call.call_sid) == []
        await gw.app.shutdown()
        assert gw.twilio_api.updates_of(call.call_sid) == [{"Status": "completed"}]

    async def test_an_empty_text_means_a_plain_hang_up(self, start_gateway: StartGateway) -> None:
        """`announcements.shutdown: ""` turns the goodbye off: Status=completed, nothing said."""
        gw = await start_gateway(server={**SERVER, "announcements": {"shutdown": ""}})
        call = await gw.twilio.call()
        await gw.model.next_connection()
        assert await drain(gw.app, timeout_s=0.05) is False
        assert gw.twilio_api.updates_of(call.call_sid) == [{"Status": "completed"}]

    async def test_a_transfer_in_flight_when_the_goodbye_comes_is_not_hung_up(
        self, start_gateway: StartGateway
    ) -> None:
        """The goodbye lands while the transfer's <Dial> update is still in flight: the teardown lets
        the request finish, and as Twilio took it the call ends as `transferred`, with no <Say> and
        <Hangup/> update undoing the <Dial>."""
        gw = await start_gateway(agent={"audio": "g711", "tools": [TRANSFER]})
        call = await gw.twilio.call()
        model = await gw.model.next_connection()
        hold = gw.twilio_api.hold_updates()
        await model.function_call("call_t", "transfer_call", '{"destination": "front_desk"}')
        await model.wait_for("conversation.item.create")  # the tool's output
        await model.speak(b"\x55" * 800, chunk_bytes=800)  # "transferring you now"
        await gw.twilio_api.wait_update(call.call_sid)  # the <Dial>, not answered yet
        await gw.app[keys.CALLS].shut_down_all()
        await asyncio.wait_for(model.closed.wait(), 5)
        hold.set()
        await call.wait_closed()
        [update] = gw.twilio_api.updates_of(call.call_sid)
        assert "<Dial>" in update["Twiml"]
        assert gw.twilio_api.said(call.call_sid) == []
        assert ended(gw, "twilio", "transferred") == 1
        assert ended(gw, "twilio", "shutdown") == 0


class TestDrainWaitsForAnsweredCalls:
    async def test_a_call_answered_but_not_yet_streaming_keeps_the_drain_open(
        self, start_gateway: StartGateway
    ) -> None:
        """SIGTERM just after a webhook was answered with <Connect><Stream>: the carrier opens the media
        socket a moment later. The drain must not report "drained" (serve() then closes the listener
        and the caller is dropped) while such a reservation is outstanding."""
        gw = await start_gateway()
        status, body = await gw.twilio.webhook(call_sid="CA" + "7" * 32)
        assert status == 200 and "<Stream" in body
        assert gw.app[keys.CALLS].holds("CA" + "7" * 32)
        assert await drain(gw.app, timeout_s=0.2) is False

    async def test_its_media_is_admitted_during_the_drain_which_ends_with_the_call(
        self, start_gateway: StartGateway
    ) -> None:
        """The media socket of a call answered before the drain connects during it: the call is taken
        (not refused as busy, while a new call is), runs, and the drain reports drained once it ends."""
        gw = await start_gateway(agent={"audio": "g711"})
        call_sid = "CA" + "8" * 32
        _, body = await gw.twilio.webhook(call_sid=call_sid)
        stream_url, params = gw.twilio.parse_stream(body)
        draining = asyncio.create_task(drain(gw.app, timeout_s=30))
        _, refused = await gw.twilio.webhook()
        assert 'reason="busy"' in refused
        call = await gw.twilio.open_stream(stream_url, params, call_sid=call_sid)
        model = await gw.model.next_connection()
        await call.send_audio(b"\x12" * 160)
        await model.wait_audio(160)
        assert not draining.done()
        await call.stop()
        assert await asyncio.wait_for(draining, 5) is True
        assert gw.twilio_api.updates == []
        assert ended(gw, "twilio", "caller_hangup") == 1

    async def test_a_call_the_gateway_dialed_is_answered_during_the_drain(
        self, start_gateway: StartGateway
    ) -> None:
        """A call placed before the drain (it holds a place from the dial) whose callee answers during
        it: Twilio's webhook gets <Connect><Stream>, not <Reject>, which would hang up on the callee."""
        gw = await start_gateway()
        call_sid = "CA" + "9" * 32
        assert gw.app[keys.CALLS].reserve(call_sid)  # what POST /v1/calls does once Twilio took it
        draining = asyncio.create_task(drain(gw.app, timeout_s=0.2))
        _, body = await gw.twilio.webhook(
            call_sid=call_sid, direction="outbound-api", query="agent=receptionist"
        )
        assert "<Stream" in body and "<Reject" not in body
        assert await draining is False  # its media never connects here


class TestEngineFailureApology:
    async def test_twilio_caller_hears_the_apology(self, start_gateway: StartGateway) -> None:
        """A fatal model error: Twilio says the engine_failure text in the configured voice, then
        hangs up (one update carrying both)."""
        gw = await start_gateway(twilio={"say_voice": "Polly.Joanna"})
        call = await gw.twilio.call()
        model = await gw.model.next_connection()
        await model.error("insufficient_quota", "boom")
        await gw.twilio_api.wait_hangup(call.call_sid)
        [update] = gw.twilio_api.updates_of(call.call_sid)
        say = say_element(update["Twiml"])
        assert say.text == ENGINE_FAILURE
        assert say.attrib == {"voice": "Polly.Joanna", "language": "en-US"}
        await call.wait_closed()  # the last step of the teardown, after the bookkeeping
        assert ended(gw, "twilio", "engine_error") == 1

    async def test_custom_text_and_language(self, start_gateway: StartGateway) -> None:
        """The operator's own words and language reach the TwiML, escaped."""
        announcements = {"language": "es-MX", "engine_failure": "Lo sentimos <mucho> & adiós."}
        gw = await start_gateway(server={**SERVER, "announcements": announcements})
        call = await gw.twilio.call()
        model = await gw.model.next_connection()
        await model.error("insufficient_quota", "boom")
        await gw.twilio_api.wait_hangup(call.call_sid)
        say = say_element(gw.twilio_api.updates_of(call.call_sid)[0]["Twiml"])
        assert (say.text, say.attrib) == ("Lo sentimos <mucho> & adiós.", {"language": "es-MX"})

    async def test_unreachable_model_is_apologised_for(self, start_gateway: StartGateway) -> None:
        """A model that cannot be reached at all (engine_connect_failed) also gets the apology."""
        providers = {"openai": {"api_key": "sk-test", "realtime_url": "ws://127.0.0.1:9/v1/realtime"}}
        gw = await start_gateway(providers=providers)
        call = await gw.twilio.call()
        await gw.twilio_api.wait_hangup(call.call_sid)
        assert gw.twilio_api.said(call.call_sid) == [ENGINE_FAILURE]

    async def test_caller_hang_up_is_not_announced(self, start_gateway: StartGateway) -> None:
        """When the caller hangs up there is nobody to talk to: no update at all."""
        gw = await start_gateway()
        call = await gw.twilio.call()
        await gw.model.next_connection()
        await call.stop()
        await call.wait_closed()
        assert gw.twilio_api.updates_of(call.call_sid) == []

    async def test_telnyx_refusing_to_speak_still_hangs_up(self, start_gateway: StartGateway) -> None:
        """A failed `speak` (HTTP 500) must not leave the caller on the line: hangup follows at once."""
        gw = await start_gateway()
        call = await gw.telnyx.call_control(gw.telnyx_api)
        gw.telnyx_api.status_for[(call.call_control_id, "speak")] = 500
        model = await gw.model.next_connection()
        await model.error("insufficient_quota", "boom")
        await gw.telnyx_api.wait_action(call.call_control_id, "hangup")
        actions = [a for cid, a, _ in gw.telnyx_api.actions if cid == call.call_control_id]
        assert actions[-2:] == ["speak", "hangup"]

    async def test_telnyx_call_already_gone_is_not_hung_up_again(self, start_gateway: StartGateway) -> None:
        """`speak` answered with 90018 (the call already ended): no hangup action is sent."""
        gw = await start_gateway()
        call = await gw.telnyx.call_control(gw.telnyx_api)
        gw.telnyx_api.status_for[(call.call_control_id, "speak")] = 422
        model = await gw.model.next_connection()
        await model.error("insufficient_quota", "boom")
        await call.wait_closed()
        assert call.call_control_id not in gw.telnyx_api.hangups()

    async def test_telnyx_hang_up_during_the_apology_ends_the_wait(self, start_gateway: StartGateway) -> None:
        """`call.hangup` while the apology plays (the caller hung up) ends the wait for speak.ended."""
        gw = await start_gateway()
        call = await gw.telnyx.call_control(gw.telnyx_api)
        model = await gw.model.next_connection()
        await model.error("insufficient_quota", "boom")
        await gw.telnyx_api.wait_action(call.call_control_id, "speak")
        await gw.telnyx.call_hangup(call.call_control_id)
        await gw.telnyx_api.wait_action(call.call_control_id, "hangup")
        await call.wait_closed()
        assert ended(gw, "telnyx", "engine_error") == 1
