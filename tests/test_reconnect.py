"""Model socket reconnect (issue 5, part 5): a dropped model socket is replaced mid-call with the same
session configuration and the conversation so far; sessions roll over before their maximum length;
when reconnecting fails the call ends with a hang-up. End to end over loopback sockets: fake Twilio
caller ⇄ real gateway ⇄ fake OpenAI (GA, beta) or ElevenLabs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway import keys
from gateway.audio import ULAW_8K
from gateway.config import ReconnectConfig, parse_config
from gateway.conversation import MAX_TURN_CHARS, ConversationLog
from gateway.engines.base import Turn
from gateway.engines.openai_realtime import OpenAIRealtimeSession
from gateway.engines.replay import RESUME_INSTRUCTIONS, context_text, openai_items
from gateway.errors import ConfigError
from gateway.reconnect import backoff_delay, late_result_text, retry_cause
from gateway.schema import AnnouncementsConfig
from gateway.session_gap import MAX_QUEUED_TEXTS, GapSession
from tests.conftest import Gateway, StartGateway
from tests.fakes.openai_realtime import FakeRealtimeConnection
from tests.fakes.openai_validation import validate_client_event
from tests.fakes.tool_server import FakeToolServer

DIALECTS = ["ga", "beta"]
ENGINE_FAILURE = AnnouncementsConfig().engine_failure
SHUTDOWN = AnnouncementsConfig().shutdown
QUIET_S = 0.3  # how long something that must not happen is given to happen anyway
USAGE = {
    "total_tokens": 150,
    "input_tokens": 100,
    "output_tokens": 50,
    "input_token_details": {"text_tokens": 0, "audio_tokens": 100},
    "output_token_details": {"text_tokens": 0, "audio_tokens": 50},
}
LOOKUP = {
    "name": "lookup_booking",
    "description": "Find the caller's booking",
    "parameters": {"type": "object", "properties": {"name": {"type": "string"}}},
}


def server(**reconnect: Any) -> dict[str, Any]:
    """The `server:` section with fast, jitter-free backoff (port and public_url are placeholders:
    the test server listens on its own port, and the fakes sign with whatever public_url says)."""
    return {
        "host": "127.0.0.1",
        "port": 1,
        "public_url": "http://127.0.0.1:1",
        "reconnect": {"backoff_s": [0.01], "jitter": 0, **reconnect},
    }


def reconnects(gw: Gateway, result: str) -> float:
    engine = gw.config.agents["receptionist"].engine
    return gw.metric("gateway_engine_reconnects_total", engine=engine, result=result)


def outcome(gw: Gateway, reason: str) -> float:
    engine = gw.config.agents["receptionist"].engine
    return gw.metric("gateway_calls_total", carrier="twilio", agent="receptionist", engine=engine,
                     outcome=reason)  # fmt: skip


async def caller_said(model: FakeRealtimeConnection, text: str, item_id: str = "item_u1") -> None:
    """The caller's turn: committed, then transcribed (§A.4)."""
    await model.send({"type": "input_audio_buffer.committed", "item_id": item_id})
    await model.send(
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": item_id,
            "content_index": 0,
            "transcript": text,
            "usage": {"type": "duration", "seconds": 1},
        }
    )


async def agent_said(model: FakeRealtimeConnection, text: str, audio: bytes, response_id: str) -> None:
    """A whole agent turn: audio, its transcript, and the response's end with usage."""
    item_id = f"{response_id}_item"
    await model.response_created(response_id)
    await model.audio_delta(response_id, item_id, audio)
    await model.agent_transcript(text, response_id=response_id, item_id=item_id)
    await model.audio_done(response_id, item_id)
    await model.response_done(response_id, usage=USAGE)


def message(role: str, part: str, text: str) -> dict[str, Any]:
    return {"type": "message", "role": role, "content": [{"type": part, "text": text}]}


async def stays_false(wait: Any, quiet_s: float = QUIET_S) -> None:
    """`wait` (a fake waiting for something that must not happen) is still waiting after `quiet_s`."""
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(quiet_s):
            await wait


@pytest.fixture
async def tools() -> AsyncIterator[FakeToolServer]:
    async with FakeToolServer() as tool_server:
        yield tool_server
    assert not tool_server.problems, tool_server.problems


