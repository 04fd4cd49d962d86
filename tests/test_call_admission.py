"""Which calls get in: signatures, stream tokens, routing, capacity."""

from __future__ import annotations

from gateway import keys
from tests.conftest import StartGateway

MEDIA = "/twilio/media"


class TestSignatures:
    async def test_webhook_with_bad_signature_is_403(self, start_gateway: StartGateway) -> None:
        """A voice webhook whose X-Twilio-Signature does not match is refused with 403 and counted."""
        gw = await start_gateway()
        status, _ = await gw.twilio.webhook(signature="bm90IGEgc2lnbmF0dXJl")
        assert status == 403
        assert gw.metric("gateway_webhook_rejections_total", carrier="twilio", reason="bad_signature") == 1

    async def test_webhook_get_is_signed_over_the_query(self, start_gateway: StartGateway) -> None:
        """GET webhooks (parameters in the query string) verify and answer TwiML."""
        gw = await start_gateway()
        status, body = await gw.twilio.webhook(method="GET")
        assert status == 200
        url, params = gw.twilio.parse_stream(body)
        assert url == f"{gw.config.server.media_base_url}{MEDIA}"
        assert set(params) == {"agent", "token"}
        assert params["agent"] == "receptionist"

    async def test_twiml_carries_no_phone_number_or_secret(self, start_gateway: StartGateway) -> None:
        """Neither the caller's number, the called number nor the auth token appear in the TwiML."""
        gw = await start_gateway()
        _, body = await gw.twilio.webhook(to="+15555550100", from_="+15551230000")
        for secret in ("+15551230000", "+15555550100", "twilio-test-token", "sk-test"):
            assert secret not in body

    async def test_upgrade_with_bad_signature_closes_1008_before_reading_any_frame(
        self, start_gateway: StartGateway
    ) -> None:
        """A media upgrade with a wrong signature is closed with 1008 at once: no frame is awaited."""
        gw = await start_gateway()
        _, body = await gw.twilio.webhook()
        url, params = gw.twilio.parse_stream(body)
        call = await gw.twilio.open_stream(url, params, signature="d3Jvbmc=", send_start=False)
        assert await call.wait_closed() == 1008
        assert call.close_reason == "invalid X-Twilio-Signature"
        assert gw.model.all_connections == []
        assert gw.metric("gateway_webhook_rejections_total", carrier="twilio", reason="bad_signature") == 1

    async def test_stream_token_binds_the_stream_to_an_answered_call(
        self, start_gateway: StartGateway
    ) -> None:
        """A correctly signed upgrade replayed for a call the webhook never answered is refused."""
        gw = await start_gateway()
        _, body = await gw.twilio.webhook()
        url, params = gw.twilio.parse_stream(body)
        call = await gw.twilio.open_stream(url, params, call_sid="CA" + "9" * 32)  # another call's sid
        assert await call.wait_closed() == 1008
        assert call.close_reason == "stream token wrong_call"
        assert gw.model.all_connections == []
        assert gw.metric("gateway_webhook_rejections_total", carrier="twilio", reason="token_wrong_call") == 1

    async def test_signatures_can_be_disabled_for_local_experiments(
        self, start_gateway: StartGateway
    ) -> None:
        """verify_signatures: false accepts unsigned webhooks and token-less streams (local use only)."""
        gw = await start_gateway(
            carriers={"twilio": {"account_sid": "AC1", "auth_token": "x", "verify_signatures": False}}
        )
        status, _ = await gw.twilio.webhook(signature="anything")
        assert status == 200
        call = await gw.twilio.open_stream(
            gw.url.replace("http", "ws") + MEDIA, {"agent": "receptionist"}, signature="anything"
        )
        await gw.model.next_connection()
        await call.stop()
        await call.wait_closed()


