"""Self-tests of tests/fakes/telnyx.py: the fake must speak protocols.md §D before it can judge the gateway.

Signatures are verified with `cryptography` directly (not with the fake's own code), and the media side
runs against a small scripted WebSocket peer standing in for the gateway.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tests.fakes.telnyx import API_KEY, FakeTelnyx, FakeTelnyxApi, FakeTelnyxCall, TelnyxKeys

WAIT_S = 5.0
PUBLIC_URL = "https://gw.example.com"


def verify(keys: TelnyxKeys, timestamp: str, body: bytes, signature: str) -> None:
    """Verify as a gateway would, from the Mission Control public key string only (§D.5)."""
    public_key = Ed25519PublicKey.from_public_bytes(base64.b64decode(keys.public_key_b64))
    public_key.verify(base64.b64decode(signature), f"{timestamp}|".encode() + body)


@dataclass
class Seen:
    """One request the scripted gateway received."""

    method: str
    path_qs: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Peer:
    """Stands in for the gateway: records webhooks, accepts media sockets and lets the test script them."""

    requests: asyncio.Queue[Seen] = field(default_factory=asyncio.Queue)
    sockets: asyncio.Queue[web.WebSocketResponse] = field(default_factory=asyncio.Queue)
    received: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    texml: str = ""

    async def webhook(self, request: web.Request) -> web.Response:
        seen = Seen(request.method, request.path_qs, dict(request.headers), await request.read())
        await self.requests.put(seen)
        return web.Response(text=self.texml, content_type="application/xml")

    async def media(self, request: web.Request) -> web.WebSocketResponse:
        await self.requests.put(Seen("WS", request.path_qs, dict(request.headers), b""))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await self.sockets.put(ws)
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                await self.received.put(json.loads(message.data))
        return ws

    async def next_request(self) -> Seen:
        async with asyncio.timeout(WAIT_S):
            return await self.requests.get()

    async def next_frame(self) -> dict[str, Any]:
        async with asyncio.timeout(WAIT_S):
            return await self.received.get()

    async def next_socket(self) -> web.WebSocketResponse:
        async with asyncio.timeout(WAIT_S):
            return await self.sockets.get()


@dataclass
class Rig:
    peer: Peer
    telnyx: FakeTelnyx
    keys: TelnyxKeys


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    peer = Peer()
    app = web.Application()
    app.router.add_route("*", "/telnyx/voice", peer.webhook)
    app.router.add_post("/telnyx/events", peer.webhook)
    app.router.add_get("/telnyx/media/{token}", peer.media)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    keys = TelnyxKeys.generate()
    async with aiohttp.ClientSession() as http:
        telnyx = FakeTelnyx(http, f"http://127.0.0.1:{server.port}", PUBLIC_URL, keys)
        yield Rig(peer, telnyx, keys)
        for call in telnyx.calls:
            await call.aclose()
    await server.close()


async def open_call(rig: Rig, *, auto_play: bool = True) -> tuple[FakeTelnyxCall, web.WebSocketResponse]:
    """A started stream; the peer has consumed `connected` and `start`."""
    call = await rig.telnyx.open_stream(
        f"{PUBLIC_URL}/telnyx/media/tok?agent=a", call_control_id="v3:abc", auto_play=auto_play
    )
    ws = await rig.peer.next_socket()
    await rig.peer.next_frame()
    await rig.peer.next_frame()
    return call, ws


class TestTelnyxKeys:
    def test_signature_verifies_with_public_key(self) -> None:
        """sign() is Ed25519 over `ts|body`, verifiable from the 32-byte base64 public key alone."""
        keys = TelnyxKeys.generate()
        signature = keys.sign("1700000000", b'{"data":{}}')
        assert len(base64.b64decode(keys.public_key_b64)) == 32
        assert len(base64.b64decode(signature)) == 64
        verify(keys, "1700000000", b'{"data":{}}', signature)

    def test_signature_binds_timestamp_and_body(self) -> None:
        """Changing the timestamp or a body byte breaks the signature."""
        keys = TelnyxKeys.generate()
        signature = keys.sign("1700000000", b"body")
        with pytest.raises(InvalidSignature):
            verify(keys, "1700000001", b"body", signature)
        with pytest.raises(InvalidSignature):
            verify(keys, "1700000000", b"bodY", signature)


class TestParseTexmlStream:
    def test_parses_the_protocols_example(self) -> None:
        """Stream url, every attribute and the Parameter map come out of the §D.1 example."""
        texml = """<?xml version="1.0" encoding="UTF-8"?>
