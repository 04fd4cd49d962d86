"""Telnyx: Ed25519 webhook signatures, TeXML, media framing (protocols.md §D), Call Control actions."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal
from xml.sax.saxutils import quoteattr

import aiohttp
import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.carriers.base import (
    CarrierEvent,
    Connected,
    Dtmf,
    Ignored,
    MarkEcho,
    Media,
    StreamStart,
    StreamStop,
    Unknown,
    dtmf_digit,
    json_string,
    load_frame,
    media_payload,
)
from gateway.config import TelnyxConfig
from gateway.errors import ProtocolError

log = structlog.get_logger("gateway.telnyx")

SignatureProblem = Literal["missing_signature", "stale_timestamp", "bad_signature"]
ActionResult = Literal["ok", "already_ended", "failed"]
# Telnyx's "call has already ended" error code for actions on a finished call (pipecat treats it so).
ALREADY_ENDED_CODE = "90018"
# How long a dialed call may ring before the gateway forgets which agent it was for.
DIALED_TTL_S = 300.0
# How long an announcement may take before we hang up anyway, should `call.speak.ended` never come:
# about 12 characters a second of speech, plus a margin for the text-to-speech to start.
SPEAK_CHARS_PER_S = 12.0
SPEAK_MARGIN_S = 2.0
SPEAK_MAX_WAIT_S = 20.0


def signature_problem(
    public_key: Ed25519PublicKey, headers: Mapping[str, str], body: bytes, *, now: float, tolerance_s: float
) -> SignatureProblem | None:
    """None when `telnyx-signature-ed25519` signs `{telnyx-timestamp}|{raw body}` within the tolerance."""
    signature, timestamp = headers.get("telnyx-signature-ed25519", ""), headers.get("telnyx-timestamp", "")
    if not signature or not timestamp:
        return "missing_signature"
    try:
        # Replays: a captured webhook is only good for `tolerance_s`, both ways (clock skew).
        if abs(now - int(timestamp)) > tolerance_s:
            return "stale_timestamp"
        public_key.verify(base64.b64decode(signature, validate=True), timestamp.encode() + b"|" + body)
    except (ValueError, binascii.Error, InvalidSignature):
        return "bad_signature"
    return None


def load_public_key(public_key_b64: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64))


def texml_connect_stream(stream_url: str, codec: str) -> str:
    """TeXML bridging the call to our media socket. `bidirectionalMode="rtp"` is essential: the default
    (mp3) plays nothing we send, with no error (§D.1, §F)."""
    attrs = {
        "url": stream_url,
        "track": "inbound_track",
        "codec": codec,
        "bidirectionalMode": "rtp",
        "bidirectionalCodec": codec,
        "bidirectionalSamplingRate": "8000",
    }
    rendered = " ".join(f"{name}={quoteattr(value)}" for name, value in attrs.items())
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream {rendered}/></Connect></Response>'
    )


def texml_reject(reason: str | None = None) -> str:
    attr = f" reason={quoteattr(reason)}" if reason else ""
    return f'<?xml version="1.0" encoding="UTF-8"?><Response><Reject{attr}/></Response>'


def _field(obj: Any, key: str, frame: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise ProtocolError(f"telnyx {frame} frame: missing {key}")
    return obj[key]


def _sample_rate(value: object) -> int:
    """`media_format.sample_rate` as a number or a string of digits; anything else reads as 8000."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1_000_000:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and 0 < len(value) <= 6:
        return int(value)
    return 8000


def decode_frame(text: str) -> CarrierEvent:
    """Decode one media-stream frame from Telnyx (§D.3); raises ProtocolError and nothing else."""
    frame, event = load_frame(text, "telnyx")
    try:
        return _decode(frame, event)
    except RecursionError:  # str() of a value nested nearly as deep as json.loads allows
        raise ProtocolError("telnyx frame: nested too deeply") from None


