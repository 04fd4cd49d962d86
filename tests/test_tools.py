"""Agents that act (issue 6): tool definitions, webhook tools and their failures, transfers, end_call,
key presses, silence check-ins and hold audio, end to end over loopback sockets: fake Twilio or Telnyx
caller ⇄ real gateway ⇄ fake OpenAI (GA, beta) or ElevenLabs, plus a fake tool webhook service.

Every client event the fake OpenAI server receives is validated against the openai SDK types of its
dialect, so tool definitions, function_call_output items and user text items are checked for shape
in every test that sends them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import wave
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs

import gateway.features
from gateway.audio import pcm16_to_alaw, pcm16_to_ulaw
from gateway.engines.elevenlabs import AUDIO_IDLE_FLUSH_S
from gateway.features import IDLE_GOODBYE
from gateway.playback import CARRIER_BYTES_PER_MS as MS
from gateway.playback import MARK_EVERY_MS
from gateway.tools import MAX_OUTPUT_CHARS
from tests.conftest import Gateway, StartGateway, free_port
from tests.fakes.elevenlabs import FakeElevenLabsConnection
from tests.fakes.openai_realtime import FakeRealtimeConnection
from tests.fakes.signals import tone_ulaw
from tests.fakes.tool_server import FakeToolServer
from tests.fakes.twilio import FakeTwilioCall

ENGINES = {"ga": "openai_realtime_2", "beta": "openai_realtime"}
DIALECTS = ["ga", "beta"]
QUIET_S = 0.3  # how long something that must not happen is given to happen anyway
FRONT_DESK = "+15550001111"
BILLING_SIP = "sip:billing@pbx.example.com"
TRANSFER = {"builtin": "transfer_call", "destinations": {"front_desk": FRONT_DESK, "billing": BILLING_SIP}}
END_CALL = {"builtin": "end_call"}
LOOKUP_PARAMETERS = {
    "type": "object",
    "properties": {"last_name": {"type": "string"}},
    "required": ["last_name"],
}
GOODBYE = b"\x55" * 1600  # 200 ms of agent speech, distinct from anything else on the line


def lookup(tools: FakeToolServer, **webhook: Any) -> dict[str, Any]:
    """The issue's `lookup_appointment` webhook tool, served by the fake tool service."""
    return {
        "name": "lookup_appointment",
        "description": "Find the caller's next appointment",
        "parameters": LOOKUP_PARAMETERS,
        "webhook": {
            "url": tools.url("lookup"),
            "method": "POST",
            "timeout_s": 5,
            "headers": {"Authorization": "Bearer clinic-token", "X-Clinic": "dental"},
            **webhook,
        },
    }


@pytest.fixture
async def tools() -> AsyncIterator[FakeToolServer]:
    async with FakeToolServer() as server:
        yield server
    assert not server.problems, server.problems


async def openai_call(
    gw: Gateway, *, auto_play: bool = True
) -> tuple[FakeTwilioCall, FakeRealtimeConnection]:
    """An inbound Twilio call to the OpenAI agent, past its session.update."""
    call = await gw.twilio.call(auto_play=auto_play)
    model = await gw.model.next_connection()
    await model.wait_for("session.update")
    return call, model


async def elevenlabs_call(
    gw: Gateway, *, auto_play: bool = True
) -> tuple[FakeTwilioCall, FakeElevenLabsConnection]:
    """An inbound Twilio call to the ElevenLabs agent, past the initiation handshake."""
    call = await gw.twilio.call(auto_play=auto_play)
    conn = await gw.elevenlabs.next_connection()
    await conn.wait_for("conversation_initiation_client_data")
    return call, conn


async def client_tool_call(conn: FakeElevenLabsConnection, call_id: str, name: str, **params: Any) -> None:
    """ElevenLabs asks the client to run a tool (§E.3)."""
    await conn.send(
        {
            "type": "client_tool_call",
            "client_tool_call": {"tool_name": name, "tool_call_id": call_id, "parameters": params},
        }
    )


def sent_to_model(model: FakeRealtimeConnection) -> list[dict[str, Any]]:
    """What the gateway sent the model, caller audio left out."""
    return [e for e in model.received if e["type"] != "input_audio_buffer.append"]


async def tool_output(model: FakeRealtimeConnection, n: int = 1) -> dict[str, Any]:
    """The `n`-th conversation.item.create, once it is known to be followed by a bare response.create."""
    item_event = (await model.wait_for("conversation.item.create", n))[n - 1]
    sent = sent_to_model(model)
    index = next(i for i, e in enumerate(sent) if e is item_event)
    creates_before = sum(1 for e in sent[:index] if e["type"] == "response.create")
    await model.wait_for("response.create", creates_before + 1)
    assert sent_to_model(model)[index + 1] == {"type": "response.create"}
    item: dict[str, Any] = item_event["item"]
    return item


def error_of(item: dict[str, Any]) -> str:
    assert item["type"] == "function_call_output"
    error: str = json.loads(item["output"])["error"]
    return error


