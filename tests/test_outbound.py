"""Outbound calls: `POST /v1/calls` places a call through Twilio or Telnyx and, once the callee
answers, bridges it to the agent exactly like an inbound call; every refusal names its reason."""

from __future__ import annotations

import json
from typing import Any

import pytest
import structlog

from gateway import keys
from gateway.config import parse_config
from gateway.log import configure_logging
from gateway.outbound import Refused, pick_carrier
from tests.conftest import Gateway, StartGateway
from tests.fakes.telnyx import CONNECTION_ID
from tests.fakes.twilio import ACCOUNT_SID, AUTH_TOKEN

TOKEN = "admin-token-test"
OURS = "+15555550100"  # the gateway's number (routed to receptionist for inbound calls)
CALLEE = "+15557654321"
PREMIUM = "+19005550123"
SALES_PROMPT = "You are calling to confirm an appointment."
AGENTS = {
    "receptionist": {"engine": "openai_realtime_2", "prompt": "You are a receptionist."},
    "sales": {"engine": "openai_realtime_2", "prompt": SALES_PROMPT},
}


def _server(**extra: Any) -> dict[str, Any]:
    # server.port/public_url are placeholders: the test server listens on its own port, and the fakes
    # sign with whatever public_url the config says.
    return {"host": "127.0.0.1", "port": 1, "public_url": "http://127.0.0.1:1", **extra}


def outbound_config(*, prefixes: list[str] | None = None, **server: Any) -> dict[str, Any]:
    """start_gateway() options: an admin token, two agents, `+1555` dialable, a Telnyx connection."""
    return {
        "server": _server(admin_token=TOKEN, **server),
        "agents": AGENTS,
        "allowed_outbound_prefixes": ["+1555"] if prefixes is None else prefixes,
        "telnyx": {"connection_id": CONNECTION_ID},
    }


def request(
    agent: str = "sales", to: Any = CALLEE, carrier: str | None = "twilio", **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"agent": agent, "to": to, "from": OURS, **extra}
    if carrier is not None:
        body["carrier"] = carrier
    return body


async def dial(gw: Gateway, body: object, token: str | None = TOKEN) -> tuple[int, dict[str, Any]]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with gw.http.post(gw.url + "/v1/calls", json=body, headers=headers) as response:
        return response.status, await response.json()


def nothing_dialled(gw: Gateway) -> bool:
    return gw.twilio_api.created == [] and gw.telnyx_api.dials == []


