"""Fake Telnyx: a caller (TeXML / Call Control webhooks + media WebSocket client) and the v2 API, on loopback.

Webhooks are signed with a real Ed25519 key the way Telnyx signs (protocols.md §D.5). Frames follow
§D.3 (inbound) and are checked against §D.4 (outbound: no `stream_id`, nothing but the documented keys).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import json
import secrets
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

WAIT_S = 5.0
API_KEY = "KEY-telnyx-test"
ACCOUNT_SID = "a5e3b8f0-0000-4000-8000-000000000001"
CONNECTION_ID = "1684641123236054244"
USER_ID = "7d1e8b6c-0000-4000-8000-000000000002"


def new_call_control_id() -> str:
    """A fresh id shaped like Telnyx's (`v3:` + url-safe base64); TeXML uses it as the CallSid too."""
    return "v3:" + secrets.token_urlsafe(36)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class TelnyxKeys:
    """The account's webhook signing key pair; `public_key_b64` is what Mission Control shows."""

    private_key: Ed25519PrivateKey
    public_key_b64: str

    @classmethod
    def generate(cls) -> TelnyxKeys:
        private_key = Ed25519PrivateKey.generate()
        raw = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return cls(private_key, base64.b64encode(raw).decode())

    def sign(self, timestamp: str, body: bytes) -> str:
        """Base64 Ed25519 signature over `{timestamp}|{raw body}` (§D.5)."""
        return base64.b64encode(self.private_key.sign(timestamp.encode() + b"|" + body)).decode()