async def stays_false(wait: Coroutine[Any, Any, Any], quiet_s: float = QUIET_S) -> None:
    """`wait` (a fake waiting for something that must not happen) is still waiting after `quiet_s`."""
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(quiet_s):
            await wait


async def assert_alive(gw: Gateway, call: FakeTwilioCall, model: FakeRealtimeConnection) -> None:
    """Audio still flows both ways and nobody hung up: the call survived."""
    before = len(model.audio_in)
    await call.send_audio(b"\x12" * 160)
    await model.wait_audio(before + 160)
    before = len(call.audio_out)
    await model.audio_delta("resp_alive", "item_alive", b"\x34" * 160)
    await call.wait_audio(before + 160)
    assert gw.twilio_api.updates == []
    assert not model.closed.is_set()


def outcome(gw: Gateway, reason: str, carrier: str = "twilio") -> float:
    engine = gw.config.agents["receptionist"].engine
    return gw.metric("gateway_calls_total", carrier=carrier, agent="receptionist", engine=engine,
                     outcome=reason)  # fmt: skip


class TestToolDefinitions:
    @pytest.mark.parametrize("dialect", DIALECTS)
    async def test_every_kind_of_tool_is_declared_in_session_update(
        self, start_gateway: StartGateway, tools: FakeToolServer, dialect: str
    ) -> None:
        """Webhook, end_call, transfer_call (enum of destination names) and handoff (enum of agents)
        become function tools with tool_choice auto; no number or SIP URI reaches the model."""
        agents = {
            "receptionist": {
                "engine": ENGINES[dialect],
                "tools": [lookup(tools), END_CALL, TRANSFER, {"builtin": "handoff", "agents": ["spanish"]}],
            },
            "spanish": {"engine": ENGINES[dialect], "prompt": "Habla español."},
        }
        gw = await start_gateway(dialect, agents=agents)
        _, model = await openai_call(gw)
        session = model.of_type("session.update")[0]["session"]
        assert session["tool_choice"] == "auto"
        specs = {spec["name"]: spec for spec in session["tools"]}
        assert list(specs) == ["lookup_appointment", "end_call", "transfer_call", "handoff"]
        assert all(spec["type"] == "function" and spec["description"] for spec in specs.values())
        assert specs["lookup_appointment"]["description"] == "Find the caller's next appointment"
        assert specs["lookup_appointment"]["parameters"] == LOOKUP_PARAMETERS
        assert specs["end_call"]["parameters"] == {"type": "object", "properties": {}}
        assert specs["transfer_call"]["parameters"] == {
            "type": "object",
            "required": ["destination"],
            "properties": {"destination": {"type": "string", "enum": ["billing", "front_desk"]}},
        }
        assert specs["handoff"]["parameters"]["properties"]["agent"]["enum"] == ["spanish"]
        wire = json.dumps(model.received)
        for secret in ("5550001111", "pbx.example.com", "sip:", "clinic-token", tools.url("lookup")):
            assert secret not in wire

    @pytest.mark.parametrize("dialect", DIALECTS)
    async def test_no_tools_means_no_tools_key(self, start_gateway: StartGateway, dialect: str) -> None:
        """An agent without tools sends neither `tools` nor `tool_choice`."""
        gw = await start_gateway(dialect, agent={"audio": "g711"})
        _, model = await openai_call(gw)
        session = model.of_type("session.update")[0]["session"]
        assert "tools" not in session
        assert "tool_choice" not in session


