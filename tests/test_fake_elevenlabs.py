"""The fake ElevenLabs server itself, driven by plain aiohttp clients: signed-URL auth, upgrade
refusals, the initiation handshake, client-message validation and the scripted agent events
(protocols.md §E)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.fakes.elevenlabs import WAIT_S, FakeElevenLabsConnection, FakeElevenLabsServer

CLIENT_DATA: dict[str, Any] = {"type": "conversation_initiation_client_data"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def signed_url(server: FakeElevenLabsServer, http: aiohttp.ClientSession) -> str:
    async with http.get(
        server.api_url + "/v1/convai/conversation/get-signed-url",
        params={"agent_id": server.agent_id},
        headers={"xi-api-key": str(server.api_key)},
    ) as response:
        assert response.status == 200, await response.text()
        body = await response.json()
    assert set(body) == {"signed_url"}
    return str(body["signed_url"])


async def receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    message: dict[str, Any] = await ws.receive_json(timeout=WAIT_S)
    return message


@contextlib.asynccontextmanager
async def conversation(
    server: FakeElevenLabsServer,
    http: aiohttp.ClientSession,
    *,
    client_data: dict[str, Any] = CLIENT_DATA,
    initiate: bool = True,
) -> AsyncIterator[tuple[aiohttp.ClientWebSocketResponse, FakeElevenLabsConnection]]:
    """A connected socket (signed: the agent is private), initiated with `client_data` and past the
    metadata unless `initiate=False`."""
    async with http.ws_connect(await signed_url(server, http)) as ws:
        conn = await server.next_connection()
        if initiate:
            await ws.send_json(client_data)
            metadata = await receive(ws)
            assert metadata["type"] == "conversation_initiation_metadata"
        yield ws, conn


class TestSignedUrl:
    async def test_key_gets_a_signed_ws_url_with_a_fresh_signature(self, http: aiohttp.ClientSession) -> None:
        """With the right xi-api-key each request gets the socket URL plus a new, recorded signature."""
        async with FakeElevenLabsServer() as server:
            first = await signed_url(server, http)
            second = await signed_url(server, http)
            ws_url = server.ws_url  # the port is gone once the server closed
        assert first.startswith(f"{ws_url}?agent_id=agent_test&conversation_signature=")
        assert first != second
        assert [first.rsplit("=", 1)[1], second.rsplit("=", 1)[1]] == server.issued_signatures
        assert server.signed_url_requests == 2
        assert server.problems == []

    @pytest.mark.parametrize("headers", [{}, {"xi-api-key": "wrong"}])
    async def test_missing_or_wrong_key_is_401_and_a_problem(
        self, http: aiohttp.ClientSession, headers: dict[str, str]
    ) -> None:
        """Without the configured key the endpoint answers 401 JSON, issues nothing and records a problem."""
        async with (
            FakeElevenLabsServer() as server,
            http.get(
                server.api_url + "/v1/convai/conversation/get-signed-url",
                params={"agent_id": "agent_test"},
                headers=headers,
            ) as response,
        ):
            assert response.status == 401
            assert "detail" in await response.json()
        assert server.issued_signatures == []
        assert server.signed_url_requests == 1
        assert len(server.problems) == 1

    async def test_unknown_agent_is_404(self, http: aiohttp.ClientSession) -> None:
        """An agent id the server does not know is a 404, not a protocol problem of the client."""
        async with (
            FakeElevenLabsServer() as server,
            http.get(
                server.api_url + "/v1/convai/conversation/get-signed-url",
                params={"agent_id": "agent_other"},
                headers={"xi-api-key": "xi-test"},
            ) as response,
        ):
            assert response.status == 404
        assert server.issued_signatures == []
        assert server.problems == []


class TestUpgrade:
    async def test_signed_url_opens_a_signed_connection(self, http: aiohttp.ClientSession) -> None:
        """The signed URL, opened unchanged, is accepted once and marks the connection as not public."""
        async with FakeElevenLabsServer() as server:
            url = await signed_url(server, http)
            async with http.ws_connect(url):
                conn = await server.next_connection()
        assert not conn.public
        assert conn.signature == server.issued_signatures[0]
        assert conn.conversation_id == "conv_1"
        assert server.refused == []

    async def test_signature_is_single_use(self, http: aiohttp.ClientSession) -> None:
        """A second upgrade with the same signature is refused with 403 and recorded in `refused`."""
        async with FakeElevenLabsServer() as server:
            url = await signed_url(server, http)
            async with http.ws_connect(url):
                await server.next_connection()
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(url)
        assert refused.value.status == 403
        assert server.refused == ["conversation_signature already used"]
        assert server.problems == []
        assert len(server.all_connections) == 1

    @pytest.mark.parametrize(
        ("query", "reason"),
        [
            ("agent_id=agent_test", "private agent: no conversation_signature"),
            ("agent_id=agent_test&conversation_signature=forged", "conversation_signature was never issued"),
            ("agent_id=agent_other", "agent_id 'agent_other' is not 'agent_test'"),
        ],
    )
    async def test_private_agent_refuses_unsigned_and_foreign_upgrades(
        self, http: aiohttp.ClientSession, query: str, reason: str
    ) -> None:
        """Without an issued signature, or for another agent, the upgrade is a 403 with its reason."""
        async with FakeElevenLabsServer() as server:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(f"{server.ws_url}?{query}")
        assert refused.value.status == 403
        assert server.refused == [reason]
        assert server.problems == []

    async def test_public_agent_accepts_without_signature(self, http: aiohttp.ClientSession) -> None:
        """With no API key the agent is public: `?agent_id=` alone opens a connection marked public."""
        async with (
            FakeElevenLabsServer(api_key=None) as server,
            http.ws_connect(f"{server.ws_url}?agent_id=agent_test&source=gateway"),
        ):
            conn = await server.next_connection()
        assert conn.public
        assert conn.signature is None
        assert conn.query["source"] == "gateway"
        assert server.refused == []

    async def test_refuse_with_answers_the_upgrade_with_that_status(
        self, http: aiohttp.ClientSession
    ) -> None:
        """`refuse_with` turns every upgrade away with the given status, whatever the credentials."""
        async with FakeElevenLabsServer(refuse_with=503) as server:
            url = await signed_url(server, http)
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(url)
        assert refused.value.status == 503
        assert server.refused == ["refuse_with 503"]
        assert server.used_signatures == set()


class TestInitiation:
    async def test_metadata_follows_client_data_with_the_configured_formats(
        self, http: aiohttp.ClientSession
    ) -> None:
        """Client data is answered with exactly the §E.3 metadata, input and output formats not swapped."""
        client_data = {
            "type": "conversation_initiation_client_data",
            "conversation_config_override": {
                "agent": {"prompt": {"prompt": "Be brief."}, "first_message": "Hi.", "language": "en"},
                "tts": {"voice_id": "21m00Tcm4TlvDq8ikWAM"},
            },
            "custom_llm_extra_body": {"temperature": 0.7},
            "dynamic_variables": {"tenant": "acme", "calls": 3, "score": 0.5, "vip": True},
            "user_id": "caller-1",
            "source_info": {"source": "gateway", "version": "0.1.0"},
        }
        async with (
            FakeElevenLabsServer(input_format="pcm_16000", output_format="ulaw_8000") as server,
            http.ws_connect(await signed_url(server, http)) as ws,
        ):
            conn = await server.next_connection()
            await ws.send_json(client_data)
            metadata = await receive(ws)
        assert metadata == {
            "type": "conversation_initiation_metadata",
            "conversation_initiation_metadata_event": {
                "conversation_id": "conv_1",
                "agent_output_audio_format": "ulaw_8000",
                "user_input_audio_format": "pcm_16000",
            },
        }
        assert conn.client_data == client_data
        assert server.problems == []

    async def test_first_message_must_be_client_data(self, http: aiohttp.ClientSession) -> None:
        """Audio before conversation_initiation_client_data is a problem and gets no metadata; the late
        client data still does."""
        async with FakeElevenLabsServer() as server, conversation(server, http, initiate=False) as (ws, conn):
            await ws.send_json({"user_audio_chunk": base64.b64encode(b"\xff" * 160).decode()})
            await conn.wait_for("user_audio_chunk")
            assert conn.client_data is None
            await ws.send_json(CLIENT_DATA)
            assert (await receive(ws))["type"] == "conversation_initiation_metadata"
        assert server.problems == [
            "conv_1: first message is 'user_audio_chunk', not conversation_initiation_client_data"
        ]

    @pytest.mark.parametrize(
        ("client_data", "problem"),
        [
            ({"agent_id": "x"}, "unexpected key 'agent_id'"),
            ({"conversation_config_override": {"tts": {"model_id": "m"}}}, "override.tts.model_id"),
            (
                {"conversation_config_override": {"agent": {"prompt": {"llm": "x"}}}},
                "override.agent.prompt.llm",
            ),
            ({"conversation_config_override": {"asr": {"keywords": []}}}, "override.asr"),
            ({"conversation_config_override": {"agent": {"language": 1}}}, "override.agent.language is int"),
            ({"dynamic_variables": {"caller": None}}, "dynamic variable 'caller' is NoneType"),
            ({"dynamic_variables": {"caller": ["+1"]}}, "dynamic variable 'caller' is list"),
        ],
    )
    async def test_client_data_outside_the_allowed_set_is_a_problem(
        self, http: aiohttp.ClientSession, client_data: dict[str, Any], problem: str
    ) -> None:
        """Keys, overrides or dynamic-variable values the gateway may not send are each one problem."""
        async with (
            FakeElevenLabsServer() as server,
            conversation(server, http, client_data={**CLIENT_DATA, **client_data}),
        ):
            pass
        assert len(server.problems) == 1, server.problems
        assert problem in server.problems[0]

    async def test_second_client_data_is_a_problem(self, http: aiohttp.ClientSession) -> None:
        """Initiation happens once; a repeat is flagged and not answered with new metadata."""
        async with FakeElevenLabsServer() as server, conversation(server, http) as (ws, conn):
            await ws.send_json(CLIENT_DATA)
            await conn.wait_for("conversation_initiation_client_data", count=2)
        assert server.problems == ["conv_1: conversation_initiation_client_data sent twice"]


class TestPingPong:
    async def test_matching_pong_clears_the_outstanding_ping(self, http: aiohttp.ClientSession) -> None:
        """A ping has the §E.3 shape; the pong with its event_id is found by wait_pong and clears it."""
        async with FakeElevenLabsServer() as server, conversation(server, http) as (ws, conn):
            await conn.ping(12345, ping_ms=20)
            assert await receive(ws) == {"type": "ping", "ping_event": {"event_id": 12345, "ping_ms": 20}}
            assert conn.outstanding_pings == {12345}
            await ws.send_json({"type": "pong", "event_id": 12345})
            assert await conn.wait_pong(12345) == {"type": "pong", "event_id": 12345}
            assert conn.outstanding_pings == set()
        assert server.problems == []

    @pytest.mark.parametrize(
        ("pongs", "problem"),
        [
            ([{"type": "pong", "event_id": 9}], "no outstanding ping"),
            ([{"type": "pong", "event_id": 1}, {"type": "pong", "event_id": 1}], "no outstanding ping"),
            ([{"type": "pong", "event_id": "1"}], "is not an integer"),
            ([{"type": "pong", "ping_event": {"event_id": 1}}], "pong keys"),
        ],
    )
    async def test_unmatched_or_malformed_pong_is_a_problem(
        self, http: aiohttp.ClientSession, pongs: list[dict[str, Any]], problem: str
    ) -> None:
        """Pongs for unknown or already-answered pings, non-integer ids and wrong shapes are problems."""
        async with FakeElevenLabsServer() as server, conversation(server, http) as (ws, conn):
            await conn.ping(1)
            for pong in pongs:
                await ws.send_json(pong)
            await conn.wait_for("pong", count=len(pongs))
        assert len(server.problems) == 1, server.problems
        assert problem in server.problems[0]


class TestUserAudio:
    async def test_chunks_accumulate_in_order(self, http: aiohttp.ClientSession) -> None:
        """Untyped user_audio_chunk messages are recorded under that kind and their bytes appended."""
        chunks = [bytes([n]) * 160 for n in range(3)]
        async with FakeElevenLabsServer() as server, conversation(server, http) as (ws, conn):
            for chunk in chunks:
                await ws.send_json({"user_audio_chunk": base64.b64encode(chunk).decode()})
            await conn.wait_audio(480)
            assert len(conn.of_type("user_audio_chunk")) == 3
        assert bytes(conn.audio_in) == b"".join(chunks)
        assert server.problems == []

    @pytest.mark.parametrize(
        ("message", "problem"),
        [
            ({"user_audio_chunk": "not base64!"}, "not a base64 string"),
            ({"user_audio_chunk": [1, 2]}, "not a base64 string"),
            ({"user_audio_chunk": "AAAé"}, "not a base64 string"),
            ({"user_audio_chunk": "AAAA", "type": "user_audio_chunk"}, "user_audio_chunk message keys"),
            ({"user_audio_chunk": "AAAA", "seq": 1}, "user_audio_chunk message keys"),
        ],
    )
    async def test_malformed_chunk_is_a_problem(
        self, http: aiohttp.ClientSession, message: dict[str, Any], problem: str
    ) -> None:
        """A chunk must be bare `{"user_audio_chunk": <base64 str>}`; anything else is one problem."""
        async with FakeElevenLabsServer() as server, conversation(server, http) as (ws, conn):
            await ws.send_json(message)
            await ws.send_json({"type": "user_activity"})
            await conn.wait_for("user_activity")
        assert len(server.problems) == 1, server.problems
        assert problem in server.problems[0]


class TestClientMessages:
    async def test_documented_messages_pass(self, http: aiohttp.ClientSession) -> None:
        """The other §E.2 client messages in their documented shapes raise no problem."""
        messages: list[dict[str, Any]] = [
            {"type": "client_tool_result", "tool_call_id": "t1", "result": "ok", "is_error": False},
            {"type": "contextual_update", "text": "caller is on hold"},
            {"type": "user_message", "text": "hello"},
            {"type": "user_activity"},
        ]
        async with FakeElevenLabsServer() as server, conversation(server, http) as (ws, conn):
            for message in messages:
                await ws.send_json(message)
            await conn.wait_for("user_activity")
        assert conn.received == [CLIENT_DATA, *messages]
        assert server.problems == []

    @pytest.mark.parametrize(
        "frame",
        [
            json.dumps({"type": "feedback"}),
            json.dumps({"text": "?"}),
            json.dumps({"type": "user_message", "text": 1}),
            json.dumps({"type": "client_tool_result", "tool_call_id": "t1"}),
            "not json",
            "[1]",
        ],
    )
    async def test_unknown_or_unparseable_messages_are_problems(
        self, http: aiohttp.ClientSession, frame: str
    ) -> None:
        """Unknown types (feedback has no §E.2 shape), untyped non-audio and non-object frames are flagged."""
        async with FakeElevenLabsServer() as server, conversation(server, http) as (ws, conn):
            await ws.send_str(frame)
            await ws.send_json({"type": "user_activity"})
            await conn.wait_for("user_activity")
        assert len(server.problems) == 1, server.problems


class TestAgentEvents:
    async def test_scripted_events_have_the_documented_shapes(self, http: aiohttp.ClientSession) -> None:
        """Every scripting method sends exactly its §E.3 message."""
        async with FakeElevenLabsServer() as server, conversation(server, http) as (ws, conn):
            await conn.audio(b"\x01\x02\x03", event_id=7)
            await conn.interruption(7)
            await conn.agent_response("Hello.")
            await conn.user_transcript("Hi there.")
            await conn.client_error("bad override")
            await conn.send({"type": "vad_score", "vad_score_event": {"vad_score": 0.95}})
            received = [await receive(ws) for _ in range(6)]
        assert received == [
            {"type": "audio", "audio_event": {"audio_base_64": "AQID", "event_id": 7}},
            {"type": "interruption", "interruption_event": {"event_id": 7}},
            {"type": "agent_response", "agent_response_event": {"agent_response": "Hello."}},
            {"type": "user_transcript", "user_transcription_event": {"user_transcript": "Hi there."}},
            {"type": "client_error", "client_error": {"message": "bad override"}},
            {"type": "vad_score", "vad_score_event": {"vad_score": 0.95}},
        ]
        assert server.problems == []

    async def test_close_reaches_the_client_and_sets_closed(self, http: aiohttp.ClientSession) -> None:
        """close(code) ends the socket with that code on the client side and sets `closed`."""
        async with FakeElevenLabsServer() as server, conversation(server, http) as (ws, conn):
            await conn.close(code=4001)
            message = await ws.receive(timeout=WAIT_S)
            async with asyncio.timeout(WAIT_S):
                await conn.closed.wait()
        assert message.type == aiohttp.WSMsgType.CLOSE
        assert message.data == 4001
        assert conn.close_code == 4001

    async def test_client_close_sets_closed(self, http: aiohttp.ClientSession) -> None:
        """When the gateway closes its socket the connection records the code and sets `closed`."""
        async with FakeElevenLabsServer() as server:
            async with conversation(server, http) as (ws, conn):
                await ws.close(code=1000)
            async with asyncio.timeout(WAIT_S):
                await conn.closed.wait()
        assert conn.close_code == 1000
        assert server.problems == []