class FakeTelnyxCall:
    """One call as Telnyx's media side sees it: sends caller frames, records what the gateway sends.

    Marks are echoed once the audio queued before them has played; a mark sent while nothing is
    playing is echoed at once (§D.4). By default playback is instant; with `auto_play=False` the test
    decides how many bytes have played with `play()`.
    """

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        call_control_id: str,
        stream_id: str,
        *,
        encoding: str = "PCMU",
        auto_play: bool = True,
    ) -> None:
        self.ws = ws
        self.call_control_id = call_control_id
        self.stream_id = stream_id
        self.encoding = encoding
        self.auto_play = auto_play
        self.frames: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.audio_out = bytearray()  # every payload byte the gateway sent, in order
        self._queue: list[tuple[str, int]] = []  # (mark name, audio_out length when it was sent)
        self._played = 0
        self._echoed_at = 0
        self._seq = itertools.count(1)
        self._chunks = itertools.count(1)  # media.chunk runs on across send_audio calls, as on the wire
        self._audio_in_bytes = 0
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read(), name=f"fake-telnyx:{call_control_id}")
        self.close_code: int | None = None
        self.close_reason = ""

    def _check(self, frame: dict[str, Any]) -> None:
        event = frame.get("event")
        expected = {
            "media": ({"event", "media"}, {"payload"}),
            "mark": ({"event", "mark"}, {"name"}),
            "clear": ({"event"}, None),
        }.get(str(event))
        if expected is None:
            self.problems.append(f"unknown outbound event {event!r}")
            return
        keys, inner = expected
        if "stream_id" in frame:
            self.problems.append(f"{event} frame carries stream_id (Telnyx outbound frames have none)")
        if set(frame) - {"stream_id"} != keys:
            self.problems.append(f"{event} frame keys {sorted(frame)} != {sorted(keys)}")
        elif inner is not None:
            body = frame[str(event)]
            if not isinstance(body, dict) or set(body) != inner:
                self.problems.append(f"{event} body {body!r} must have exactly the keys {sorted(inner)}")
            elif event == "media":
                try:
                    base64.b64decode(body["payload"], validate=True)
                except (binascii.Error, TypeError):
                    self.problems.append("media payload is not base64")

    async def _read(self) -> None:
        while True:
            message = await self.ws.receive()
            if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                self.close_reason = str(message.extra or "")
                break
            if message.type != aiohttp.WSMsgType.TEXT:
                self.problems.append(f"non-text outbound message {message.type!r}")
                continue
            frame = json.loads(message.data)
            self._check(frame)
            event = frame.get("event")
            if event == "media":
                self.audio_out += _payload_bytes(frame.get("media"))
            elif event == "mark":
                mark = frame.get("mark")
                name = mark.get("name") if isinstance(mark, dict) else None
                self._queue.append((str(name), len(self.audio_out)))
                await self.play(self._played)  # nothing playing ahead of it: echoed at once
            elif event == "clear":
                # Telnyx stops playback, empties the queue and echoes every queued mark (§D.4).
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
        """Send `frame`, adding `sequence_number` and top-level `stream_id` as Telnyx does (§D.3)."""
        event = frame["event"]
        if event != "connected":
            header: dict[str, Any] = {"event": event}
            if event != "error":  # error frames carry stream_id but no sequence_number
                header["sequence_number"] = str(next(self._seq))
            header["stream_id"] = self.stream_id
            frame = {**header, **{k: v for k, v in frame.items() if k != "event"}}
        await self.ws.send_str(json.dumps(frame))

    async def send_audio(self, audio: bytes, frame_bytes: int = 160) -> None:
        """Caller audio (RTP payload, no header) in media frames of `frame_bytes` (20 ms of PCMU)."""
        for offset in range(0, len(audio), frame_bytes):
            chunk = audio[offset : offset + frame_bytes]
            await self.send(
                {
                    "event": "media",
                    "media": {
                        "track": "inbound",
                        "chunk": str(next(self._chunks)),
                        # Milliseconds since the stream began, assuming 8 bytes/ms (PCMU/PCMA 8 kHz).
                        "timestamp": str(self._audio_in_bytes // 8),
                        "payload": base64.b64encode(chunk).decode(),
                    },
                }
            )
            self._audio_in_bytes += len(chunk)

    async def dtmf(self, digit: str) -> None:
        await self.send({"event": "dtmf", "occurred_at": _now_iso(), "dtmf": {"digit": digit}})

    async def send_error(self, code: int, title: str, detail: str = "fake error") -> None:
        """An `error` frame, e.g. (100003, "malformed_frame") after a frame Telnyx could not parse."""
        await self.send({"event": "error", "payload": {"code": code, "title": title, "detail": detail}})

    async def stop(self) -> None:
        await self.send(
            {"event": "stop", "stop": {"user_id": USER_ID, "call_control_id": self.call_control_id}}
        )

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


def _payload_bytes(media: object) -> bytes:
    """The decoded payload; lenient, since `_check` has already reported a malformed frame."""
    try:
        return base64.b64decode(media["payload"]) if isinstance(media, dict) else b""
    except (binascii.Error, KeyError, TypeError):
        return b""


class FakeTelnyx:
    """Telnyx's side of calls into one gateway: signs and sends webhooks, opens media streams.

    `signature=None` signs correctly, `signature=""` leaves the signature header out, anything else is
    sent as the header verbatim. `timestamp` (Unix seconds) defaults to now.
    """

    def __init__(
        self, http: aiohttp.ClientSession, gateway_url: str, public_url: str, keys: TelnyxKeys
    ) -> None:
        self.http = http
        self.gateway_url = gateway_url.rstrip("/")
        self.public_url = public_url.rstrip("/")
        self.keys = keys
        self.texml_secret: str | None = None  # appended as ?secret= to GET instruction fetches
        self.calls: list[FakeTelnyxCall] = []
        self._legs: dict[str, dict[str, Any]] = {}  # call_control_id -> the ids and numbers of its leg

    def _leg(
        self, call_control_id: str, *, to: str = "+15555550100", from_: str = "+15551230000"
    ) -> dict[str, Any]:
        return self._legs.setdefault(
            call_control_id,
            {
                "call_leg_id": str(uuid.uuid4()),
                "call_session_id": str(uuid.uuid4()),
                "from": from_,
                "to": to,
                "start_time": _now_iso(),
            },
        )

    def _signed(self, body: bytes, timestamp: int | None, signature: str | None) -> dict[str, str]:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        headers = {"telnyx-timestamp": ts}
        if signature is None:
            headers["telnyx-signature-ed25519"] = self.keys.sign(ts, body)
        elif signature:
            headers["telnyx-signature-ed25519"] = signature
        return headers

    # -- TeXML ----------------------------------------------------------------------------------

    async def texml_webhook(
        self,
        *,
        method: str = "GET",
        to: str = "+15555550100",
        from_: str = "+15551230000",
        call_sid: str | None = None,
        timestamp: int | None = None,
        signature: str | None = None,
    ) -> tuple[int, str]:
        """The TeXML instruction fetch (§D.1; GET by default); returns (status, body)."""
        call_sid = call_sid or new_call_control_id()
        self._leg(call_sid, to=to, from_=from_)
        params = {
            "AccountSid": ACCOUNT_SID,
            "CallSid": call_sid,
            "CallSidLegacy": str(uuid.uuid4()),
            "From": from_,
            "To": to,
            "ConnectionId": CONNECTION_ID,
            "ApiVersion": "2010-04-01",
            "CallStatus": "ringing",
        }
        encoded = urlencode(params)
        # Whether Telnyx signs the instruction fetch at all, and over what, is UNCONFIRMED (§D.1). This
        # fake assumes the Call Control scheme: `{ts}|` + the raw body, which for a GET is empty (the
        # query string is not signed) and for a POST is the form body exactly as sent.
        if method == "POST":
            body = encoded.encode()
            headers = self._signed(body, timestamp, signature)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            request = self.http.post(self.gateway_url + "/telnyx/voice", data=body, headers=headers)
        else:
            headers = self._signed(b"", timestamp, signature)
            if self.texml_secret is not None:
                # A GET's query is not covered by a signature over an empty body: the gateway wants
                # the shared secret the operator put in the TeXML URL instead.
                encoded += "&" + urlencode({"secret": self.texml_secret})
            request = self.http.get(f"{self.gateway_url}/telnyx/voice?{encoded}", headers=headers)
        async with request as response:
            return response.status, await response.text()

    @staticmethod
    def parse_texml_stream(texml: str) -> tuple[str, dict[str, str], dict[str, str]]:
        """The <Stream> url, all its attributes and its <Parameter>s (name → value) from a TeXML answer."""
        root = ET.fromstring(texml)  # noqa: S314 - the gateway under test wrote it
        stream = root.find("./Connect/Stream")
        assert stream is not None, texml
        params = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
        return stream.attrib["url"], dict(stream.attrib), params

    # -- Call Control webhooks ------------------------------------------------------------------

    async def call_control_event(
        self,
        event_type: str,
        payload: dict[str, Any],
        *,
        timestamp: int | None = None,
        signature: str | None = None,
    ) -> tuple[int, str]:
        """POST one signed event envelope (§D.2) to /telnyx/events; returns (status, body)."""
        envelope = {
            "data": {
                "record_type": "event",
                "event_type": event_type,
                "id": str(uuid.uuid4()),
                "occurred_at": _now_iso(),
                "payload": payload,
            },
            "meta": {"attempt": 1, "delivered_to": self.public_url + "/telnyx/events"},
        }
        body = json.dumps(envelope).encode()
        headers = self._signed(body, timestamp, signature)
        headers["Content-Type"] = "application/json"
        async with self.http.post(
            self.gateway_url + "/telnyx/events", data=body, headers=headers
        ) as response:
            return response.status, await response.text()

    def _payload(self, call_control_id: str, **extra: Any) -> dict[str, Any]:
        leg = self._leg(call_control_id)
        return {
            "call_control_id": call_control_id,
            "call_leg_id": leg["call_leg_id"],
            "call_session_id": leg["call_session_id"],
            "connection_id": CONNECTION_ID,
            "client_state": None,
            "direction": "incoming",
            "from": leg["from"],
            "to": leg["to"],
            "start_time": leg["start_time"],
            "custom_headers": [],
            "sip_headers": [],
            "tags": [],
            **extra,
        }

    async def call_initiated(
        self,
        *,
        call_control_id: str | None = None,
        to: str = "+15555550100",
        from_: str = "+15551230000",
        timestamp: int | None = None,
        signature: str | None = None,
    ) -> tuple[str, int, str]:
        """A parked incoming call (`call.initiated`); returns (call_control_id, status, body)."""
        call_control_id = call_control_id or new_call_control_id()
        self._legs.pop(call_control_id, None)
        self._leg(call_control_id, to=to, from_=from_)
        payload = self._payload(
            call_control_id,
            state="parked",
            caller_id_name=from_,
            offered_codecs="PCMU,PCMA,G722",
            connection_codecs="PCMU,PCMA",
        )
        status, body = await self.call_control_event(
            "call.initiated", payload, timestamp=timestamp, signature=signature
        )
        return call_control_id, status, body

    async def call_answered(
        self,
        call_control_id: str,
        *,
        client_state: str | None = None,
        timestamp: int | None = None,
        signature: str | None = None,
    ) -> tuple[int, str]:
        """`call.answered`, echoing the answer command's `client_state` as Telnyx does."""
        payload = self._payload(call_control_id, state="answered", client_state=client_state)
        return await self.call_control_event(
            "call.answered", payload, timestamp=timestamp, signature=signature
        )

    async def dialed_call_answered(
        self, call_control_id: str, *, to: str, from_: str, client_state: str | None = None
    ) -> tuple[int, str]:
        """`call.answered` for a call the gateway dialed (`POST /v2/calls`): direction `outgoing`."""
        self._legs.pop(call_control_id, None)
        self._leg(call_control_id, to=to, from_=from_)
        payload = self._payload(
            call_control_id, state="answered", direction="outgoing", client_state=client_state
        )
        return await self.call_control_event("call.answered", payload)

    async def speak_ended(self, call_control_id: str) -> tuple[int, str]:
        """`call.speak.ended`: the text of a `speak` action has been spoken to the caller."""
        payload = self._payload(call_control_id, status="completed")
        return await self.call_control_event("call.speak.ended", payload)

    async def call_hangup(
        self,
        call_control_id: str,
        *,
        hangup_cause: str = "normal_clearing",
        hangup_source: str = "caller",
        timestamp: int | None = None,
        signature: str | None = None,
    ) -> tuple[int, str]:
        """`call.hangup` for a call this fake started (or a fresh leg for an unknown id)."""
        payload = self._payload(
            call_control_id,
            state="hangup",
            hangup_cause=hangup_cause,
            hangup_source=hangup_source,
            sip_hangup_cause="200",
            end_time=_now_iso(),
        )
        return await self.call_control_event("call.hangup", payload, timestamp=timestamp, signature=signature)

    # -- the media WebSocket --------------------------------------------------------------------

    async def open_stream(
        self,
        stream_url: str,
        *,
        call_control_id: str,
        encoding: str = "PCMU",
        sample_rate: int = 8000,
        client_state: str | None = None,
        auto_play: bool = True,
        send_start: bool = True,
    ) -> FakeTelnyxCall:
        """Open `stream_url`'s path and query on the gateway (unsigned, §D.5); send `connected`, `start`.

        <Parameter> values are not put in `start`: the key Telnyx uses is UNCONFIRMED (§D.1), so a
        gateway must not depend on them; it can carry what it needs in the stream URL.
        """
        parts = urlsplit(stream_url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        ws = await self.http.ws_connect(self.gateway_url.replace("http", "ws", 1) + path)
        call = FakeTelnyxCall(ws, call_control_id, str(uuid.uuid4()), encoding=encoding, auto_play=auto_play)
        self.calls.append(call)
        if send_start:
            leg = self._leg(call_control_id)
            await call.send({"event": "connected", "version": "1.0.0"})
            await call.send(
                {
                    "event": "start",
                    "start": {
                        "user_id": USER_ID,
                        "call_control_id": call_control_id,
                        "call_session_id": leg["call_session_id"],
                        "from": leg["from"],
                        "to": leg["to"],
                        "tags": [],
                        "client_state": client_state,
                        "media_format": {"encoding": encoding, "sample_rate": sample_rate, "channels": 1},
                    },
                }
            )
        return call

    async def call_texml(
        self,
        *,
        to: str = "+15555550100",
        from_: str = "+15551230000",
        method: str = "GET",
        auto_play: bool = True,
    ) -> FakeTelnyxCall:
        """Instruction fetch, then the media stream, as one inbound TeXML call (CallSid = call_control_id)."""
        call_sid = new_call_control_id()
        status, body = await self.texml_webhook(method=method, to=to, from_=from_, call_sid=call_sid)
        assert status == 200, body
        url, attrs, _ = self.parse_texml_stream(body)
        codec = attrs.get("codec", "default")
        return await self.open_stream(
            url,
            call_control_id=call_sid,
            encoding="PCMU" if codec == "default" else codec,
            auto_play=auto_play,
        )

    async def call_control(
        self,
        api: FakeTelnyxApi,
        *,
        to: str = "+15555550100",
        from_: str = "+15551230000",
        send_answered: bool = True,
        auto_play: bool = True,
    ) -> FakeTelnyxCall:
        """`call.initiated`, the gateway's `answer` action, `call.answered`, then the media stream."""
        call_control_id, status, body = await self.call_initiated(to=to, from_=from_)
        assert 200 <= status < 300, body
        answer = await api.wait_action(call_control_id, "answer")
        assert "stream_url" in answer, answer
        if send_answered:
            status, body = await self.call_answered(call_control_id, client_state=answer.get("client_state"))
            assert 200 <= status < 300, body
        codec = answer.get("stream_codec", "default")
        return await self.open_stream(
            answer["stream_url"],
            call_control_id=call_control_id,
            encoding="PCMU" if codec == "default" else codec,
            client_state=answer.get("client_state"),
            auto_play=auto_play,
        )


class FakeTelnyxApi:
    """Telnyx's v2 Call Control API: records `POST /v2/calls/{id}/actions/{action}` (answer, hangup,
    streaming_start, …) and dials (`POST /v2/calls`), and checks the key."""

    def __init__(self, api_key: str = API_KEY) -> None:
        self.auth = f"Bearer {api_key}"
        self.actions: list[tuple[str, str, dict[str, Any]]] = []  # (call_control_id, action, JSON body)
        self.problems: list[str] = []
        self.status_for: dict[tuple[str, str], int] = {}  # (call_control_id, action) -> HTTP status
        self.dials: list[dict[str, Any]] = []  # the JSON body of each `POST /v2/calls`, in order
        self.dial_status = 200  # anything else: a Telnyx error body with that status
        self._changed = asyncio.Condition()
        app = web.Application()
        app.router.add_post("/v2/calls", self._dial)
        # call_control_id contains ":" ("v3:…"); match any one path segment.
        app.router.add_post("/v2/calls/{call_control_id:[^/]+}/actions/{action}", self._action)
        self._server = TestServer(app, host="127.0.0.1")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}"

    async def __aenter__(self) -> FakeTelnyxApi:
        await self._server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._server.close()

    async def _action(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != self.auth:
            self.problems.append("call action without the API key as a Bearer token")
            return web.json_response(
                {"errors": [{"code": "10009", "title": "Authentication failed"}]}, status=401
            )
        call_control_id, action = request.match_info["call_control_id"], request.match_info["action"]
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            self.problems.append(f"{action} body is not JSON")
            body = {}
        if raw and request.content_type != "application/json":
            self.problems.append(f"{action} sent as {request.content_type}, not application/json")
        if not isinstance(body, dict):
            self.problems.append(f"{action} body is not a JSON object")
            body = {}
        async with self._changed:
            self.actions.append((call_control_id, action, body))
            self._changed.notify_all()
        status = self.status_for.get((call_control_id, action), 200)
        if status == 422:
            return web.json_response(
                {"errors": [{"code": "90018", "title": "Call has already ended"}]}, status=422
            )
        if status != 200:
            return web.json_response(
                {"errors": [{"code": str(status), "title": "fake error"}]}, status=status
            )
        return web.json_response({"data": {"result": "ok"}})

    async def _dial(self, request: web.Request) -> web.Response:
        """Dial (§D.2 `POST /v2/calls`): answers the new call's ids, as Telnyx does before it rings."""
        if request.headers.get("Authorization") != self.auth:
            self.problems.append("dial without the API key as a Bearer token")
            return web.json_response(
                {"errors": [{"code": "10009", "title": "Authentication failed"}]}, status=401
            )
        if request.content_type != "application/json":
            self.problems.append(f"dial sent as {request.content_type}, not application/json")
        try:
            body = await request.json()
        except json.JSONDecodeError:
            self.problems.append("dial body is not JSON")
            body = {}
        self.dials.append(body)
        if self.dial_status != 200:
            error = {"code": "10010", "title": "Invalid destination", "detail": "fake dial error"}
            return web.json_response({"errors": [error]}, status=self.dial_status)
        data = {
            "record_type": "call",
            "call_control_id": new_call_control_id(),
            "call_leg_id": str(uuid.uuid4()),
            "call_session_id": str(uuid.uuid4()),
            "is_alive": False,
        }
        return web.json_response({"data": data})

    def hangups(self) -> list[str]:
        return [cid for cid, action, _ in self.actions if action == "hangup"]

    def answers(self) -> list[tuple[str, dict[str, Any]]]:
        return [(cid, body) for cid, action, body in self.actions if action == "answer"]

    def _first(self, call_control_id: str, action: str) -> dict[str, Any] | None:
        return next((b for c, a, b in self.actions if (c, a) == (call_control_id, action)), None)

    async def wait_action(self, call_control_id: str, action: str) -> dict[str, Any]:
        """Wait until the gateway posted `action` for the call; returns its (first) JSON body."""
        async with asyncio.timeout(WAIT_S), self._changed:
            await self._changed.wait_for(lambda: self._first(call_control_id, action) is not None)
        body = self._first(call_control_id, action)
        assert body is not None
        return body