class TestWebhookRoundTrip:
    @pytest.mark.parametrize("dialect", DIALECTS)
    async def test_openai_round_trip(
        self, start_gateway: StartGateway, tools: FakeToolServer, dialect: str
    ) -> None:
        """A completed function call POSTs {call_id, agent, tool, arguments} with the configured
        headers; the body comes back as function_call_output, then response.create, once each."""
        tools.script("lookup", body='{"next": "Tuesday 10:00"}')
        gw = await start_gateway(dialect, agent={"audio": "g711", "tools": [lookup(tools)]})
        with capture_logs() as logs:
            call, model = await openai_call(gw)
            await model.function_call("call_1", "lookup_appointment", '{"last_name": "Smith"}', streamed=True)
            request = (await tools.wait_requests())[0]
            item = await tool_output(model)
        # Arguments, results and webhook secrets are the caller's business, not the log's.
        for entry in logs:
            for secret in ("Smith", "Tuesday", "clinic-token", "dental"):
                assert secret not in repr(entry), entry
        assert request.method == "POST"
        assert request.body == {
            "call_id": call.call_sid,
            "agent": "receptionist",
            "tool": "lookup_appointment",
            "arguments": {"last_name": "Smith"},
        }
        assert request.headers["Authorization"] == "Bearer clinic-token"
        assert request.headers["X-Clinic"] == "dental"
        assert item == {
            "type": "function_call_output",
            "call_id": "call_1",
            "output": '{"next": "Tuesday 10:00"}',
        }
        await assert_alive(gw, call, model)
        assert len(tools.requests) == 1
        assert len(model.of_type("conversation.item.create")) == 1
        assert len(model.of_type("response.create")) == 1

    async def test_put_method_is_honoured(self, start_gateway: StartGateway, tools: FakeToolServer) -> None:
        """`method: PUT` sends the same JSON body with PUT."""
        gw = await start_gateway(agent={"audio": "g711", "tools": [lookup(tools, method="PUT")]})
        _, model = await openai_call(gw)
        await model.function_call("call_1", "lookup_appointment", '{"last_name": "Smith"}')
        await tool_output(model)
        assert [(r.method, r.body["tool"]) for r in tools.requests] == [("PUT", "lookup_appointment")]

    async def test_elevenlabs_round_trip(self, start_gateway: StartGateway, tools: FakeToolServer) -> None:
        """client_tool_call → the same webhook request → client_tool_result with is_error false."""
        tools.script("lookup", body='{"next": "Tuesday 10:00"}')
        gw = await start_gateway("elevenlabs", agent={"agent_id": "agent_test", "tools": [lookup(tools)]})
        call, conn = await elevenlabs_call(gw)
        await client_tool_call(conn, "tool_1", "lookup_appointment", last_name="Smith")
        request = (await tools.wait_requests())[0]
        assert request.body == {
            "call_id": call.call_sid,
            "agent": "receptionist",
            "tool": "lookup_appointment",
            "arguments": {"last_name": "Smith"},
        }
        assert request.headers["Authorization"] == "Bearer clinic-token"
        result = (await conn.wait_for("client_tool_result"))[0]
        assert result == {
            "type": "client_tool_result",
            "tool_call_id": "tool_1",
            "result": '{"next": "Tuesday 10:00"}',
            "is_error": False,
        }

    @pytest.mark.parametrize("dialect", DIALECTS)
    async def test_audio_flows_both_ways_while_a_tool_runs(
        self, start_gateway: StartGateway, tools: FakeToolServer, dialect: str
    ) -> None:
        """While the webhook has not answered, caller audio reaches the model and model audio the
        caller; the result follows once the tool answers."""
        tools.script("lookup", held=True)
        gw = await start_gateway(dialect, agent={"audio": "g711", "tools": [lookup(tools)]})
        call, model = await openai_call(gw)
        await model.function_call("call_1", "lookup_appointment", '{"last_name": "Smith"}')
        await tools.wait_requests()

        caller_audio = tone_ulaw(400)
        await call.send_audio(caller_audio)
        await model.wait_audio(len(caller_audio))
        assert bytes(model.audio_in) == caller_audio
        agent_audio = tone_ulaw(400, hz=700)
        await model.response_created("resp_2")
        await model.audio_delta("resp_2", "item_2", agent_audio)
        await call.wait_audio(len(agent_audio))
        assert bytes(call.audio_out) == agent_audio
        assert tools.answered == []
        assert model.of_type("conversation.item.create") == []

        tools.release("lookup")
        assert (await tool_output(model))["output"] == '{"ok": true}'

    async def test_audio_flows_while_an_elevenlabs_tool_runs(
        self, start_gateway: StartGateway, tools: FakeToolServer
    ) -> None:
        """The same for ElevenLabs: a slow client tool holds up neither direction."""
        tools.script("lookup", held=True)
        gw = await start_gateway("elevenlabs", agent={"agent_id": "agent_test", "tools": [lookup(tools)]})
        call, conn = await elevenlabs_call(gw)
        await client_tool_call(conn, "tool_1", "lookup_appointment", last_name="Smith")
        await tools.wait_requests()
        await call.send_audio(tone_ulaw(200))
        await conn.wait_audio(1600)
        await conn.audio(tone_ulaw(200, hz=700), event_id=1)
        await call.wait_audio(1600)
        assert conn.of_type("client_tool_result") == []
        tools.release("lookup")
        assert (await conn.wait_for("client_tool_result"))[0]["is_error"] is False


@dataclass(frozen=True)
class Failure:
    """One way a tool call goes wrong, and what the error output must say."""

    says: str
    name: str = "lookup_appointment"
    arguments: str = '{"last_name": "Smith"}'
    script: dict[str, Any] = field(default_factory=dict)  # how the fake webhook answers
    webhook: dict[str, Any] = field(default_factory=dict)  # overrides of the tool's webhook config
    unreachable: bool = False
    reaches_webhook: bool = True


FAILURES = {
    "timeout": Failure("did not answer within 0.2 s", script={"delay_s": 3.0}, webhook={"timeout_s": 0.2}),
    "http_500": Failure("answered HTTP 500", script={"status": 500, "body": "Internal Server Error"}),
    "unreachable": Failure("could not be reached", unreachable=True, reaches_webhook=False),
    "invalid_json": Failure("not valid JSON", arguments='{"last_name": "Sm', reaches_webhook=False),
    "not_an_object": Failure("must be a JSON object", arguments='["Smith"]', reaches_webhook=False),
    "unknown_tool": Failure(
        "unknown tool 'delete_everything'; available: lookup_appointment",
        name="delete_everything",
        reaches_webhook=False,
    ),
}