class TestReconnect:
    @pytest.mark.parametrize("dialect", DIALECTS)
    async def test_dropped_socket_is_replaced_with_the_conversation_so_far(
        self, start_gateway: StartGateway, dialect: str
    ) -> None:
        """An abnormal close (1011) mid-call: a second socket gets the same session.update, the caller
        and agent turns as conversation items in the dialect's shape, no greeting and no response;
        caller audio from the gap is dropped, later audio flows both ways, usage from both sessions is
        counted, the reconnect is counted `ok`, and nobody hangs up."""
        agent = {"audio": "g711", "first_message": "Hello, taxi desk."}
        gw = await start_gateway(dialect, agent=agent, server=server())
        call = await gw.twilio.call()
        first = await gw.model.next_connection()
        update = (await first.wait_for("session.update"))[0]
        await caller_said(first, "I need a taxi to the station")
        await agent_said(first, "Sure, for what time?", b"\x44" * 160, "resp_1")
        await call.wait_audio(160)

        hold = gw.model.hold_upgrades()
        with capture_logs() as logs:
            await first.close(code=1011)
            await gw.model.wait_upgrades(2)  # the gateway is reconnecting: this is the gap
            await call.send_audio(b"\x11" * 160)
            hold.set()
            second = await gw.model.next_connection()
            assert (await second.wait_for("session.update"))[0] == update
            items = [e["item"] for e in await second.wait_for("conversation.item.create", 2)]
            await call.send_audio(b"\x22" * 320)
            await second.wait_audio(320)
        assistant = "output_text" if dialect == "ga" else "text"
        assert items == [
            message("user", "input_text", "I need a taxi to the station"),
            message("assistant", assistant, "Sure, for what time?"),
        ]
        assert bytes(second.audio_in) == b"\x22" * 320  # nothing from the gap
        assert second.of_type("response.create") == []  # sent before the audio, if at all

        await second.response_created("resp_2")
        await second.audio_delta("resp_2", "item_2", b"\x33" * 160)
        await second.response_done("resp_2", usage=USAGE)
        await call.wait_audio(320)
        assert bytes(call.audio_out) == b"\x44" * 160 + b"\x33" * 160
        await call.stop()
        await call.wait_closed()
        assert reconnects(gw, "ok") == 1
        assert gw.twilio_api.updates == []
        assert outcome(gw, "caller_hangup") == 1
        model = gw.config.agents["receptionist"].resolved_model
        tokens = gw.metric(
            "gateway_realtime_tokens_total", agent="receptionist", model=model, kind="audio_in"
        )
        assert tokens == 200  # both sessions' usage
        reconnecting = [e for e in logs if e["event"] == "engine.reconnecting"]
        assert [(e["attempt"], e["reason"]) for e in reconnecting] == [(1, "close_1011")]
        reconnected = [e for e in logs if e["event"] == "engine.reconnected"]
        assert [(e["dropped_audio_ms"], e["replayed_turns"]) for e in reconnected] == [(20, 2)]

    @pytest.mark.parametrize("how", ["error_event", "close_1001", "connection_lost"])
    async def test_expiry_and_lost_connections_reconnect(self, start_gateway: StartGateway, how: str) -> None:
        """OpenAI's session_expired error (the gateway closes that socket itself), its 1001 "maximum
        duration" close, and a connection that dies without a close frame all lead to a new session,
        counted `ok` once it has carried the call to its end."""
        gw = await start_gateway(agent={"audio": "g711"}, server=server())
        call = await gw.twilio.call()
        first = await gw.model.next_connection()
        await first.wait_for("session.update")
        expiry = "Your session hit the maximum duration of 60 minutes."
        if how == "error_event":
            await first.error("session_expired", expiry)
        elif how == "close_1001":
            await first.close(code=1001, message=expiry)
        else:
            first.drop()
        second = await gw.model.next_connection()
        await second.wait_for("session.update")
        await asyncio.wait_for(first.closed.wait(), 5)
        await call.send_audio(b"\x22" * 160)
        await second.wait_audio(160)
        await call.stop()
        await call.wait_closed()
        assert reconnects(gw, "ok") == 1
        assert gw.twilio_api.updates == []

    async def test_drop_mid_response_asks_the_agent_to_carry_on(self, start_gateway: StartGateway) -> None:
        """Cut off mid-sentence, the agent is asked to finish its point, not to greet: a system message
        and a plain response.create, so the session's instructions (the agent's prompt: persona,
        language, rules) stay in force for that answer."""
        gw = await start_gateway(agent={"audio": "g711", "prompt": "You are Ada, answer in French."},
                                 server=server())  # fmt: skip
        call = await gw.twilio.call()
        first = await gw.model.next_connection()
        await first.response_created("resp_1")
        await first.audio_delta("resp_1", "item_1", b"\x44" * 160)
        await call.wait_audio(160)
        await first.close(code=1011)
        second = await gw.model.next_connection()
        update = (await second.wait_for("session.update"))[0]
        created = (await second.wait_for("response.create"))[0]
        assert update["session"]["instructions"] == "You are Ada, answer in French."
        assert "response" not in created  # no per-response instructions replacing the prompt
        items = [e["item"] for e in second.of_type("conversation.item.create")]
        assert items == [message("system", "input_text", RESUME_INSTRUCTIONS)]  # no finished turn

    async def test_exhausted_reconnect_apologises_and_hangs_up(self, start_gateway: StartGateway) -> None:
        """Every attempt refused (503): after `attempts` tries the call ends as engine_error, counted
        `failed`; Twilio says the apology and hangs up (one call update)."""
        gw = await start_gateway(agent={"audio": "g711"}, server=server(attempts=2))
        call = await gw.twilio.call()
        first = await gw.model.next_connection()
        gw.model.refuse_with = 503
        with capture_logs() as logs:
            await first.close(code=1011)
            await gw.twilio_api.wait_hangup(call.call_sid)
            await call.wait_closed()
        assert gw.model.refused == [503, 503]
        assert gw.twilio_api.said(call.call_sid) == [ENGINE_FAILURE]
        assert len(gw.twilio_api.updates_of(call.call_sid)) == 1
        assert reconnects(gw, "failed") == 1
        assert reconnects(gw, "ok") == 0
        assert outcome(gw, "engine_error") == 1
        failed = [e for e in logs if e["event"] == "engine.reconnect_failed"]
        assert [(e["attempts"], e["reason"]) for e in failed] == [(2, "503")]

    async def test_exhausted_reconnect_on_telnyx_speaks_the_apology(
        self, start_gateway: StartGateway
    ) -> None:
        """The same on Telnyx: a `speak` of the apology, then the hangup once it has been said."""
        gw = await start_gateway(agent={"audio": "g711"}, server=server(attempts=1))
        call = await gw.telnyx.call_control(gw.telnyx_api)
        first = await gw.model.next_connection()
        gw.model.refuse_with = 503
        await first.close(code=1011)
        speak = await gw.telnyx_api.wait_action(call.call_control_id, "speak")
        assert speak["payload"] == ENGINE_FAILURE
        await gw.telnyx.speak_ended(call.call_control_id)
        await gw.telnyx_api.wait_action(call.call_control_id, "hangup")
        await call.wait_closed()
        engine = gw.config.agents["receptionist"].engine
        assert gw.metric("gateway_engine_reconnects_total", engine=engine, result="failed") == 1

    async def test_refused_credentials_are_not_retried(self, start_gateway: StartGateway) -> None:
        """A 401 on the reconnect means more attempts would be refused too: one try, then hang-up."""
        gw = await start_gateway(agent={"audio": "g711"}, server=server(attempts=3))
        call = await gw.twilio.call()
        first = await gw.model.next_connection()
        gw.model.refuse_with = 401
        await first.close(code=1011)
        await gw.twilio_api.wait_hangup(call.call_sid)
        await call.wait_closed()
        assert gw.model.refused == [401]
        assert reconnects(gw, "failed") == 1

    async def test_expired_session_that_cannot_be_replaced_is_an_engine_error(
        self, start_gateway: StartGateway
    ) -> None:
        """session_expired with no way back ends the call as engine_error (a hang-up)."""
        gw = await start_gateway(agent={"audio": "g711"}, server=server(attempts=1))
        call = await gw.twilio.call()
        first = await gw.model.next_connection()
        gw.model.refuse_with = 503
        await first.error("session_expired", "Your session hit the maximum duration of 60 minutes.")
        await gw.twilio_api.wait_hangup(call.call_sid)
        await call.wait_closed()
        assert outcome(gw, "engine_error") == 1
        assert reconnects(gw, "failed") == 1

    async def test_budget_bounds_the_silence(self, start_gateway: StartGateway) -> None:
        """A handshake that never completes is given up on after `budget_s`, whatever the attempts."""
        gw = await start_gateway(agent={"audio": "g711"}, server=server(attempts=5, budget_s=0.3))
        call = await gw.twilio.call()
        first = await gw.model.next_connection()
        hold = gw.model.hold_upgrades()
        await first.close(code=1011)
        await gw.twilio_api.wait_hangup(call.call_sid)
        await call.wait_closed()
        hold.set()
        assert gw.model.upgrades == 2
        assert reconnects(gw, "failed") == 1

    @pytest.mark.parametrize("code", [1000, 1008, 4000])
    async def test_deliberate_closes_are_not_retried(self, start_gateway: StartGateway, code: int) -> None:
        """The server ending the conversation (1000), refusing what we sent (1008) or an application
        code (4000, the retired beta protocol) ends the call at once as engine_closed: no new socket,
        nothing counted."""
        gw = await start_gateway(agent={"audio": "g711"}, server=server())
        call = await gw.twilio.call()
        first = await gw.model.next_connection()
        await first.close(code=code)
        await gw.twilio_api.wait_hangup(call.call_sid)
        await call.wait_closed()
        assert gw.model.upgrades == 1
        assert outcome(gw, "engine_closed") == 1
        assert gw.twilio_api.said(call.call_sid) == []  # a plain hang-up: nothing failed
        assert reconnects(gw, "failed") == reconnects(gw, "ok") == 0

    async def test_our_own_end_is_not_a_drop(self, start_gateway: StartGateway) -> None:
        """end_call closes the model socket on purpose: the call ends as agent_hangup, no reconnect."""
        gw = await start_gateway(agent={"audio": "g711", "tools": [{"builtin": "end_call"}]}, server=server())
        call = await gw.twilio.call()
        first = await gw.model.next_connection()
        await first.function_call("call_end", "end_call", "{}")
        await first.wait_for("conversation.item.create")
        await first.speak(b"\x55" * 160, chunk_bytes=160)  # the goodbye
        await gw.twilio_api.wait_hangup(call.call_sid)
        await call.wait_closed()
        assert outcome(gw, "agent_hangup") == 1
        assert gw.model.upgrades == 1

    async def test_zero_attempts_disables_reconnecting(self, start_gateway: StartGateway) -> None:
        """`attempts: 0`: a drop ends the call at once (engine_error, with the apology), nothing counted."""
        gw = await start_gateway(agent={"audio": "g711"}, server=server(attempts=0))
        call = await gw.twilio.call()
        first = await gw.model.next_connection()
        await first.close(code=1011)
        await gw.twilio_api.wait_hangup(call.call_sid)
        await call.wait_closed()
        assert gw.model.upgrades == 1
        assert gw.twilio_api.said(call.call_sid) == [ENGINE_FAILURE]
        assert outcome(gw, "engine_error") == 1
        assert reconnects(gw, "failed") == 0

    async def test_caller_hanging_up_during_the_gap_ends_cleanly(self, start_gateway: StartGateway) -> None:
        """The caller hangs up while the gateway reconnects: the call ends as caller_hangup, nobody is
        hung up, nothing is counted and no call is left behind."""
        gw = await start_gateway(agent={"audio": "g711"}, server=server())
        call = await gw.twilio.call()
        first = await gw.model.next_connection()
        hold = gw.model.hold_upgrades()
        await first.close(code=1011)
        await gw.model.wait_upgrades(2)
        await call.stop()
        await call.wait_closed()
        hold.set()
        assert outcome(gw, "caller_hangup") == 1
        assert gw.twilio_api.updates == []
        assert reconnects(gw, "ok") == reconnects(gw, "failed") == 0
        assert len(gw.app[keys.CALLS]) == 0

    async def test_sessions_that_die_right_after_opening_do_not_reconnect_forever(
        self, start_gateway: StartGateway
    ) -> None:
        """A model that accepts every socket, acknowledges the session.update and closes (1011) is a
        failing model: each replacement that drops before proving itself carries on the same outage,
        so with `attempts: 2` the call ends after three sockets as engine_error (apology, hang-up),
        counted `failed` once and never `ok`, instead of being reconnected (and replayed) until
        max_call_duration_s."""
        gw = await start_gateway(agent={"audio": "g711"}, server=server(attempts=2))
        call = await gw.twilio.call()
        with capture_logs() as logs:
            for _ in range(3):
                model = await gw.model.next_connection()
                await model.wait_for("session.update")
                await model.close(code=1011)
            await gw.twilio_api.wait_hangup(call.call_sid)
            await call.wait_closed()
        assert gw.model.upgrades == 3
        assert gw.twilio_api.said(call.call_sid) == [ENGINE_FAILURE]
        assert (reconnects(gw, "ok"), reconnects(gw, "failed")) == (0, 1)
        assert outcome(gw, "engine_error") == 1
        reconnecting = [e["attempt"] for e in logs if e["event"] == "engine.reconnecting"]
        assert reconnecting == [1, 2]
        failed = [(e["attempts"], e["reason"]) for e in logs if e["event"] == "engine.reconnect_failed"]
        assert failed == [(2, "close_1011")]

    async def test_a_replacement_that_proved_itself_starts_a_new_outage_when_it_drops(
        self, start_gateway: StartGateway
    ) -> None:
        """A replacement the agent has spoken through has recovered the call (counted `ok` at once):
        its own later drop is a new outage with every attempt again (`attempts: 1` here)."""
        gw = await start_gateway(agent={"audio": "g711"}, server=server(attempts=1))
        call = await gw.twilio.call()
        first = await gw.model.next_connection()
        await first.close(code=1011)
        second = await gw.model.next_connection()
        await second.wait_for("session.update")
        await second.speak(b"\x44" * 160, chunk_bytes=160)
        await call.wait_audio(160)
        assert reconnects(gw, "ok") == 1
        await second.close(code=1011)
        third = await gw.model.next_connection()
        await third.wait_for("session.update")
        await call.send_audio(b"\x22" * 160)
        await third.wait_audio(160)
        await call.stop()
        await call.wait_closed()
        assert (reconnects(gw, "ok"), reconnects(gw, "failed")) == (2, 0)
        assert outcome(gw, "caller_hangup") == 1
        assert gw.twilio_api.updates == []

    async def test_shutdown_during_a_slow_reconnect_handshake_ends_the_call_without_waiting_for_it(
        self, start_gateway: StartGateway
    ) -> None:
        """The drain's goodbye (shut_down → end("shutdown")) while a reconnect attempt's handshake is
        in flight: the handshake is abandoned and the call ends at once with the goodbye, not after
        the handshake's 10 s connect timeout (which, with Telnyx's spoken goodbye after it, would
        outlast GOODBYE_TIMEOUT_S). The held handshake is never released before the hang-up."""
        gw = await start_gateway(agent={"audio": "g711"}, server=server(budget_s=60))
        call = await gw.twilio.call()
        first = await gw.model.next_connection()
        hold = gw.model.hold_upgrades()
        await first.close(code=1011)
        await gw.model.wait_upgrades(2)  # the reconnect's handshake is now held
        await gw.app[keys.CALLS].shut_down_all()
        try:
            await gw.twilio_api.wait_hangup(call.call_sid)  # bounded by the fake's WAIT_S (5 s)
            await call.wait_closed()
        finally:
            hold.set()
        assert gw.twilio_api.said(call.call_sid) == [SHUTDOWN]
        assert outcome(gw, "shutdown") == 1
        assert reconnects(gw, "ok") == reconnects(gw, "failed") == 0