<Response><Connect>
  <Stream url="wss://gw.example.com/telnyx/media" track="inbound_track"
          bidirectionalMode="rtp" bidirectionalCodec="PCMU" bidirectionalSamplingRate="8000">
    <Parameter name="tenant" value="acme"/>
  </Stream>
</Connect></Response>"""
        url, attrs, params = FakeTelnyx.parse_texml_stream(texml)
        assert url == "wss://gw.example.com/telnyx/media"
        assert attrs["bidirectionalMode"] == "rtp"
        assert attrs["bidirectionalSamplingRate"] == "8000"
        assert params == {"tenant": "acme"}


class TestFakeTelnyx:
    async def test_texml_get_signs_empty_body(self, rig: Rig) -> None:
        """A GET instruction fetch carries the §D.1 params in the query; the signature covers `ts|`."""
        status, _ = await rig.telnyx.texml_webhook(call_sid="v3:xyz", timestamp=1700000000)
        seen = await rig.peer.next_request()
        assert status == 200
        assert seen.method == "GET" and seen.body == b""
        query = {k: v[0] for k, v in parse_qs(seen.path_qs.split("?", 1)[1]).items()}
        assert query["CallSid"] == "v3:xyz" and query["From"] == "+15551230000"
        assert query["ApiVersion"] == "2010-04-01" and query["CallStatus"] == "ringing"
        assert {"AccountSid", "CallSidLegacy", "To", "ConnectionId"} <= set(query)
        assert seen.headers["telnyx-timestamp"] == "1700000000"
        verify(rig.keys, "1700000000", b"", seen.headers["telnyx-signature-ed25519"])

    async def test_texml_post_signs_raw_form_body(self, rig: Rig) -> None:
        """A POST instruction fetch is form-encoded and signed over the exact bytes sent."""
        await rig.telnyx.texml_webhook(method="POST")
        seen = await rig.peer.next_request()
        assert seen.method == "POST" and b"CallSid=v3%3A" in seen.body
        verify(
            rig.keys, seen.headers["telnyx-timestamp"], seen.body, seen.headers["telnyx-signature-ed25519"]
        )

    async def test_call_initiated_envelope(self, rig: Rig) -> None:
        """call.initiated is the §D.2 envelope, signed over the raw JSON, delivered to /telnyx/events."""
        call_control_id, status, _ = await rig.telnyx.call_initiated(to="+15555550199")
        seen = await rig.peer.next_request()
        assert status == 200 and seen.path_qs == "/telnyx/events"
        verify(
            rig.keys, seen.headers["telnyx-timestamp"], seen.body, seen.headers["telnyx-signature-ed25519"]
        )
        event = json.loads(seen.body)
        assert event["meta"] == {"attempt": 1, "delivered_to": f"{PUBLIC_URL}/telnyx/events"}
        assert event["data"]["event_type"] == "call.initiated"
        payload = event["data"]["payload"]
        assert payload["call_control_id"] == call_control_id and call_control_id.startswith("v3:")
        assert payload["direction"] == "incoming" and payload["state"] == "parked"
        assert payload["to"] == "+15555550199"

    async def test_signature_override_and_omission(self, rig: Rig) -> None:
        """`signature="..."` is sent verbatim; `signature=""` sends no signature header at all."""
        await rig.telnyx.call_hangup("v3:abc", signature="bogus")
        assert (await rig.peer.next_request()).headers["telnyx-signature-ed25519"] == "bogus"
        await rig.telnyx.call_hangup("v3:abc", signature="")
        assert "telnyx-signature-ed25519" not in (await rig.peer.next_request()).headers

    async def test_call_texml(self, rig: Rig) -> None:
        """call_texml fetches TeXML, then streams on its <Stream> path with its `codec` and CallSid."""
        rig.peer.texml = (
            '<Response><Connect><Stream url="wss://gw.example.com/telnyx/media/t1" codec="PCMA"'
            ' bidirectionalMode="rtp"/></Connect></Response>'
        )
        call = await rig.telnyx.call_texml()
        fetch, upgrade = await rig.peer.next_request(), await rig.peer.next_request()
        assert upgrade.path_qs == "/telnyx/media/t1"
        assert await rig.peer.next_frame() == {"event": "connected", "version": "1.0.0"}
        start = (await rig.peer.next_frame())["start"]
        assert parse_qs(fetch.path_qs.split("?", 1)[1])["CallSid"] == [call.call_control_id]
        assert start["call_control_id"] == call.call_control_id
        assert start["media_format"]["encoding"] == "PCMA" == call.encoding

    async def test_call_control(self, rig: Rig) -> None:
        """call_control waits for the answer action, sends call.answered, then streams to stream_url."""
        async with FakeTelnyxApi() as api:
            task = asyncio.create_task(rig.telnyx.call_control(api), name="test:call_control")
            initiated = json.loads((await rig.peer.next_request()).body)["data"]["payload"]
            async with aiohttp.ClientSession() as http:  # what the gateway would do on call.initiated
                answer = {"stream_url": f"{PUBLIC_URL}/telnyx/media/t2", "client_state": "c3Q="}
                url = f"{api.url}/v2/calls/{initiated['call_control_id']}/actions/answer"
                headers = {"Authorization": f"Bearer {API_KEY}"}
                async with http.post(url, json=answer, headers=headers) as response:
                    assert response.status == 200
            answered = json.loads((await rig.peer.next_request()).body)["data"]
            async with asyncio.timeout(WAIT_S):
                call = await task
        assert answered["event_type"] == "call.answered"
        assert answered["payload"]["client_state"] == "c3Q="
        assert answered["payload"]["call_leg_id"] == initiated["call_leg_id"]
        assert (await rig.peer.next_request()).path_qs == "/telnyx/media/t2"
        await rig.peer.next_frame()
        start = (await rig.peer.next_frame())["start"]
        assert start["call_control_id"] == call.call_control_id == initiated["call_control_id"]
        assert start["client_state"] == "c3Q=" and start["from"] == initiated["from"]


class TestFakeTelnyxApi:
    async def test_records_action_for_colon_id(self) -> None:
        """An authorised action on a `v3:` id is recorded and answered `{"data":{"result":"ok"}}`."""
        async with FakeTelnyxApi() as api, aiohttp.ClientSession() as http:
            url = f"{api.url}/v2/calls/v3:abc-DEF_1/actions/answer"
            headers = {"Authorization": f"Bearer {API_KEY}"}
            async with http.post(url, json={"stream_url": "wss://x/y"}, headers=headers) as response:
                assert response.status == 200
                assert await response.json() == {"data": {"result": "ok"}}
            assert await api.wait_action("v3:abc-DEF_1", "answer") == {"stream_url": "wss://x/y"}
            assert api.answers() == [("v3:abc-DEF_1", {"stream_url": "wss://x/y"})]
            assert api.problems == []

    async def test_rejects_wrong_key(self) -> None:
        """A missing or wrong Bearer token gets 401, is not recorded, and is reported as a problem."""
        async with FakeTelnyxApi() as api, aiohttp.ClientSession() as http:
            url = f"{api.url}/v2/calls/v3:abc/actions/hangup"
            async with http.post(url, json={}, headers={"Authorization": "Bearer nope"}) as response:
                assert response.status == 401
            assert api.actions == [] and len(api.problems) == 1

    async def test_already_ended(self) -> None:
        """status_for 422 answers Telnyx's "call has already ended" error (code 90018)."""
        async with FakeTelnyxApi() as api, aiohttp.ClientSession() as http:
            api.status_for[("v3:abc", "hangup")] = 422
            url = f"{api.url}/v2/calls/v3:abc/actions/hangup"
            async with http.post(url, json={}, headers={"Authorization": f"Bearer {API_KEY}"}) as response:
                assert response.status == 422
                assert (await response.json())["errors"][0]["code"] == "90018"
            assert api.hangups() == ["v3:abc"]