class TestToolErrors:
    @pytest.mark.parametrize("dialect", DIALECTS)
    @pytest.mark.parametrize("case", list(FAILURES))
    async def test_failure_becomes_an_error_output_and_the_call_goes_on(
        self, start_gateway: StartGateway, tools: FakeToolServer, dialect: str, case: str
    ) -> None:
        """Timeouts, HTTP 500, an unreachable service, arguments that are not JSON or not an object and
        unknown tool names all answer the model with {"error": ...} and response.create; the call lives."""
        failure = FAILURES[case]
        tools.script("lookup", **failure.script)
        tool = lookup(tools, **failure.webhook)
        if failure.unreachable:
            tool["webhook"]["url"] = f"http://127.0.0.1:{free_port()}/tools/lookup"
        gw = await start_gateway(dialect, agent={"audio": "g711", "tools": [tool]})
        call, model = await openai_call(gw)
        await model.function_call("call_1", failure.name, failure.arguments)
        item = await tool_output(model)
        assert item["call_id"] == "call_1"
        assert failure.says in error_of(item)
        assert len(tools.requests) == (1 if failure.reaches_webhook else 0)
        await assert_alive(gw, call, model)

    async def test_elevenlabs_failure_is_an_error_result(
        self, start_gateway: StartGateway, tools: FakeToolServer
    ) -> None:
        """For ElevenLabs a failed tool is a client_tool_result with is_error true; the call lives."""
        tools.script("lookup", status=500)
        gw = await start_gateway("elevenlabs", agent={"agent_id": "agent_test", "tools": [lookup(tools)]})
        call, conn = await elevenlabs_call(gw)
        await client_tool_call(conn, "tool_1", "lookup_appointment", last_name="Smith")
        result = (await conn.wait_for("client_tool_result"))[0]
        assert result["is_error"] is True
        assert "HTTP 500" in json.loads(result["result"])["error"]
        await call.send_audio(b"\x12" * 160)
        await conn.wait_audio(160)
        assert gw.twilio_api.updates == []

    @pytest.mark.parametrize("dialect", DIALECTS)
    async def test_incomplete_function_call_is_not_acted_on(
        self, start_gateway: StartGateway, tools: FakeToolServer, dialect: str
    ) -> None:
        """A function_call item done with status "incomplete" (cut short, its arguments a fragment)
        runs nothing and gets no output; a completed call after it is answered (§B.5)."""
        gw = await start_gateway(dialect, agent={"audio": "g711", "tools": [lookup(tools), END_CALL]})
        call, model = await openai_call(gw)
        await model.function_call("call_cut", "end_call", "{", status="incomplete", streamed=True)
        await model.function_call("call_cut2", "lookup_appointment", '{"last_na', status="incomplete")
        await model.response_done("resp_cut", status="cancelled")
        await model.function_call("call_ok", "lookup_appointment", '{"last_name": "Jones"}')
        item = await tool_output(model)
        assert item["call_id"] == "call_ok"
        assert [r.body["arguments"] for r in tools.requests] == [{"last_name": "Jones"}]
        assert len(model.of_type("conversation.item.create")) == 1
        await assert_alive(gw, call, model)

    async def test_garbage_body_reaches_the_model_as_bounded_text(
        self, start_gateway: StartGateway, tools: FakeToolServer
    ) -> None:
        """A 200 answer that is not JSON (nor UTF-8) is passed on as text, capped in size."""
        tools.script("lookup", body=b"\xff\xfe<html>" + b"x" * 40_000, content_type="text/html")
        gw = await start_gateway(agent={"audio": "g711", "tools": [lookup(tools)]})
        call, model = await openai_call(gw)
        await model.function_call("call_1", "lookup_appointment", '{"last_name": "Smith"}')
        output = (await tool_output(model))["output"]
        assert output.startswith("\ufffd\ufffd<html>xxx")
        assert len(output) == MAX_OUTPUT_CHARS
        await assert_alive(gw, call, model)