def _decode(frame: dict[str, Any], event: str) -> CarrierEvent:
    """Dispatch on the events of §D.3; any other name is Unknown."""
    if event == "media":
        media = _field(frame, "media", event)
        payload = _field(media, "payload", event)
        if not isinstance(payload, str):
            raise ProtocolError("telnyx media frame: payload is not a string")
        if media.get("track", "inbound") != "inbound":
            return Ignored(event)
        return Media(payload)
    if event == "mark":
        return MarkEcho(str(_field(_field(frame, "mark", event), "name", event)))
    if event == "start":
        start = _field(frame, "start", event)
        if not isinstance(start, dict):
            raise ProtocolError("telnyx start frame: start is not an object")
        fmt = start.get("media_format")
        fmt = fmt if isinstance(fmt, dict) else {}
        return StreamStart(
            call_id=str(_field(start, "call_control_id", event)),
            stream_id=str(_field(frame, "stream_id", event)),
            encoding=str(fmt.get("encoding") or ""),  # absent: the configured codec applies
            sample_rate_hz=_sample_rate(fmt.get("sample_rate", 8000)),
        )
    if event == "stop":
        return StreamStop()
    if event == "dtmf":
        return Dtmf(dtmf_digit(_field(_field(frame, "dtmf", event), "digit", event), "telnyx"))
    if event == "connected":
        return Connected()
    if event == "error":
        payload = frame.get("payload")
        payload = payload if isinstance(payload, dict) else {}
        return Ignored(f"error {payload.get('code', '?')} {payload.get('title', '')}".strip())
    return Unknown(event)


class TelnyxMediaCodec:
    """Outbound frames: Telnyx needs no stream id on them (§D.4)."""

    __slots__ = ()

    def media(self, payload_b64: str) -> str:
        return '{"event":"media","media":{"payload":"' + payload_b64 + '"}}'

    def mark(self, name: str) -> str:
        return '{"event":"mark","mark":{"name":' + json_string(name) + "}}"

    def clear(self) -> str:
        return '{"event":"clear"}'