class TestToolCallsAcrossAReconnect:
    async def test_result_of_a_call_made_before_the_drop_goes_to_the_new_session_as_text(
        self, start_gateway: StartGateway, tools: FakeToolServer
    ) -> None:
        """A tool still running at the drop: its result is never sent with the old call_id (the new
        session never saw that function call) but as a caller-side note, answered at once; a tool
        called on the new session is answered normally."""
        tools.script("lookup", held=True)
        lookup = {**LOOKUP, "webhook": {"url": tools.url("lookup")}}
        gw = await start_gateway(agent={"audio": "g711", "tools": [lookup]}, server=server())
        await gw.twilio.call()
        first = await gw.model.next_connection()
        await first.function_call("call_old", "lookup_booking", '{"name": "Ada"}')
        await tools.wait_requests(1)
        await first.close(code=1011)
        second = await gw.model.next_connection()
        await second.wait_for("session.update")
        tools.release("lookup")
        created = (await second.wait_for("conversation.item.create"))[0]["item"]
        text = late_result_text("lookup_booking", '{"ok": true}')
        assert created == message("user", "input_text", text)
        await second.wait_for("response.create")

        await second.function_call("call_new", "lookup_booking", '{"name": "Ada"}')
        items = [e["item"] for e in await second.wait_for("conversation.item.create", 2)]
        assert items[1] == {"type": "function_call_output", "call_id": "call_new", "output": '{"ok": true}'}
        assert all(e["item"].get("call_id") != "call_old" for e in second.of_type("conversation.item.create"))
        assert first.of_type("conversation.item.create") == []


