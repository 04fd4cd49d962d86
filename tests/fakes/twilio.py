"""Fake Twilio: a caller (voice webhook + Media Streams client) and the REST API, on loopback sockets.

Signatures are computed with the real `twilio` package's RequestValidator, the way Twilio signs.
Frames follow protocols.md §C.4 (inbound) and are checked against §C.5 (outbound).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from twilio.request_validator import RequestValidator

WAIT_S = 5.0
ACCOUNT_SID = "AC" + "0" * 32
AUTH_TOKEN = "twilio-test-token"
_sids = itertools.count(1)


class FakeTwilioCall:
    """One call as Twilio's media side sees it: sends caller frames, records what the gateway sends.

    Marks are echoed as Twilio does once the audio queued before them has played. By default playback
    is instant (every mark echoed on arrival); with `auto_play=False` the test decides how many bytes
    have played with `play()`.
    """

    def __init__(
        self, ws: aiohttp.ClientWebSocketResponse, call_sid: str, stream_sid: str, *, auto_play: bool = True
    ) -> None:
        self.ws = ws
        self.call_sid = call_sid
        self.stream_sid = stream_sid
        self.auto_play = auto_play
        self.frames: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.audio_out = bytearray()  # every µ-law byte the gateway sent, in order
        self._queue: list[tuple[str, int]] = []  # (mark name, audio_out length when it was sent)
        self._played = 0
        self._echoed_at = 0
        self._seq = itertools.count(2)
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read(), name=f"fake-twilio:{call_sid}")
        self.close_code: int | None = None
        self.close_reason = ""

    def _check(self, frame: dict[str, Any]) -> None:
        event = frame.get("event")
        expected = {
            "media": {"event", "streamSid", "media"},
            "mark": {"event", "streamSid", "mark"},
            "clear": {"event", "streamSid"},
        }.get(str(event))
        if expected is None:
            self.problems.append(f"unknown outbound event {event!r}")
        elif set(frame) != expected:
            self.problems.append(f"{event} frame keys {sorted(frame)} != {sorted(expected)}")
        elif frame["streamSid"] != self.stream_sid:
            self.problems.append(f"{event} frame for another stream")

    async def _read(self) -> None:
        while True:
            message = await self.ws.receive()
            if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                self.close_reason = str(message.extra or "")
                break
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(message.data)
            self._check(frame)
            event = frame.get("event")
            if event == "media":
                self.audio_out += base64.b64decode(frame["media"]["payload"])
            elif event == "mark":
                self._queue.append((frame["mark"]["name"], len(self.audio_out)))
            elif event == "clear":
                # Twilio drops queued audio; pending marks are echoed (Reported, §C.5).
                pending, self._queue = self._queue, []
                self._played = len(self.audio_out)
                for name, _ in pending:
                    await self._echo(name)
            async with self._changed:
                self.frames.append(frame)
                self._changed.notify_all()
            if self.auto_play:
                await self.play(len(self.audio_out))
        self.close_code = self.ws.close_code

    async def _echo(self, name: str) -> None:
        if not self.ws.closed:
            await self.send({"event": "mark", "mark": {"name": name}})

    @property
    def played_bytes(self) -> int:
        """Audio bytes up to the last mark echoed back to the gateway."""
        return self._echoed_at

    async def play(self, upto_bytes: int) -> None:
        """Playback reached `upto_bytes` of everything sent: echo the marks queued up to there."""
        self._played = max(self._played, upto_bytes)
        while self._queue and self._queue[0][1] <= self._played:
            name, self._echoed_at = self._queue.pop(0)
            await self._echo(name)

    # -- sending caller frames ------------------------------------------------------------------

    async def send(self, frame: dict[str, Any]) -> None:
        if frame.get("event") != "connected":
            frame = {
                "event": frame["event"],
                "sequenceNumber": str(next(self._seq)),
                "streamSid": self.stream_sid,
                **{k: v for k, v in frame.items() if k != "event"},
            }
        await self.ws.send_str(json.dumps(frame))

    async def send_audio(self, ulaw: bytes, frame_bytes: int = 160) -> None:
        """Caller audio in 20 ms media frames, as Twilio sends it."""
        for offset in range(0, len(ulaw), frame_bytes):
            chunk = ulaw[offset : offset + frame_bytes]
            await self.send(
                {
                    "event": "media",
                    "media": {
                        "track": "inbound",
                        "chunk": str(offset // frame_bytes + 1),
                        "timestamp": str(offset // 8),
                        "payload": base64.b64encode(chunk).decode(),
                    },
                }
            )

    async def stop(self) -> None:
        await self.send({"event": "stop", "stop": {"accountSid": ACCOUNT_SID, "callSid": self.call_sid}})

    async def dtmf(self, digit: str) -> None:
        """A key press (§C.4 `dtmf` frame)."""
        await self.send({"event": "dtmf", "dtmf": {"track": "inbound_track", "digit": digit}})

    # -- waiting on what the gateway sent -------------------------------------------------------

    def of_type(self, event: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f.get("event") == event]

    async def wait_for(self, event: str, count: int = 1) -> list[dict[str, Any]]:
        async with asyncio.timeout(WAIT_S), self._changed:
            await self._changed.wait_for(lambda: len(self.of_type(event)) >= count)
        return self.of_type(event)

    async def wait_audio(self, nbytes: int) -> None:
        async with asyncio.timeout(WAIT_S), self._changed:
            await self._changed.wait_for(lambda: len(self.audio_out) >= nbytes)

    async def wait_closed(self) -> int | None:
        async with asyncio.timeout(WAIT_S):
            await asyncio.shield(self._reader)
        return self.close_code

    async def aclose(self) -> None:
        await self.ws.close()
        await asyncio.gather(self._reader, return_exceptions=True)


class FakeTwilio:
    """Twilio's side of calls into one gateway: signs and posts webhooks, opens media streams."""

    def __init__(
        self, http: aiohttp.ClientSession, gateway_url: str, public_url: str, auth_token: str = AUTH_TOKEN
    ) -> None:
        self.http = http
        self.gateway_url = gateway_url.rstrip("/")
        self.public_url = public_url.rstrip("/")
        self.validator = RequestValidator(auth_token)
        self.calls: list[FakeTwilioCall] = []

    async def webhook(
        self,
        *,
        to: str = "+15555550100",
        from_: str = "+15551230000",
        call_sid: str | None = None,
        method: str = "POST",
        signature: str | None = None,
        direction: str = "inbound",
        query: str = "",
    ) -> tuple[int, str]:
        """Post the voice webhook as Twilio does; returns (status, body).

        `direction="outbound-api"` is the fetch for a call placed through the REST API; `query` is the
        query string of the webhook URL (signed with it, as Twilio signs the URL it requests, §C.3).
        """
        params = {
            "CallSid": call_sid or f"CA{next(_sids):032x}",
            "AccountSid": ACCOUNT_SID,
            "From": from_,
            "To": to,
            "CallStatus": "ringing" if direction == "inbound" else "in-progress",
            "ApiVersion": "2010-04-01",
            "Direction": direction,
        }
        path = "/twilio/voice" + (f"?{query}" if query else "")
        if method == "POST":
            signed = self.validator.compute_signature(self.public_url + path, params)
            async with self.http.post(
                self.gateway_url + path,
                data=params,
                headers={"X-Twilio-Signature": signature or signed},
            ) as response:
                return response.status, await response.text()
        query = (f"{query}&" if query else "") + "&".join(f"{k}={v}" for k, v in params.items()).replace(
            "+", "%2B"
        )
        signed = self.validator.compute_signature(f"{self.public_url}/twilio/voice?{query}", {})
        async with self.http.get(
            f"{self.gateway_url}/twilio/voice?{query}", headers={"X-Twilio-Signature": signature or signed}
        ) as response:
            return response.status, await response.text()

    @staticmethod
    def parse_stream(twiml: str) -> tuple[str, dict[str, str]]:
        """The <Stream url> and its <Parameter>s from a TwiML answer."""
        root = ET.fromstring(twiml)  # noqa: S314 - the gateway under test wrote it
        stream = root.find("./Connect/Stream")
        assert stream is not None, twiml
        params = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
        return stream.attrib["url"], params

    async def open_stream(
        self,
        stream_url: str,
        params: dict[str, str],
        *,
        call_sid: str | None = None,
        signature: str | None = None,
        auto_play: bool = True,
        send_start: bool = True,
        autoping: bool = True,
    ) -> FakeTwilioCall:
        """Open the media socket as Twilio does (signed upgrade), then send `connected` and `start`.

        `autoping=False` leaves the gateway's WebSocket pings unanswered (a dead peer)."""
        path = urlsplit(stream_url).path
        signed = self.validator.compute_signature(stream_url, {})
        ws = await self.http.ws_connect(
            self.gateway_url.replace("http", "ws", 1) + path,
            headers={"X-Twilio-Signature": signature or signed},
            autoping=autoping,
        )
        call_sid = call_sid or f"CA{next(_sids):032x}"
        call = FakeTwilioCall(ws, call_sid, f"MZ{next(_sids):032x}", auto_play=auto_play)
        self.calls.append(call)
        if send_start:
            await call.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
            await call.send(
                {
                    "event": "start",
                    "start": {
                        "accountSid": ACCOUNT_SID,
                        "streamSid": call.stream_sid,
                        "callSid": call_sid,
                        "tracks": ["inbound"],
                        "customParameters": params,
                        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    },
                }
            )
        return call

    async def call(self, *, to: str = "+15555550100", auto_play: bool = True) -> FakeTwilioCall:
        """Webhook, then media stream, as one inbound call."""
        call_sid = f"CA{next(_sids):032x}"
        status, body = await self.webhook(to=to, call_sid=call_sid)
        assert status == 200, body
        url, params = self.parse_stream(body)
        return await self.open_stream(url, params, call_sid=call_sid, auto_play=auto_play)