class TestRouting:
    async def test_routes_pick_the_agent_by_called_number(self, start_gateway: StartGateway) -> None:
        """`To` selects the agent from routes; other numbers fall back to default_agent."""
        agents = {"receptionist": {"engine": "openai_realtime_2"}, "sales": {"engine": "openai_realtime_2"}}
        gw = await start_gateway(
            agents=agents, routes={"+15555550100": "receptionist", "+15555550199": "sales"}
        )
        for to, agent in [
            ("+15555550199", "sales"),
            ("+15555550100", "receptionist"),
            ("+15550000000", "receptionist"),
        ]:
            _, body = await gw.twilio.webhook(to=to)
            assert gw.twilio.parse_stream(body)[1]["agent"] == agent

    async def test_routed_call_reaches_its_agent(self, start_gateway: StartGateway) -> None:
        """The agent chosen by the route is the one whose configuration the model receives."""
        agents = {
            "receptionist": {"engine": "openai_realtime_2", "prompt": "front desk"},
            "sales": {"engine": "openai_realtime_2", "prompt": "sales desk"},
        }
        gw = await start_gateway(agents=agents, routes={"+15555550199": "sales"})
        await gw.twilio.call(to="+15555550199")
        model = await gw.model.next_connection()
        update = (await model.wait_for("session.update"))[0]
        assert update["session"]["instructions"] == "sales desk"

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
        """Without verification the agent comes from the start frame; an unknown one closes with 1008."""
        gw = await start_gateway(
            carriers={"twilio": {"account_sid": "AC1", "auth_token": "x", "verify_signatures": False}}
        )
        call = await gw.twilio.open_stream(gw.url.replace("http", "ws") + MEDIA, {"agent": "ghost"})
        assert await call.wait_closed() == 1008
        assert call.close_reason == "unknown agent"
        assert gw.model.all_connections == []

    async def test_the_token_not_the_parameter_names_the_agent(self, start_gateway: StartGateway) -> None:
        """With verification on, the agent is the one the webhook chose (signed into the token)."""
        agents = {
            "receptionist": {"engine": "openai_realtime_2", "prompt": "front desk"},
            "sales": {"engine": "openai_realtime_2", "prompt": "sales desk"},
        }
        gw = await start_gateway(agents=agents)
        call_sid = "CA" + "1" * 32
        _, body = await gw.twilio.webhook(call_sid=call_sid)
        url, params = gw.twilio.parse_stream(body)
        await gw.twilio.open_stream(url, {**params, "agent": "sales"}, call_sid=call_sid)
        model = await gw.model.next_connection()
        assert (await model.wait_for("session.update"))[0]["session"]["instructions"] == "front desk"