class TestTwilioOutbound:
    async def test_call_is_placed_then_bridged_like_an_inbound_call(
        self, start_gateway: StartGateway
    ) -> None:
        """The Calls.json form names our webhook with the agent; Twilio's fetch for that call (outbound-api)
        gets TwiML for that agent, not the routed one, and the stream reaches the model. The call's own
        reservation does not make its webhook busy, even with room for one call only."""
        gw = await start_gateway(**outbound_config(max_concurrent_calls=1))
        status, body = await dial(gw, request())
        assert status == 201, body
        (sid,) = gw.twilio_api.created_sids
        assert body == {"call_id": sid, "carrier": "twilio", "agent": "sales"}
        assert gw.twilio_api.created == [
            {
                "To": CALLEE,
                "From": OURS,
                "Url": "http://127.0.0.1:1/twilio/voice?agent=sales",
                "Method": "POST",
            }
        ]
        status, twiml = await gw.twilio.webhook(
            call_sid=sid, to=CALLEE, from_=OURS, direction="outbound-api", query="agent=sales"
        )
        assert status == 200, twiml
        url, params = gw.twilio.parse_stream(twiml)
        assert params["agent"] == "sales"
        call = await gw.twilio.open_stream(url, params, call_sid=sid)
        model = await gw.model.next_connection()
        session = (await model.wait_for("session.update"))[0]["session"]
        assert session["instructions"] == SALES_PROMPT
        await call.stop()
        await call.wait_closed()

    async def test_a_dialed_call_holds_its_place(self, start_gateway: StartGateway) -> None:
        """With room for one call, a second dial while the first rings is refused with 503."""
        gw = await start_gateway(**outbound_config(max_concurrent_calls=1))
        assert (await dial(gw, request()))[0] == 201
        status, body = await dial(gw, request())
        assert status == 503
        assert "max_concurrent_calls" in body["error"]
        assert len(gw.twilio_api.created) == 1

    async def test_draining_gateway_dials_nothing(self, start_gateway: StartGateway) -> None:
        """While shutting down the gateway refuses to place calls (503)."""
        gw = await start_gateway(**outbound_config())
        gw.app[keys.STATE].accepting = False
        status, _ = await dial(gw, request())
        assert status == 503
        assert nothing_dialled(gw)

    async def test_inbound_call_ignores_the_agent_parameter(self, start_gateway: StartGateway) -> None:
        """An inbound webhook whose URL carries ?agent= is still routed by its To number."""
        gw = await start_gateway(**outbound_config())
        for method in ("POST", "GET"):
            status, twiml = await gw.twilio.webhook(method=method, query="agent=sales")
            assert status == 200, twiml
            assert gw.twilio.parse_stream(twiml)[1]["agent"] == "receptionist"

    async def test_outbound_webhook_without_agent_is_routed_as_before(
        self, start_gateway: StartGateway
    ) -> None:
        """A REST-created call without ?agent= (placed by something else) is routed as it always was."""
        gw = await start_gateway(**outbound_config())
        status, twiml = await gw.twilio.webhook(to=OURS, direction="outbound-api")
        assert status == 200
        assert gw.twilio.parse_stream(twiml)[1]["agent"] == "receptionist"

    async def test_outbound_webhook_for_an_unknown_agent_is_rejected(
        self, start_gateway: StartGateway
    ) -> None:
        """A signed webhook URL naming an agent that is not configured gets <Reject/>."""
        gw = await start_gateway(**outbound_config())
        status, twiml = await gw.twilio.webhook(direction="outbound-api", query="agent=ghost")
        assert status == 200
        assert "<Reject/>" in twiml

    async def test_agent_parameter_is_covered_by_the_signature(self, start_gateway: StartGateway) -> None:
        """A signature over the webhook URL without ?agent= does not vouch for one with it."""
        gw = await start_gateway(**outbound_config())
        params = {"CallSid": "CA" + "7" * 32, "AccountSid": ACCOUNT_SID, "From": OURS, "To": CALLEE,
                  "Direction": "outbound-api"}  # fmt: skip
        signature = gw.twilio.validator.compute_signature("http://127.0.0.1:1/twilio/voice", params)
        async with gw.http.post(
            gw.url + "/twilio/voice?agent=sales", data=params, headers={"X-Twilio-Signature": signature}
        ) as response:
            assert response.status == 403

    async def test_carrier_failure_is_502_and_frees_the_place(self, start_gateway: StartGateway) -> None:
        """Twilio refusing the call gives 502 with its status and code; the place is not kept."""
        gw = await start_gateway(**outbound_config(max_concurrent_calls=1))
        gw.twilio_api.create_status = 400
        status, body = await dial(gw, request())
        assert status == 502
        assert body["carrier_status"] == 400
        assert body["carrier_code"] == 21215
        assert "twilio refused the call (400)" in body["error"]
        gw.twilio_api.create_status = 201
        assert (await dial(gw, request()))[0] == 201