class TestFakeTelnyxCall:
    async def test_start_frames(self, rig: Rig) -> None:
        """Unsigned upgrade on the stream URL's path+query, then `connected` and a §D.3 `start`."""
        call = await rig.telnyx.open_stream(
            f"{PUBLIC_URL}/telnyx/media/tok?agent=a", call_control_id="v3:abc", encoding="PCMA"
        )
        upgrade = await rig.peer.next_request()
        assert upgrade.path_qs == "/telnyx/media/tok?agent=a"
        assert not any(k.lower().startswith("telnyx-") or k == "Authorization" for k in upgrade.headers)
        assert await rig.peer.next_frame() == {"event": "connected", "version": "1.0.0"}
        start = await rig.peer.next_frame()
        assert set(start) == {"event", "sequence_number", "stream_id", "start"}
        assert start["stream_id"] == call.stream_id and start["sequence_number"] == "1"
        assert start["start"]["call_control_id"] == "v3:abc"
        assert {"call_session_id", "from", "to"} <= set(start["start"])
        assert start["start"]["media_format"] == {"encoding": "PCMA", "sample_rate": 8000, "channels": 1}

    async def test_media_and_dtmf_frames(self, rig: Rig) -> None:
        """Caller audio is chunked with string chunk/timestamp and track "inbound"; DTMF has occurred_at."""
        call, _ = await open_call(rig)
        await call.send_audio(bytes(320))
        await call.dtmf("5")
        first, second, dtmf = [await rig.peer.next_frame() for _ in range(3)]
        assert first["media"]["track"] == "inbound"
        assert (first["media"]["chunk"], first["media"]["timestamp"]) == ("1", "0")
        assert (second["media"]["chunk"], second["media"]["timestamp"]) == ("2", "20")
        assert second["sequence_number"] == "3" and second["stream_id"] == call.stream_id
        assert dtmf["dtmf"] == {"digit": "5"} and dtmf["occurred_at"].endswith("Z")

    async def test_valid_outbound_frames_have_no_problems(self, rig: Rig) -> None:
        """§D.4 media, mark and clear are accepted; audio is collected and the mark echoed."""
        call, ws = await open_call(rig)
        await ws.send_json({"event": "media", "media": {"payload": base64.b64encode(b"\xff" * 160).decode()}})
        await ws.send_json({"event": "mark", "mark": {"name": "m1"}})
        await ws.send_json({"event": "clear"})
        await call.wait_for("clear")
        echo = await rig.peer.next_frame()
        assert echo["event"] == "mark" and echo["mark"] == {"name": "m1"} and "stream_id" in echo
        assert call.audio_out == b"\xff" * 160 and call.played_bytes == 160
        assert call.problems == []

    async def test_stray_stream_id_is_flagged(self, rig: Rig) -> None:
        """A Twilio-style outbound frame carrying stream_id is reported in `problems`."""
        call, ws = await open_call(rig)
        await ws.send_json({"event": "clear", "stream_id": call.stream_id})
        await call.wait_for("clear")
        assert any("stream_id" in p for p in call.problems), call.problems

    async def test_clear_echoes_pending_marks(self, rig: Rig) -> None:
        """With playback held, marks wait; `clear` drops the audio and echoes every pending mark."""
        call, ws = await open_call(rig, auto_play=False)
        await ws.send_json({"event": "media", "media": {"payload": base64.b64encode(bytes(160)).decode()}})
        await ws.send_json({"event": "mark", "mark": {"name": "a"}})
        await ws.send_json({"event": "mark", "mark": {"name": "b"}})
        await call.wait_for("mark", 2)
        assert call.played_bytes == 0 and rig.peer.received.empty()
        await ws.send_json({"event": "clear"})
        assert [(await rig.peer.next_frame())["mark"]["name"] for _ in range(2)] == ["a", "b"]
        assert call.played_bytes == 0

    async def test_mark_with_nothing_playing_is_echoed_at_once(self, rig: Rig) -> None:
        """Even with playback held, a mark with no unplayed audio ahead of it is echoed immediately."""
        call, ws = await open_call(rig, auto_play=False)
        await ws.send_json({"event": "mark", "mark": {"name": "idle"}})
        assert (await rig.peer.next_frame())["mark"] == {"name": "idle"}
        assert call.problems == []

    async def test_close_code(self, rig: Rig) -> None:
        """wait_closed returns the code the gateway closed the socket with."""
        call, ws = await open_call(rig)
        await ws.close(code=4000, message=b"bye")
        assert await call.wait_closed() == 4000
        assert call.close_reason == "bye"