class TestCapacity:
    async def test_answered_webhooks_count_against_the_limit(self, start_gateway: StartGateway) -> None:
        """A call counts from its webhook: a burst beyond max_concurrent_calls is told busy at once."""
        gw = await start_gateway(
            server={
                "host": "127.0.0.1",
                "port": 1,
                "public_url": "http://127.0.0.1:1",
                "max_concurrent_calls": 1,
            }
        )
        # (server.port is ignored by the test server, which listens on its own port.)
        status, first = await gw.twilio.webhook()
        assert "<Stream" in first
        status, second = await gw.twilio.webhook()
        assert status == 200
        assert 'reason="busy"' in second
        assert (
            gw.metric(
                "gateway_calls_total",
                carrier="twilio",
                agent="receptionist",
                engine="openai_realtime_2",
                outcome="rejected_busy",
            )
            == 1
        )
        async with gw.http.get(gw.url + "/readyz") as response:
            assert response.status == 503  # full: a load balancer should try another replica

    async def test_a_retried_webhook_does_not_take_a_second_place(self, start_gateway: StartGateway) -> None:
        """Twilio retrying the same CallSid is answered again, not told busy."""
        gw = await start_gateway(
            server={
                "host": "127.0.0.1",
                "port": 1,
                "public_url": "http://127.0.0.1:1",
                "max_concurrent_calls": 1,
            }
        )
        call_sid = "CA" + "2" * 32
        _, first = await gw.twilio.webhook(call_sid=call_sid)
        _, again = await gw.twilio.webhook(call_sid=call_sid)
        assert "<Stream" in first
        assert "<Stream" in again
        assert gw.twilio.parse_stream(first)[1]["agent"] == gw.twilio.parse_stream(again)[1]["agent"]

    async def test_a_second_stream_for_a_live_call_is_refused(self, start_gateway: StartGateway) -> None:
        """A second stream for a live call (same or replayed token) is refused; the first goes on."""
        gw = await start_gateway(agent={"audio": "g711"})
        call_sid = "CA" + "3" * 32
        _, body = await gw.twilio.webhook(call_sid=call_sid)
        url, params = gw.twilio.parse_stream(body)
        first = await gw.twilio.open_stream(url, params, call_sid=call_sid)
        model = await gw.model.next_connection()
        replay = await gw.twilio.open_stream(url, params, call_sid=call_sid)  # the same token again
        assert await replay.wait_closed() == 1008
        assert replay.close_reason == "stream token reused"
        _, again = await gw.twilio.webhook(call_sid=call_sid)  # a replayed webhook: a fresh token...
        second = await gw.twilio.open_stream(url, gw.twilio.parse_stream(again)[1], call_sid=call_sid)
        assert await second.wait_closed() == 1008
        assert second.close_reason == "stream token reused"  # ...but this call has streamed already
        await first.send_audio(b"\x7f" * 160)
        await model.wait_audio(160)
        assert len(gw.model.all_connections) == 1

    async def test_duplicate_stream_without_verification_is_refused(
        self, start_gateway: StartGateway
    ) -> None:
        """With verification off (no tokens), a second stream for a live CallSid is refused as a duplicate."""
        gw = await start_gateway(
            carriers={"twilio": {"account_sid": "AC1", "auth_token": "x", "verify_signatures": False}}
        )
        url = gw.url.replace("http", "ws") + MEDIA
        first = await gw.twilio.open_stream(url, {"agent": "receptionist"}, call_sid="CA" + "4" * 32)
        await gw.model.next_connection()
        second = await gw.twilio.open_stream(url, {"agent": "receptionist"}, call_sid="CA" + "4" * 32)
        assert await second.wait_closed() == 1008
        assert second.close_reason == "duplicate"
        assert (
            gw.metric(
                "gateway_calls_total",
                carrier="twilio",
                agent="receptionist",
                engine="openai_realtime_2",
                outcome="rejected_duplicate",
            )
            == 1
        )
        await first.stop()
        await first.wait_closed()

    async def test_a_call_refused_as_busy_never_opens_a_model_socket(
        self, start_gateway: StartGateway
    ) -> None:
        """max_concurrent_calls is enforced before any model socket is opened: a stream whose place
        lapsed (its reservation expired) and that arrives while the gateway is full is closed with
        1013 and hung up, and the model server sees no connection for it, ever."""
        gw = await start_gateway(
            server={
                "host": "127.0.0.1",
                "port": 1,
                "public_url": "http://127.0.0.1:1",
                "max_concurrent_calls": 1,
            }
        )
        late_sid = "CA" + "8" * 32
        _, body = await gw.twilio.webhook(call_sid=late_sid)
        url, late_params = gw.twilio.parse_stream(body)
        gw.app[keys.CALLS].release(late_sid)  # as if its reservation had expired before it streamed
        first = await gw.twilio.call()
        await gw.model.next_connection()
        late = await gw.twilio.open_stream(url, late_params, call_sid=late_sid)
        assert await late.wait_closed() == 1013
        assert late.close_reason == "busy"
        await gw.twilio_api.wait_hangup(late_sid)
        assert len(gw.model.all_connections) == 1
        assert gw.model.connections.empty()
        busy = {"carrier": "twilio", "agent": "receptionist", "engine": "openai_realtime_2"}
        assert gw.metric("gateway_calls_total", **busy, outcome="rejected_busy") == 1
        await first.stop()
        await first.wait_closed()