class TestTelnyxOutbound:
    async def test_dial_answer_stream_bridge(self, start_gateway: StartGateway) -> None:
        """The dial names the connection; call.answered for it starts an rtp stream for the agent (no
        `answer` action: the callee answered), and that stream reaches the model."""
        gw = await start_gateway(**outbound_config(max_concurrent_calls=1))
        status, body = await dial(gw, request(carrier="telnyx"))
        assert status == 201, body
        call_id = body["call_id"]
        assert call_id.startswith("v3:")
        assert body == {"call_id": call_id, "carrier": "telnyx", "agent": "sales"}
        assert gw.telnyx_api.dials == [{"to": CALLEE, "from": OURS, "connection_id": CONNECTION_ID}]
        status, _ = await gw.telnyx.dialed_call_answered(call_id, to=CALLEE, from_=OURS)
        assert status == 200
        stream = await gw.telnyx_api.wait_action(call_id, "streaming_start")
        url = stream.pop("stream_url")
        assert url.startswith("ws://127.0.0.1:1/telnyx/media/")
        assert stream == {
            "stream_track": "inbound_track",
            "stream_codec": "PCMU",
            "stream_bidirectional_mode": "rtp",
            "stream_bidirectional_codec": "PCMU",
        }
        assert gw.telnyx_api.answers() == []
        call = await gw.telnyx.open_stream(url, call_control_id=call_id)
        model = await gw.model.next_connection()
        session = (await model.wait_for("session.update"))[0]["session"]
        assert session["instructions"] == SALES_PROMPT
        await call.stop()
        await call.wait_closed()

    async def test_retried_answered_event_starts_one_stream(self, start_gateway: StartGateway) -> None:
        """Telnyx retrying call.answered does not start a second stream."""
        gw = await start_gateway(**outbound_config())
        _, body = await dial(gw, request(carrier="telnyx"))
        for _ in range(2):
            status, _ = await gw.telnyx.dialed_call_answered(body["call_id"], to=CALLEE, from_=OURS)
            assert status == 200
        starts = [a for a in gw.telnyx_api.actions if a[1] == "streaming_start"]
        assert len(starts) == 1

    async def test_hangup_before_answer_frees_the_place(self, start_gateway: StartGateway) -> None:
        """A dialed call that hangs up unanswered gives its place back and is forgotten: a late
        call.answered for it starts nothing."""
        gw = await start_gateway(**outbound_config(max_concurrent_calls=1))
        _, body = await dial(gw, request(carrier="telnyx"))
        assert (await dial(gw, request(carrier="telnyx")))[0] == 503
        status, _ = await gw.telnyx.call_hangup(body["call_id"], hangup_cause="no_answer")
        assert status == 200
        assert len(keys.runtime(gw.app).telnyx.dialed) == 0
        await gw.telnyx.dialed_call_answered(body["call_id"], to=CALLEE, from_=OURS)
        assert gw.telnyx_api.actions == []
        assert (await dial(gw, request(carrier="telnyx")))[0] == 201

    async def test_failed_stream_start_hangs_up(self, start_gateway: StartGateway) -> None:
        """If streaming_start fails the answered callee is hung up rather than left in silence."""
        gw = await start_gateway(**outbound_config())
        _, body = await dial(gw, request(carrier="telnyx"))
        call_id = body["call_id"]
        gw.telnyx_api.status_for[(call_id, "streaming_start")] = 500
        await gw.telnyx.dialed_call_answered(call_id, to=CALLEE, from_=OURS)
        await gw.telnyx_api.wait_action(call_id, "hangup")

    async def test_inbound_answered_event_starts_no_stream(self, start_gateway: StartGateway) -> None:
        """call.answered for an inbound Call Control call (answered with its stream) changes nothing."""
        gw = await start_gateway(**outbound_config())
        call = await gw.telnyx.call_control(gw.telnyx_api)
        await gw.model.next_connection()
        assert [a for _, a, _ in gw.telnyx_api.actions] == ["answer"]
        await call.stop()
        await call.wait_closed()

    async def test_without_connection_id_nothing_is_dialled(self, start_gateway: StartGateway) -> None:
        """Telnyx dials need carriers.telnyx.connection_id; without it: 400 naming the setting."""
        gw = await start_gateway(**{**outbound_config(), "telnyx": {}})
        status, body = await dial(gw, request(carrier="telnyx"))
        assert status == 400
        assert body["field"] == "carrier"
        assert "carriers.telnyx.connection_id" in body["error"]
        assert nothing_dialled(gw)

    async def test_dial_failure_is_502(self, start_gateway: StartGateway) -> None:
        """Telnyx refusing the dial gives 502 with its status and error code; nothing is remembered."""
        gw = await start_gateway(**outbound_config())
        gw.telnyx_api.dial_status = 422
        status, body = await dial(gw, request(carrier="telnyx"))
        assert status == 502
        assert (body["carrier_status"], body["carrier_code"]) == (422, "10010")
        assert len(keys.runtime(gw.app).telnyx.dialed) == 0