class TelnyxCarrier:
    name = "telnyx"

    def __init__(self, config: TelnyxConfig, http: aiohttp.ClientSession) -> None:
        self.config = config
        self.public_key = load_public_key(config.public_key)
        self._http = http
        self._auth = f"Bearer {config.api_key.get_secret_value()}"
        self.dialed = DialedCalls()
        self._speaking: dict[str, asyncio.Event] = {}  # call_control_id -> set when speech ended

    def take_over(self, previous: TelnyxCarrier) -> None:
        """Share what `previous` (the carrier before a config reload) tracks of calls in progress:
        dialed calls still ringing, and announcements waiting for `call.speak.ended`. Calls started
        before the reload announce through `previous`, while the webhook reaches this carrier."""
        self.dialed = previous.dialed
        self._speaking = previous._speaking

    @staticmethod
    def decode(text: str) -> CarrierEvent:
        return decode_frame(text)

    @staticmethod
    def media_payload(text: str) -> str | None:
        return media_payload(text)

    @staticmethod
    def codec(start: StreamStart) -> TelnyxMediaCodec:
        return TelnyxMediaCodec()

    async def action(self, call_control_id: str, action: str, body: Mapping[str, Any]) -> ActionResult:
        """POST a Call Control action: `ok`, `already_ended` (the call is gone) or `failed`."""
        url = f"{self.config.api_base_url.rstrip('/')}/v2/calls/{call_control_id}/actions/{action}"
        try:
            async with self._http.post(
                url,
                json=dict(body),
                headers={"Authorization": self._auth},
                timeout=aiohttp.ClientTimeout(total=10),
            ) as response:
                if response.status < 300:
                    return "ok"
                text = await response.text()
                if response.status == 404 or (response.status == 422 and ALREADY_ENDED_CODE in text):
                    log.info("carrier.call_already_ended", carrier=self.name, action=action)
                    return "already_ended"
                log.warning("carrier.action_failed", carrier=self.name, action=action, status=response.status)
                return "failed"
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("carrier.action_failed", carrier=self.name, action=action, error=type(exc).__name__)
            return "failed"

    async def transfer(self, call_id: str, destination: str) -> bool:
        return await self.action(call_id, "transfer", {"to": destination}) == "ok"

    async def hangup(self, call_id: str) -> None:
        # Hanging up a call that already ended is success: the caller is off the line either way.
        if await self.action(call_id, "hangup", {}) == "ok":
            log.info("carrier.hangup", carrier=self.name)

    async def say_and_hangup(self, call_id: str, text: str, language: str) -> None:
        """`speak`, wait for its `call.speak.ended` webhook (bounded by the text's length), hang up.

        Our media socket stays open meanwhile: a TeXML call whose stream ended would move on to the
        next verb (there is none, so Telnyx would hang up before the announcement is heard).
        """
        ended = self._speaking[call_id] = asyncio.Event()
        result: ActionResult = "failed"
        try:
            voice = self.config.say_voice
            body = {"payload": text, "payload_type": "text", "voice": voice, "language": language}
            result = await self.action(call_id, "speak", body)
            if result == "ok":
                log.info("carrier.announcing", carrier=self.name)
                wait_s = min(SPEAK_MAX_WAIT_S, len(text) / SPEAK_CHARS_PER_S + SPEAK_MARGIN_S)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await ended.wait()
        finally:
            if self._speaking.get(call_id) is ended:
                del self._speaking[call_id]
            # Also when cancelled mid-announcement (a forced stop): the caller must not be left on.
            if result != "already_ended":
                await self.hangup(call_id)

    def speech_ended(self, call_id: str) -> None:
        """`call.speak.ended` (or `call.hangup`) arrived for a call: an announcement waiting on it is over."""
        event = self._speaking.get(call_id)
        if event is not None:
            event.set()

    async def dial(self, to: str, from_: str, connection_id: str) -> tuple[int, dict[str, Any]]:
        """Place an outbound call (`POST /v2/calls`); its Call Control events reach the connection's
        webhook. Returns Telnyx's HTTP status and JSON body; (0, {}) when it is unreachable."""
        try:
            async with self._http.post(
                f"{self.config.api_base_url.rstrip('/')}/v2/calls",
                json={"to": to, "from": from_, "connection_id": connection_id},
                headers={"Authorization": self._auth},
                timeout=aiohttp.ClientTimeout(total=10),
            ) as response:
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    body = None
                return response.status, body if isinstance(body, dict) else {}
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("carrier.dial_failed", carrier=self.name, error=type(exc).__name__)
            return 0, {}


class DialedCalls:
    """Calls this replica dialed and that have not been answered yet: call_control_id → agent.

    Telnyx reports the answer with `call.answered`, and only then can the media stream start (a
    token issued at dial time could expire while the phone rings). Entries are forgotten after
    `ttl_s`, so calls that never answer and never report a hang-up do not pile up.
    """

    def __init__(self, ttl_s: float = DIALED_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._agents: dict[str, tuple[str, float]] = {}  # call_control_id -> (agent, when to forget it)

    def __len__(self) -> int:
        self._expire()
        return len(self._agents)

    def _expire(self) -> None:
        now = self._clock()
        self._agents = {k: v for k, v in self._agents.items() if v[1] > now}

    def remember(self, call_control_id: str, agent: str) -> None:
        self._expire()
        self._agents[call_control_id] = (agent, self._clock() + self._ttl_s)

    def take(self, call_control_id: str) -> str | None:
        """The agent of a dialed call, once: a retried `call.answered` must not start a second stream."""
        self._expire()
        entry = self._agents.pop(call_control_id, None)
        return None if entry is None else entry[0]

    def forget(self, call_control_id: str) -> None:
        self._agents.pop(call_control_id, None)