async def speak_goodbye(model: FakeRealtimeConnection, call: FakeTwilioCall) -> None:
    """The agent's answer to the tool output: a whole response whose audio reaches the caller."""
    before, marks_before = len(call.audio_out), len(call.of_type("mark"))
    await model.speak(GOODBYE, chunk_bytes=800, response_id="resp_2", item_id="item_2")
    await call.wait_audio(before + len(GOODBYE))
    # All audio before it was marked; the goodbye gets one mark per 200 ms, the last at its end.
    await call.wait_for("mark", count=marks_before + -(-len(GOODBYE) // (MARK_EVERY_MS * MS)))


class TestTransfer:
    @pytest.mark.parametrize(("dialect", "name", "dial"), [
        ("ga", "front_desk", FRONT_DESK),
        ("beta", "front_desk", FRONT_DESK),
        ("ga", "billing", f"<Sip>{BILLING_SIP}</Sip>"),
    ])  # fmt: skip
    async def test_twilio_transfer_after_the_transferring_turn_is_heard(
        self, start_gateway: StartGateway, dialect: str, name: str, dial: str
    ) -> None:
        """transfer_call by name: the output goes to the model, its short answer plays, and only once
        its last mark is echoed is the call updated with <Dial> TwiML; then the call ends, no hang-up."""
        gw = await start_gateway(dialect, agent={"audio": "g711", "tools": [TRANSFER]})
        call, model = await openai_call(gw, auto_play=False)
        await model.function_call("call_t", "transfer_call", json.dumps({"destination": name}),
                                  response_id="resp_1")  # fmt: skip
        item = await tool_output(model)
        assert json.loads(item["output"]) == {"status": f"transferring to {name}"}
        # The response that carried the call ends after the gateway answered it: not the awaited turn.
        await model.response_done("resp_1")
        await stays_false(gw.twilio_api.wait_update(call.call_sid))
        await speak_goodbye(model, call)
        await stays_false(gw.twilio_api.wait_update(call.call_sid))

        await call.play(len(call.audio_out))
        form = (await gw.twilio_api.wait_update(call.call_sid))[0]
        assert set(form) == {"Twiml"}
        assert form["Twiml"].endswith(f"<Response><Dial>{dial}</Dial></Response>")
        root = ET.fromstring(form["Twiml"])  # noqa: S314 - the gateway under test wrote it
        assert root.tag == "Response"
        await call.wait_closed()
        await asyncio.wait_for(model.closed.wait(), 5)
        assert gw.twilio_api.hangups() == []
        assert outcome(gw, "transferred") == 1
        wire = json.dumps(model.received)
        assert "5550001111" not in wire
        assert "pbx.example.com" not in wire

    async def test_telnyx_transfer_action(self, start_gateway: StartGateway) -> None:
        """On Telnyx the transfer is the `transfer` action with {"to": <the configured number>}."""
        gw = await start_gateway(agent={"audio": "g711", "tools": [TRANSFER]})
        call = await gw.telnyx.call_control(gw.telnyx_api)
        model = await gw.model.next_connection()
        await model.function_call("call_t", "transfer_call", '{"destination": "front_desk"}')
        await tool_output(model)
        await model.speak(GOODBYE, chunk_bytes=800)
        body = await gw.telnyx_api.wait_action(call.call_control_id, "transfer")
        assert body == {"to": FRONT_DESK}
        await call.wait_closed()
        assert gw.telnyx_api.hangups() == []
        assert outcome(gw, "transferred", carrier="telnyx") == 1

    async def test_elevenlabs_transfer(self, start_gateway: StartGateway) -> None:
        """An ElevenLabs client_tool_call transfer_call: result, the agent's words, then the update."""
        gw = await start_gateway("elevenlabs", agent={"agent_id": "agent_test", "tools": [TRANSFER]})
        call, conn = await elevenlabs_call(gw)
        await client_tool_call(conn, "tool_t", "transfer_call", destination="billing")
        result = (await conn.wait_for("client_tool_result"))[0]
        assert result["is_error"] is False
        await conn.audio(GOODBYE, event_id=1)
        form = (await gw.twilio_api.wait_update(call.call_sid))[0]
        assert form["Twiml"].endswith(f"<Response><Dial><Sip>{BILLING_SIP}</Sip></Dial></Response>")
        await call.wait_closed()
        assert gw.twilio_api.hangups() == []

    @pytest.mark.parametrize("dialect", DIALECTS)
    async def test_unknown_destination_is_an_error_output_listing_the_names(
        self, start_gateway: StartGateway, dialect: str
    ) -> None:
        """A name not in the allowlist (a raw number included) gets an error naming the allowed
        destinations, and the carrier is never asked to transfer."""
        gw = await start_gateway(dialect, agent={"audio": "g711", "tools": [TRANSFER]})
        call, model = await openai_call(gw)
        for n, choice in enumerate(["+15559990000", "sales"], start=1):
            await model.function_call(f"call_{n}", "transfer_call", json.dumps({"destination": choice}))
            error = error_of(await tool_output(model, n))
            assert error == "unknown destination; choose one of: billing, front_desk"
        await model.speak(GOODBYE, chunk_bytes=800)
        await assert_alive(gw, call, model)

    async def test_telnyx_unknown_destination_sends_no_action(self, start_gateway: StartGateway) -> None:
        """On Telnyx too an unknown name is an error output and no transfer action is posted."""
        gw = await start_gateway(agent={"audio": "g711", "tools": [TRANSFER]})
        call = await gw.telnyx.call_control(gw.telnyx_api)
        model = await gw.model.next_connection()
        await model.function_call("call_1", "transfer_call", '{"destination": "sales"}')
        assert "billing, front_desk" in error_of(await tool_output(model))
        await model.speak(GOODBYE, chunk_bytes=800)
        await call.send_audio(b"\x12" * 160)
        await model.wait_audio(160)
        assert [action for _, action, _ in gw.telnyx_api.actions] == ["answer"]

    async def test_twilio_refusal_makes_the_agent_apologise(self, start_gateway: StartGateway) -> None:
        """When Twilio refuses the update the agent is asked (a system message, then response.create)
        to apologise, and the call goes on."""
        gw = await start_gateway(agent={"audio": "g711", "tools": [TRANSFER]})
        call, model = await openai_call(gw)
        gw.twilio_api.status_for[call.call_sid] = 400
        await model.function_call("call_t", "transfer_call", '{"destination": "front_desk"}')
        await tool_output(model)
        await model.speak(GOODBYE, chunk_bytes=800)
        await model.wait_for("response.create", 2)
        assert "Apologise" in model.system_notes()[-1]
        assert len(gw.twilio_api.updates) == 1
        gw.twilio_api.updates.clear()
        await assert_alive(gw, call, model)

    async def test_telnyx_refusal_makes_the_agent_apologise(self, start_gateway: StartGateway) -> None:
        """The same when Telnyx answers the transfer action with an error."""
        gw = await start_gateway(agent={"audio": "g711", "tools": [TRANSFER]})
        call = await gw.telnyx.call_control(gw.telnyx_api)
        gw.telnyx_api.status_for[(call.call_control_id, "transfer")] = 422
        model = await gw.model.next_connection()
        await model.function_call("call_t", "transfer_call", '{"destination": "front_desk"}')
        await tool_output(model)
        await model.speak(GOODBYE, chunk_bytes=800)
        await model.wait_for("response.create", 2)
        assert "Apologise" in model.system_notes()[-1]
        await call.send_audio(b"\x12" * 160)
        await model.wait_audio(160)
        assert gw.telnyx_api.hangups() == []
        assert not model.closed.is_set()


class TestEndCall:
    @pytest.mark.parametrize("dialect", DIALECTS)
    async def test_hang_up_waits_for_the_goodbye_to_be_heard(
        self, start_gateway: StartGateway, dialect: str
    ) -> None:
        """end_call: the output goes to the model, which says goodbye; the gateway hangs up only once
        the goodbye response is done and its last mark echoed, then counts agent_hangup."""
        gw = await start_gateway(dialect, agent={"audio": "g711", "tools": [END_CALL]})
        call, model = await openai_call(gw, auto_play=False)
        await model.function_call("call_e", "end_call", "{}", response_id="resp_1")
        assert json.loads((await tool_output(model))["output"]) == {"status": "ending the call"}
        await model.response_done("resp_1")  # the response that carried the call: not the goodbye
        await stays_false(gw.twilio_api.wait_hangup(call.call_sid))
        await speak_goodbye(model, call)
        await call.play(len(call.audio_out) - 800)  # all but the last chunk heard
        await stays_false(gw.twilio_api.wait_hangup(call.call_sid))
        assert gw.twilio_api.updates == []

        await call.play(len(call.audio_out))
        await gw.twilio_api.wait_hangup(call.call_sid)
        await call.wait_closed()
        await asyncio.wait_for(model.closed.wait(), 5)
        assert gw.twilio_api.updates == [(call.call_sid, {"Status": "completed"})]
        assert outcome(gw, "agent_hangup") == 1

    @pytest.mark.parametrize("goodbye", ["none", "never_played"])
    async def test_hang_up_is_bounded(
        self, start_gateway: StartGateway, monkeypatch: pytest.MonkeyPatch, goodbye: str
    ) -> None:
        """Without a goodbye, or with one whose marks never come back, the hang-up comes after
        SPOKEN_TIMEOUT_S."""
        monkeypatch.setattr(gateway.features, "SPOKEN_TIMEOUT_S", 0.3)
        gw = await start_gateway(agent={"audio": "g711", "tools": [END_CALL]})
        call, model = await openai_call(gw, auto_play=False)
        started = time.monotonic()
        await model.function_call("call_e", "end_call", "{}")
        await tool_output(model)
        if goodbye == "never_played":
            await model.speak(GOODBYE, chunk_bytes=800)
        await gw.twilio_api.wait_hangup(call.call_sid)
        assert time.monotonic() - started >= 0.3
        await call.wait_closed()
        assert outcome(gw, "agent_hangup") == 1

    async def test_elevenlabs_end_call(self, start_gateway: StartGateway) -> None:
        """ElevenLabs end_call: client_tool_result, the agent's goodbye plays out, then the hang-up."""
        gw = await start_gateway("elevenlabs", agent={"agent_id": "agent_test", "tools": [END_CALL]})
        call, conn = await elevenlabs_call(gw, auto_play=False)
        await client_tool_call(conn, "tool_e", "end_call")
        assert (await conn.wait_for("client_tool_result"))[0]["is_error"] is False
        await conn.audio(GOODBYE, event_id=1)
        await call.wait_audio(len(GOODBYE))
        # The turn ends once ElevenLabs has been quiet for a while; the goodbye is still unheard then.
        await stays_false(gw.twilio_api.wait_hangup(call.call_sid), AUDIO_IDLE_FLUSH_S + QUIET_S)
        await call.play(len(call.audio_out))
        await gw.twilio_api.wait_hangup(call.call_sid)
        await call.wait_closed()
        assert outcome(gw, "agent_hangup") == 1


def user_texts(model: FakeRealtimeConnection) -> list[str]:
    texts = []
    for event in model.of_type("conversation.item.create"):
        item = event["item"]
        assert item["type"] == "message"
        assert item["role"] == "user"
        assert [part["type"] for part in item["content"]] == ["input_text"]
        texts.append(item["content"][0]["text"])
    return texts


class TestDtmf:
    @pytest.mark.parametrize("dialect", DIALECTS)
    async def test_digits_within_the_gap_are_one_user_turn(
        self, start_gateway: StartGateway, monkeypatch: pytest.MonkeyPatch, dialect: str
    ) -> None:
        """1, 2, 3, # in quick succession become one user text item and one response.create; a digit
        after the gap is a second item. No digit is ever logged."""
        monkeypatch.setattr(gateway.features, "DTMF_GAP_S", 0.2)
        gw = await start_gateway(dialect, agent={"audio": "g711"})
        with capture_logs() as logs:
            call, model = await openai_call(gw)
            for digit in "123#":
                await call.dtmf(digit)
            await model.wait_for("conversation.item.create")
            await model.wait_for("response.create")
            assert user_texts(model) == ["The caller pressed 1 2 3 #"]
            await call.dtmf("9")
            await model.wait_for("conversation.item.create", 2)
            await model.wait_for("response.create", 2)
        assert user_texts(model) == ["The caller pressed 1 2 3 #", "The caller pressed 9"]
        assert [e["type"] for e in sent_to_model(model)][1:] == [
            "conversation.item.create", "response.create", "conversation.item.create", "response.create"
        ]  # fmt: skip
        dtmf_logs = [entry for entry in logs if entry["event"] == "call.dtmf"]
        assert [entry["digits"] for entry in dtmf_logs] == [4, 1]  # counts only
        for entry in logs:
            for value in entry.values():
                assert not (isinstance(value, str) and ("pressed" in value or "1 2 3" in value)), entry
                assert value not in ("123#", "#", "9"), entry

    async def test_telnyx_and_elevenlabs_digits(
        self, start_gateway: StartGateway, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Telnyx dtmf frames batch the same way; for ElevenLabs the digits are a user_message."""
        monkeypatch.setattr(gateway.features, "DTMF_GAP_S", 0.2)
        gw = await start_gateway("elevenlabs", agent={"agent_id": "agent_test"})
        call = await gw.telnyx.call_control(gw.telnyx_api)
        conn = await gw.elevenlabs.next_connection()
        for digit in "42*":
            await call.dtmf(digit)
        message = (await conn.wait_for("user_message"))[0]
        assert message == {"type": "user_message", "text": "The caller pressed 4 2 *"}

    async def test_ignore_sends_nothing(
        self, start_gateway: StartGateway, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With `dtmf: ignore` key presses reach the model in no form."""
        monkeypatch.setattr(gateway.features, "DTMF_GAP_S", 0.05)
        gw = await start_gateway(agent={"audio": "g711", "dtmf": "ignore"})
        call, model = await openai_call(gw)
        for digit in "123#":
            await call.dtmf(digit)
        await call.send_audio(b"\x12" * 160)  # handled after the digits: they have been seen
        await model.wait_audio(160)
        await stays_false(model.wait_for("conversation.item.create"))
        assert [e["type"] for e in sent_to_model(model)] == ["session.update"]


class TestIdle:
    @pytest.mark.parametrize("dialect", DIALECTS)
    async def test_prompts_then_goodbye_then_hang_up(self, start_gateway: StartGateway, dialect: str) -> None:
        """After idle_timeout_s of silence the agent is asked to check in with each prompt in turn,
        then to say goodbye (system messages: the agent's prompt stays in force, no response carries
        instructions of its own); once the goodbye is heard the call is hung up as idle_timeout."""
        prompts = ["Ask if they are there", "Ask again"]
        gw = await start_gateway(
            dialect, agent={"audio": "g711", "idle_timeout_s": 0.2, "idle_prompts": prompts}
        )
        started = time.monotonic()
        call, model = await openai_call(gw)
        creates = await model.wait_for("response.create", 3)
        assert time.monotonic() - started >= 3 * 0.2
        assert model.system_notes() == [*prompts, IDLE_GOODBYE]
        assert all("response" not in create for create in creates)
        await model.speak(GOODBYE, chunk_bytes=800)
        await gw.twilio_api.wait_hangup(call.call_sid)
        await call.wait_closed()
        assert outcome(gw, "idle_timeout") == 1
        assert len(model.of_type("response.create")) == 3

    async def test_caller_speech_starts_the_prompts_over(
        self, start_gateway: StartGateway, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Caller speech (speech_started) after a check-in resets the count: the first prompt comes
        again before the second."""
        monkeypatch.setattr(gateway.features, "SPOKEN_TIMEOUT_S", 0.2)
        prompts = ["Ask if they are there", "Ask again"]
        gw = await start_gateway(agent={"audio": "g711", "idle_timeout_s": 0.3, "idle_prompts": prompts})
        call, model = await openai_call(gw)
        await model.wait_for("response.create")
        await model.speech_started()
        await model.wait_for("response.create", 4)
        assert model.system_notes() == [*prompts[:1], *prompts, IDLE_GOODBYE]
        await gw.twilio_api.wait_hangup(call.call_sid)
        await call.wait_closed()
        assert outcome(gw, "idle_timeout") == 1


def write_wav(path: Path, pcm: bytes, rate_hz: int = 8000) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate_hz)
        wav.writeframes(pcm)


def tone_pcm8k(ms: int, hz: float = 523.0) -> bytes:
    t = np.arange(ms * 8) / 8000
    return (0.3 * 32767 * np.sin(2 * np.pi * hz * t)).astype("<i2").tobytes()


class TestHoldAudio:
    async def test_hold_audio_plays_after_the_delay_and_is_cleared_by_the_result(
        self, start_gateway: StartGateway, tools: FakeToolServer, tmp_path: Path
    ) -> None:
        """A webhook still running after after_ms gets the clip (µ-law, looped) played to the caller;
        the result stops it with one `clear`, after which only the agent is heard."""
        pcm = tone_pcm8k(300)
        write_wav(tmp_path / "hold.wav", pcm)
        clip = pcm16_to_ulaw(pcm)
        tools.script("lookup", held=True, body='{"next": "Tuesday"}')
        agent = {"audio": "g711", "tools": [lookup(tools)],
                 "hold_audio": {"file": str(tmp_path / "hold.wav"), "after_ms": 100}}  # fmt: skip
        gw = await start_gateway(agent=agent)
        call, model = await openai_call(gw)
        started = time.monotonic()
        await model.function_call("call_1", "lookup_appointment", '{"last_name": "Smith"}')
        await call.wait_for("media")
        assert time.monotonic() - started >= 0.1
        await call.wait_audio(len(clip) + 1)  # the clip has looped
        tools.release("lookup")

        assert (await tool_output(model))["output"] == '{"next": "Tuesday"}'
        clear = (await call.wait_for("clear"))[0]
        at = next(i for i, frame in enumerate(call.frames) if frame is clear)
        hold = b"".join(
            base64.b64decode(f["media"]["payload"]) for f in call.frames[:at] if f["event"] == "media"
        )
        assert len(hold) > len(clip)
        assert hold == (clip * (len(hold) // len(clip) + 1))[: len(hold)]

        await speak_goodbye(model, call)
        after = [f for f in call.frames[at + 1 :] if f["event"] == "media"]
        assert b"".join(base64.b64decode(f["media"]["payload"]) for f in after) == GOODBYE
        assert len(call.of_type("clear")) == 1

    async def test_fast_tool_gets_no_hold_audio(
        self, start_gateway: StartGateway, tools: FakeToolServer, tmp_path: Path
    ) -> None:
        """A tool that answers before after_ms: no hold audio, no clear."""
        write_wav(tmp_path / "hold.wav", tone_pcm8k(300))
        agent = {"audio": "g711", "tools": [lookup(tools)],
                 "hold_audio": {"file": str(tmp_path / "hold.wav"), "after_ms": 500}}  # fmt: skip
        gw = await start_gateway(agent=agent)
        call, model = await openai_call(gw)
        await model.function_call("call_1", "lookup_appointment", '{"last_name": "Smith"}')
        await tool_output(model)
        await speak_goodbye(model, call)
        assert bytes(call.audio_out) == GOODBYE
        assert call.of_type("clear") == []

    async def test_telnyx_pcma_hold_audio_is_the_clip_in_a_law(
        self, start_gateway: StartGateway, tools: FakeToolServer, tmp_path: Path
    ) -> None:
        """On a Telnyx PCMA stream the hold clip is played in A-law, and cleared by the result."""
        pcm = tone_pcm8k(300)
        write_wav(tmp_path / "hold.wav", pcm)
        clip = pcm16_to_alaw(pcm)
        tools.script("lookup", held=True)
        agent = {"audio": "g711", "tools": [lookup(tools)],
                 "hold_audio": {"file": str(tmp_path / "hold.wav"), "after_ms": 50}}  # fmt: skip
        gw = await start_gateway(agent=agent, telnyx={"codec": "PCMA"})
        call = await gw.telnyx.call_control(gw.telnyx_api)
        assert call.encoding == "PCMA"
        model = await gw.model.next_connection()
        await model.function_call("call_1", "lookup_appointment", '{"last_name": "Smith"}')
        await call.wait_audio(len(clip) + 1)
        tools.release("lookup")
        await tool_output(model)
        clear = (await call.wait_for("clear"))[0]
        at = next(i for i, frame in enumerate(call.frames) if frame is clear)
        hold = b"".join(
            base64.b64decode(f["media"]["payload"]) for f in call.frames[:at] if f["event"] == "media"
        )
        assert hold == (clip * (len(hold) // len(clip) + 1))[: len(hold)]