class TestRefusals:
    @pytest.mark.parametrize("token", [None, "wrong-token", ""])
    async def test_missing_or_wrong_token_is_401(
        self, start_gateway: StartGateway, token: str | None
    ) -> None:
        """Without the admin bearer token nothing is dialled."""
        gw = await start_gateway(**outbound_config())
        status, body = await dial(gw, request(), token=token)
        assert status == 401
        assert body["error"] == "missing or wrong bearer token"
        assert nothing_dialled(gw)

    async def test_without_admin_token_the_route_is_off(self, start_gateway: StartGateway) -> None:
        """With no server.admin_token the route answers 404, saying how to enable it."""
        gw = await start_gateway(**{**outbound_config(), "server": _server()})
        status, body = await dial(gw, request(), token="anything")
        assert status == 404
        assert "server.admin_token" in body["error"]
        assert nothing_dialled(gw)

    async def test_empty_allowlist_refuses_every_call(self, start_gateway: StartGateway) -> None:
        """By default (no allowed_outbound_prefixes) every call is refused with 403 and a hint."""
        gw = await start_gateway(**outbound_config(prefixes=[]))
        for carrier in ("twilio", "telnyx"):
            status, body = await dial(gw, request(carrier=carrier))
            assert status == 403
            assert "allowed_outbound_prefixes" in body["error"]
        assert nothing_dialled(gw)

    async def test_number_outside_the_prefixes_is_403(self, start_gateway: StartGateway) -> None:
        """A leaked token cannot dial a premium number outside the allowlist."""
        gw = await start_gateway(**outbound_config())
        status, body = await dial(gw, request(to=PREMIUM))
        assert (status, body["field"]) == (403, "to")
        assert nothing_dialled(gw)

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            (request(to="15557654321"), "to"),
            (request(to="+1 555 765 4321"), "to"),
            ({**request(), "from": "+0123"}, "from"),
            (request(agent="ghost"), "agent"),
            (request(carrier="vonage"), "carrier"),
            (request(carrier=None), "carrier"),  # both carriers are configured: it must be named
            ({"to": CALLEE, "from": OURS}, "agent"),
            (request(to=15557654321), "to"),
            (request(ring_timeout_s=30), "ring_timeout_s"),
        ],
    )
    async def test_bad_fields_are_400_naming_the_field(
        self, start_gateway: StartGateway, body: dict[str, Any], field: str
    ) -> None:
        """Each invalid request is 400 with `field` naming what is wrong, and nothing is dialled."""
        gw = await start_gateway(**outbound_config())
        status, answer = await dial(gw, body)
        assert status == 400, answer
        assert answer["field"] == field
        assert answer["error"].startswith(f"{field}: ")
        assert nothing_dialled(gw)

    @pytest.mark.parametrize("body", [[1, 2], "call me", None])
    async def test_body_that_is_not_an_object_is_400(self, start_gateway: StartGateway, body: object) -> None:
        """A JSON body that is not an object is refused with 400."""
        gw = await start_gateway(**outbound_config())
        status, answer = await dial(gw, body)
        assert (status, answer["field"]) == (400, None)

    async def test_carrier_is_optional_with_one_carrier_and_must_be_configured(self) -> None:
        """Naming a carrier that is not configured is refused; with one carrier it may be left out."""
        doc = {
            "server": _server(),
            "carriers": {"twilio": {"account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN}},
            "providers": {"openai": {"api_key": "sk-test"}},
            "agents": AGENTS,
        }
        config = parse_config(doc, env={})
        assert pick_carrier(config, None) == "twilio"
        assert pick_carrier(config, "twilio") == "twilio"
        with pytest.raises(Refused) as refused:
            pick_carrier(config, "telnyx")
        assert (refused.value.status, refused.value.field) == (400, "carrier")
        assert "carriers.telnyx" in refused.value.error


class TestLogs:
    async def test_numbers_never_reach_the_logs(
        self, start_gateway: StartGateway, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Placed, bridged, refused and failed outbound calls log events, never a phone number."""
        saved = structlog.get_config()
        try:
            configure_logging("json")
            gw = await start_gateway(**outbound_config())
            _, body = await dial(gw, request())
            sid = body["call_id"]
            _, twiml = await gw.twilio.webhook(
                call_sid=sid, to=CALLEE, from_=OURS, direction="outbound-api", query="agent=sales"
            )
            url, params = gw.twilio.parse_stream(twiml)
            twilio_call = await gw.twilio.open_stream(url, params, call_sid=sid)
            await gw.model.next_connection()
            await twilio_call.stop()
            await twilio_call.wait_closed()
            _, body = await dial(gw, request(carrier="telnyx"))
            await gw.telnyx.dialed_call_answered(body["call_id"], to=CALLEE, from_=OURS)
            stream = await gw.telnyx_api.wait_action(body["call_id"], "streaming_start")
            telnyx_call = await gw.telnyx.open_stream(stream["stream_url"], call_control_id=body["call_id"])
            await gw.model.next_connection()
            await telnyx_call.stop()
            await telnyx_call.wait_closed()
            await dial(gw, request(to=PREMIUM))
            await dial(gw, request(to="5557654321"))
            gw.twilio_api.create_status = 400
            await dial(gw, request())
            err = capsys.readouterr().err
        finally:
            structlog.configure(**saved)
        events = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
        assert events.count("outbound.placed") == 2
        assert events.count("outbound.refused") == 3
        assert events.count("call.ended") == 2
        for number in (CALLEE, OURS, PREMIUM, "5557654321", TOKEN):
            assert number not in err