class TestRollover:
    async def test_session_is_replaced_at_a_quiet_moment_before_its_maximum_length(
        self, start_gateway: StartGateway
    ) -> None:
        """`rollover_after_s` after a session starts, the next one is opened while the first still
        carries the call, and swapped in only once the agent's response is over: every word of it
        reaches the caller, the new session gets the replay, the old one is closed, `rollover` is
        counted and nothing is hung up."""
        gw = await start_gateway(agent={"audio": "g711"}, server=server(rollover_after_s=0.2))
        call = await gw.twilio.call()
        first = await gw.model.next_connection()
        update = (await first.wait_for("session.update"))[0]
        hold = gw.model.hold_upgrades()
        await caller_said(first, "Book a table for two")
        await first.response_created("resp_1")
        await first.audio_delta("resp_1", "item_1", b"\x44" * 160)
        await call.wait_audio(160)
        await gw.model.wait_upgrades(2)
        hold.set()
        second = await gw.model.next_connection()
        await first.audio_delta("resp_1", "item_1", b"\x45" * 160)  # the first still speaks
        await call.wait_audio(320)
        assert second.received == []  # waiting for the response to end
        await first.agent_transcript("Done, table for two.", response_id="resp_1", item_id="item_1")
        await first.audio_done("resp_1", "item_1")
        await first.response_done("resp_1")

        assert (await second.wait_for("session.update"))[0] == update
        items = [e["item"] for e in await second.wait_for("conversation.item.create", 2)]
        assert items == [
            message("user", "input_text", "Book a table for two"),
            message("assistant", "output_text", "Done, table for two."),
        ]
        await asyncio.wait_for(first.closed.wait(), 5)
        await call.send_audio(b"\x22" * 160)
        await second.wait_audio(160)
        assert bytes(call.audio_out) == b"\x44" * 160 + b"\x45" * 160
        assert second.of_type("response.create") == []
        assert reconnects(gw, "rollover") == 1
        assert gw.twilio_api.updates == []

    async def test_rollover_waits_for_a_running_tool_and_its_answer(
        self, start_gateway: StartGateway, tools: FakeToolServer
    ) -> None:
        """A tool running when the rollover is due: its result still goes to the session that called
        it (with its call_id), and the swap waits until the agent has answered it; the new session's
        replay carries the tool's use as a system note."""
        tools.script("lookup", held=True)
        lookup = {**LOOKUP, "webhook": {"url": tools.url("lookup")}}
        agent = {"audio": "g711", "tools": [lookup]}
        gw = await start_gateway(agent=agent, server=server(rollover_after_s=0.2))
        await gw.twilio.call()
        first = await gw.model.next_connection()
        hold = gw.model.hold_upgrades()
        await first.function_call("call_1", "lookup_booking", '{"name": "Ada"}')
        await tools.wait_requests(1)
        await gw.model.wait_upgrades(2)
        hold.set()
        second = await gw.model.next_connection()
        tools.release("lookup")
        output = (await first.wait_for("conversation.item.create"))[0]["item"]
        assert output == {"type": "function_call_output", "call_id": "call_1", "output": '{"ok": true}'}
        assert second.received == []  # the answer to the tool is still owed
        await first.speak(b"\x44" * 160, chunk_bytes=160)
        items = [e["item"] for e in await second.wait_for("conversation.item.create")]
        note = 'The agent called lookup_booking({"name": "Ada"}); it returned {"ok": true}'
        assert items == [message("system", "input_text", note)]
        await asyncio.wait_for(first.closed.wait(), 5)
        assert reconnects(gw, "rollover") == 1

    async def test_tool_result_during_the_swap_goes_to_the_new_session(
        self, start_gateway: StartGateway, tools: FakeToolServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A tool that finishes while the next session is being given the conversation (here the
        rollover stopped waiting for quiet: rollover_wait_s 0): its result is held until the swap and
        reaches the new session as a note, never the old session, which is closed right after."""
        tools.script("lookup", held=True)
        lookup = {**LOOKUP, "webhook": {"url": tools.url("lookup")}}
        rollover = server(rollover_after_s=0.3, rollover_wait_s=0)
        gw = await start_gateway(agent={"audio": "g711", "tools": [lookup]}, server=rollover)
        resuming, resume = asyncio.Event(), asyncio.Event()
        real_resume = OpenAIRealtimeSession.resume

        async def held_resume(session: OpenAIRealtimeSession, turns: Any, instructions: str | None) -> None:
            resuming.set()
            await resume.wait()
            await real_resume(session, turns, instructions)

        monkeypatch.setattr(OpenAIRealtimeSession, "resume", held_resume)
        await gw.twilio.call()
        first = await gw.model.next_connection()
        await first.function_call("call_1", "lookup_booking", '{"name": "Ada"}')
        await tools.wait_requests(1)
        second = await gw.model.next_connection()
        await asyncio.wait_for(resuming.wait(), 5)  # the rollover is giving `second` the conversation
        tools.release("lookup")
        await stays_false(first.wait_for("conversation.item.create"))
        resume.set()
        await asyncio.wait_for(first.closed.wait(), 5)
        item = (await second.wait_for("conversation.item.create"))[0]["item"]
        assert item == message("user", "input_text", late_result_text("lookup_booking", '{"ok": true}'))
        await second.wait_for("response.create")
        assert first.of_type("conversation.item.create") == []
        assert reconnects(gw, "rollover") == 1

    async def test_a_failed_handoff_does_not_hold_the_rollover_up(self, start_gateway: StartGateway) -> None:
        """A hand-off whose agent cannot be reached (its socket refused) leaves no tool call running:
        the rollover that follows finds the call quiet and swaps, instead of waiting out
        `rollover_wait_s` (60 s here) at every rollover of the call."""
        agents = {
            "receptionist": {
                "engine": "openai_realtime_2",
                "audio": "g711",
                "tools": [{"builtin": "handoff", "agents": ["billing"]}],
            },
            "billing": {"engine": "openai_realtime_2", "audio": "g711"},
        }
        rollover = server(rollover_after_s=0.5, rollover_wait_s=60)
        gw = await start_gateway(agents=agents, server=rollover)
        await gw.twilio.call()
        first = await gw.model.next_connection()
        gw.model.refuse_with = 503
        await first.function_call("call_1", "handoff", '{"agent": "billing"}')
        await first.wait_for("response.create")  # the agent is asked to apologise: the hand-off failed
        assert gw.model.refused == [503]
        gw.model.refuse_with = None
        second = await gw.model.next_connection()  # the rollover (tried again a period later if refused)
        await second.wait_for("session.update")
        await asyncio.wait_for(first.closed.wait(), 5)
        assert reconnects(gw, "rollover") == 1

    async def test_rollover_that_cannot_connect_leaves_the_call_alone(
        self, start_gateway: StartGateway
    ) -> None:
        """The replacement refused: counted `rollover_failed` (and tried again a period later), the
        current session carries on."""
        gw = await start_gateway(agent={"audio": "g711"}, server=server(rollover_after_s=0.2))
        call = await gw.twilio.call()
        first = await gw.model.next_connection()
        gw.model.refuse_with = 503
        await gw.model.wait_upgrades(2)
        await stays_false(first.closed.wait())
        await call.send_audio(b"\x22" * 160)
        await first.wait_audio(160)
        assert gw.twilio_api.updates == []
        assert reconnects(gw, "rollover_failed") >= 1
        assert reconnects(gw, "rollover") == 0


class TestElevenLabsReconnect:
    async def test_dropped_conversation_is_restarted_with_the_context(
        self, start_gateway: StartGateway
    ) -> None:
        """ElevenLabs has no replay: a new conversation (a fresh signed URL) with an empty first
        message (no second greeting) and the conversation so far as a contextual_update; audio then
        flows both ways through it."""
        agent = {"agent_id": "agent_test", "first_message": "Hi, support here."}
        gw = await start_gateway("elevenlabs", agent=agent, server=server())
        call = await gw.twilio.call()
        first = await gw.elevenlabs.next_connection()
        await first.wait_for("conversation_initiation_client_data")
        assert first.client_data is not None
        assert (
            first.client_data["conversation_config_override"]["agent"]["first_message"] == "Hi, support here."
        )
        await first.user_transcript("My router is broken")
        await first.agent_response("Have you tried restarting it?")
        await first.close(1011)

        second = await gw.elevenlabs.next_connection()
        await second.wait_for("conversation_initiation_client_data")
        assert second.client_data is not None
        assert second.client_data["conversation_config_override"]["agent"]["first_message"] == ""
        update = (await second.wait_for("contextual_update"))[0]["text"]
        assert "Caller: My router is broken\nAgent: Have you tried restarting it?" in update
        await call.send_audio(b"\x22" * 160)
        await second.wait_audio(160)
        assert second.of_type("user_message") == []  # the agent had answered: nothing owed
        await second.audio(b"\x33" * 160, event_id=1)
        await call.wait_audio(160)
        assert gw.elevenlabs.signed_url_requests == 2
        assert gw.metric("gateway_engine_reconnects_total", engine="elevenlabs_convai", result="ok") == 1
        assert gw.twilio_api.updates == []


class TestConversationLog:
    def test_caller_turns_keep_their_place_when_transcribed_late(self) -> None:
        """A committed caller turn is placed before the agent's answer even when its transcription
        arrives after it; never-transcribed turns are left out."""
        log = ConversationLog()
        log.committed("u1")
        log.agent_said("Hello!")
        log.caller_said("Hi there", "u1")
        log.committed("u2")  # never transcribed
        log.tool_used("lookup", '{"a": 1}', '{"ok": true}')
        assert log.turns(10, 10_000) == [
            Turn("caller", "Hi there"),
            Turn("agent", "Hello!"),
            Turn("tool", 'The agent called lookup({"a": 1}); it returned {"ok": true}'),
        ]
        assert len(log) == 3

    def test_replay_is_capped_by_turns_and_characters_keeping_the_latest(self) -> None:
        """The replay keeps the most recent turns within both caps, oldest first; long turns are cut."""
        log = ConversationLog()
        for n in range(5):
            log.caller_said(f"question {n}")
            log.agent_said(f"answer {n}")
        assert [t.text for t in log.turns(3, 10_000)] == ["answer 3", "question 4", "answer 4"]
        assert [t.text for t in log.turns(10, 20)] == ["question 4", "answer 4"]
        log.agent_said("x" * (MAX_TURN_CHARS + 50))
        assert len(log.turns(1, 10_000)[0].text) == MAX_TURN_CHARS


class TestReplayShapes:
    @pytest.mark.parametrize("dialect", DIALECTS)
    def test_items_are_valid_client_events_of_each_dialect(self, dialect: str) -> None:
        """Caller, agent and tool turns become user, assistant and system messages that the SDK types
        of the dialect accept with no extra key."""
        turns = [Turn("caller", "hi"), Turn("agent", "hello"), Turn("tool", "lookup returned 1")]
        items = openai_items(turns, "output_text" if dialect == "ga" else "text")
        assert [item["role"] for item in items] == ["user", "assistant", "system"]
        for item in items:
            event = {"type": "conversation.item.create", "item": item}
            assert validate_client_event(event, "ga" if dialect == "ga" else "beta") == []

    def test_elevenlabs_context_lists_the_turns(self) -> None:
        """The ElevenLabs context names who said what, one turn per line."""
        text = context_text([Turn("caller", "hi"), Turn("agent", "hello")])
        assert text.endswith("Caller: hi\nAgent: hello")


class TestRetryPolicy:
    @pytest.mark.parametrize(
        ("code", "cause"),
        [(1001, "close_1001"), (1006, "close_1006"), (1011, "close_1011"), (1012, "close_1012"),
         (1013, "close_1013"), (1014, "close_1014"), (None, "connection_lost"),
         (1000, None), (1002, None), (1008, None), (1009, None), (4000, None)],
    )  # fmt: skip
    def test_which_closes_are_retried(self, code: int | None, cause: str | None) -> None:
        """Going away, server errors, restarts and lost connections are retried; a normal close,
        protocol or policy refusals and application codes are not."""
        assert retry_cause(code) == cause

    def test_backoff_follows_the_list_with_bounded_jitter(self) -> None:
        """Each attempt waits its listed delay (the last repeats), stretched or shrunk by at most
        `jitter`."""
        config = ReconnectConfig(backoff_s=[0.25, 1.0], jitter=0.2)
        assert backoff_delay(1, config, rand=lambda: 0.5) == 0.25
        assert backoff_delay(2, config, rand=lambda: 0.0) == pytest.approx(0.8)
        assert backoff_delay(3, config, rand=lambda: 1.0) == pytest.approx(1.2)


class TestGapSession:
    async def test_audio_is_counted_and_dropped_text_is_kept(self) -> None:
        """During the gap caller audio is only counted; caller text is kept (bounded) for the new
        session; closing it tells the keeper the call is ending."""
        gap = GapSession(SimpleNamespace(input_format=ULAW_8K, output_format=ULAW_8K))  # type: ignore[arg-type]
        await gap.send_audio("AAAA" * 40)  # 120 bytes
        assert (gap.dropped_audio_bytes, gap.dropped_audio_ms) == (120, 15)
        for n in range(MAX_QUEUED_TEXTS + 2):
            await gap.send_user_text(f"The caller pressed {n}")
        assert len(gap.texts) == MAX_QUEUED_TEXTS
        assert [event async for event in gap.events()] == []
        assert await gap.wait_closed(0.01) is False
        await gap.aclose()
        assert await gap.wait_closed(1) is True


class TestReconnectConfig:
    def test_defaults(self) -> None:
        """Three attempts (0.25, 1, 2 s ±20 %) within 15 s; OpenAI sessions rolled over after 55 min."""
        config = ReconnectConfig()
        assert (config.attempts, config.backoff_s, config.jitter, config.budget_s) == (
            3,
            [0.25, 1.0, 2.0],
            0.2,
            15,
        )
        assert (config.rollover_after_s, config.rollover_wait_s) == (3300, 20)

    def test_bad_values_are_reported_with_their_path(self) -> None:
        """Out-of-range values and unknown keys name their YAML path."""
        doc = {
            "server": {
                "public_url": "https://gw.example.com",
                "reconnect": {"attempts": 11, "backoff_s": [-1], "rollover_after_s": 0, "retries": 2},
            },
            "carriers": {"twilio": {"account_sid": "AC1", "auth_token": "t"}},
            "providers": {"openai": {"api_key": "k"}},
            "agents": {"a": {"engine": "openai_realtime_2"}},
        }
        with pytest.raises(ConfigError) as caught:
            parse_config(doc, env={})
        assert caught.value.problems == [
            "server.reconnect.attempts: must be at most 10",
            "server.reconnect.backoff_s.0: must be at least 0.0",
            "server.reconnect.rollover_after_s: must be greater than 0.0",
            "server.reconnect.retries: unknown key",
        ]