class FakeTwilioApi:
    """Twilio's REST API: records call updates (hang-ups) and created calls, and checks basic auth."""

    def __init__(self, account_sid: str = ACCOUNT_SID, auth_token: str = AUTH_TOKEN) -> None:
        self.auth = "Basic " + base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        self.account_sid = account_sid
        self.updates: list[tuple[str, dict[str, str]]] = []
        self.problems: list[str] = []
        self.status_for: dict[str, int] = {}  # call sid -> HTTP status to answer with
        self.created: list[dict[str, str]] = []  # the form of each `POST …/Calls.json`, in order
        self.created_sids: list[str] = []
        self.create_status = 201  # anything else: a Twilio error body (code 21215) with that status
        self._hold: asyncio.Event | None = None
        self._changed = asyncio.Condition()
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{account}/Calls/{call}.json", self._update)
        app.router.add_post("/2010-04-01/Accounts/{account}/Calls.json", self._create)
        self._server = TestServer(app, host="127.0.0.1")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}"

    async def __aenter__(self) -> FakeTwilioApi:
        await self._server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._server.close()

    async def _update(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != self.auth:
            self.problems.append("call update without the account's basic auth")
            return web.json_response({"code": 20003, "message": "Authenticate"}, status=401)
        if request.match_info["account"] != self.account_sid:
            self.problems.append("call update for another account")
        call_sid = request.match_info["call"]
        form = {k: str(v) for k, v in (await request.post()).items()}
        async with self._changed:
            self.updates.append((call_sid, form))
            self._changed.notify_all()
        if self._hold is not None:
            await self._hold.wait()
        status = self.status_for.get(call_sid, 200)
        if status == 404:
            return web.json_response({"code": 20404, "message": "not found", "status": 404}, status=404)
        return web.json_response(
            {"sid": call_sid, "status": form.get("Status", "in-progress")}, status=status
        )

    async def _create(self, request: web.Request) -> web.Response:
        """Create a call (the Calls list resource): 201 with the new call's `sid`, status `queued`."""
        if request.headers.get("Authorization") != self.auth:
            self.problems.append("call create without the account's basic auth")
            return web.json_response({"code": 20003, "message": "Authenticate"}, status=401)
        if request.match_info["account"] != self.account_sid:
            self.problems.append("call create for another account")
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.created.append(form)
        if self.create_status != 201:
            message = "Permission to call this number has not been enabled"
            body = {"code": 21215, "message": message, "status": self.create_status}
            return web.json_response(body, status=self.create_status)
        sid = f"CA{next(_sids):032x}"
        self.created_sids.append(sid)
        return web.json_response(
            {"sid": sid, "account_sid": self.account_sid, "status": "queued", "direction": "outbound-api"},
            status=201,
        )

    def hold_updates(self) -> asyncio.Event:
        """Record call updates at once but answer them only once the returned event is set (a slow
        API: the request is in flight)."""
        self._hold = asyncio.Event()
        return self._hold

    def hangups(self) -> list[str]:
        """Calls ended by an update: `Status=completed`, or TwiML that ends in <Hangup/> (§C.6)."""
        return [sid for sid, form in self.updates if _ends_call(form)]

    def said(self, call_sid: str) -> list[str]:
        """What updates of `call_sid` had Twilio <Say> to the caller, in order."""
        return [
            say.text or ""
            for form in self.updates_of(call_sid)
            if "Twiml" in form
            for say in ET.fromstring(form["Twiml"]).iter("Say")  # noqa: S314 - the gateway wrote it
        ]

    def updates_of(self, call_sid: str) -> list[dict[str, str]]:
        """The forms of every update of `call_sid` (hang-ups, TwiML transfers), in order."""
        return [form for sid, form in self.updates if sid == call_sid]

    async def wait_update(self, call_sid: str, count: int = 1) -> list[dict[str, str]]:
        """Wait until `count` updates of `call_sid` arrived; returns all of them."""
        async with asyncio.timeout(WAIT_S), self._changed:
            await self._changed.wait_for(lambda: len(self.updates_of(call_sid)) >= count)
        return self.updates_of(call_sid)

    async def wait_hangup(self, call_sid: str) -> None:
        async with asyncio.timeout(WAIT_S), self._changed:
            await self._changed.wait_for(lambda: call_sid in self.hangups())


def _ends_call(form: dict[str, str]) -> bool:
    if form.get("Status") == "completed":
        return True
    twiml = form.get("Twiml")
    if twiml is None:
        return False
    verbs = list(ET.fromstring(twiml))  # noqa: S314 - raises on TwiML Twilio could not parse
    return bool(verbs) and verbs[-1].tag == "Hangup"
