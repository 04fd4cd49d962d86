"""Twilio: X-Twilio-Signature, TwiML, Media Streams framing (protocols.md §C) and REST hang-up."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from xml.sax.saxutils import escape, quoteattr

import aiohttp
import structlog

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
from gateway.config import TwilioConfig
from gateway.errors import ProtocolError

log = structlog.get_logger("gateway.twilio")

_DEFAULT_PORTS = {"https": 443, "wss": 443, "http": 80, "ws": 80}


def compute_signature(auth_token: str, url: str, params: Mapping[str, Iterable[str]]) -> str:
    """Twilio's HMAC-SHA1: the URL, then each param name + value in sorted order (§C.3)."""
    parts = [url]
    for name in sorted(params):
        values = params[name]
        # A bare string is one value, not an iterable of one-character values.
        parts.extend(name + value for value in sorted({values} if isinstance(values, str) else set(values)))
    digest = hmac.new(auth_token.encode(), "".join(parts).encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _port_variants(url: str) -> list[str]:
    """The URL as given, plus with the default port added or removed: Twilio signs either way."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    default = _DEFAULT_PORTS.get(parts.scheme)
    if parts.port is None and default is not None:
        other = parts._replace(netloc=f"{host}:{default}")
    elif parts.port is not None and parts.port == default:
        other = parts._replace(netloc=host)
    else:
        return [url]
    return [url, urlunsplit(other)]


def signature_matches(
    auth_token: str, urls: Iterable[str], params: Mapping[str, Iterable[str]], signature: str
) -> bool:
    """True when `signature` is Twilio's for any of `urls` (each with and without its default port)."""
    if not signature:
        return False
    for url in urls:
        for variant in _port_variants(url):
            expected = compute_signature(auth_token, variant, params)
            if hmac.compare_digest(expected.encode(), signature.encode()):
                return True
    return False


def twiml_connect_stream(media_url: str, parameters: Mapping[str, str]) -> str:
    """TwiML that bridges the call to our media socket; per-call data rides in <Parameter>s (§C.2)."""
    params = "".join(
        f"<Parameter name={quoteattr(name)} value={quoteattr(value)}/>" for name, value in parameters.items()
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Response><Connect><Stream url={quoteattr(media_url)}>{params}</Stream></Connect></Response>"
    )


def twiml_reject(reason: str | None = None) -> str:
    attr = f" reason={quoteattr(reason)}" if reason else ""
    return f'<?xml version="1.0" encoding="UTF-8"?><Response><Reject{attr}/></Response>'


def twiml_say(
    text: str, *, voice: str | None = None, language: str | None = None, hangup: bool = False
) -> str:
    attrs = "".join(
        f" {name}={quoteattr(value)}" for name, value in (("voice", voice), ("language", language)) if value
    )
    end = "<Hangup/>" if hangup else ""
    return f'<?xml version="1.0" encoding="UTF-8"?><Response><Say{attrs}>{escape(text)}</Say>{end}</Response>'


def _field(obj: Any, key: str, frame: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise ProtocolError(f"twilio {frame} frame: missing {key}")
    return obj[key]


def _decode_start(frame: dict[str, Any]) -> StreamStart:
    start = _field(frame, "start", "start")
    call_id = str(_field(start, "callSid", "start"))  # also proves `start` is an object
    fmt = start.get("mediaFormat") or {}
    params = start.get("customParameters") or {}
    if not isinstance(fmt, dict):
        raise ProtocolError("twilio start frame: mediaFormat is not an object")
    if not isinstance(params, dict):
        raise ProtocolError("twilio start frame: customParameters is not an object")
    try:
        sample_rate_hz = int(fmt.get("sampleRate", 8000))
    except (TypeError, ValueError, OverflowError):  # OverflowError: JSON's Infinity is a float
        raise ProtocolError("twilio start frame: sampleRate is not a number") from None
    return StreamStart(
        call_id=call_id,
        stream_id=str(frame.get("streamSid") or _field(start, "streamSid", "start")),
        encoding=str(fmt.get("encoding", "audio/x-mulaw")),
        sample_rate_hz=sample_rate_hz,
        params={str(k): str(v) for k, v in params.items()},
    )


def decode_frame(text: str) -> CarrierEvent:
    """Decode one Media Streams frame from Twilio (§C.4); raises ProtocolError and nothing else."""
    frame, event = load_frame(text, "twilio")
    try:
        return _decode(frame, event)
    except RecursionError:  # str() of a value nested nearly as deep as json.loads allows
        raise ProtocolError("twilio frame: nested too deeply") from None


def _decode(frame: dict[str, Any], event: str) -> CarrierEvent:
    """Dispatch on the events of §C.4; any other name is Unknown."""
    if event == "media":
        media = _field(frame, "media", event)
        payload = _field(media, "payload", event)
        if not isinstance(payload, str):
            raise ProtocolError("twilio media frame: payload is not a string")
        if media.get("track", "inbound") != "inbound":
            return Ignored(event)
        return Media(payload)
    if event == "mark":
        return MarkEcho(str(_field(_field(frame, "mark", event), "name", event)))
    if event == "start":
        return _decode_start(frame)
    if event == "stop":
        return StreamStop()
    if event == "dtmf":
        return Dtmf(dtmf_digit(_field(_field(frame, "dtmf", event), "digit", event), "twilio"))
    if event == "connected":
        return Connected()
    return Unknown(event)


class TwilioMediaCodec:
    """Outbound frames for one stream; the streamSid is required on every one (§C.5)."""

    __slots__ = ("_mark_prefix", "_prefix", "stream_sid")

    def __init__(self, stream_sid: str) -> None:
        self.stream_sid = stream_sid
        # The constant part of every media and mark frame, serialised once per call, not per frame.
        sid = json.dumps(stream_sid)
        self._prefix = '{"event":"media","streamSid":' + sid + ',"media":{"payload":"'
        self._mark_prefix = '{"event":"mark","streamSid":' + sid + ',"mark":{"name":'

    def media(self, payload_b64: str) -> str:
        return self._prefix + payload_b64 + '"}}'

    def mark(self, name: str) -> str:
        return self._mark_prefix + json_string(name) + "}}"

    def clear(self) -> str:
        return json.dumps({"event": "clear", "streamSid": self.stream_sid})


class TwilioCarrier:
    name = "twilio"

    def __init__(self, config: TwilioConfig, http: aiohttp.ClientSession) -> None:
        self.config = config
        self._http = http
        credentials = f"{config.account_sid}:{config.auth_token.get_secret_value()}"
        self._basic_auth = "Basic " + base64.b64encode(credentials.encode()).decode("ascii")

    @staticmethod
    def decode(text: str) -> CarrierEvent:
        return decode_frame(text)

    @staticmethod
    def media_payload(text: str) -> str | None:
        return media_payload(text)

    @staticmethod
    def codec(start: StreamStart) -> TwilioMediaCodec:
        return TwilioMediaCodec(start.stream_id)

    def verify(self, urls: Iterable[str], params: Mapping[str, Iterable[str]], signature: str) -> bool:
        return signature_matches(self.config.auth_token.get_secret_value(), urls, params, signature)

    def _call_url(self, call_sid: str) -> str:
        base = self.config.api_base_url.rstrip("/")
        return f"{base}/2010-04-01/Accounts/{self.config.account_sid}/Calls/{call_sid}.json"

    async def update_call(self, call_sid: str, form: Mapping[str, str]) -> bool:
        """POST a call update (§C.6). A call that is already gone (404 / 20404) counts as success."""
        try:
            async with self._http.post(
                self._call_url(call_sid),
                data=dict(form),
                headers={"Authorization": self._basic_auth},
                timeout=aiohttp.ClientTimeout(total=10),
            ) as response:
                if response.status < 300:
                    return True
                if response.status == 404:
                    log.info("carrier.call_already_ended", carrier=self.name)
                    return True
                log.warning("carrier.update_failed", carrier=self.name, status=response.status)
                return False
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("carrier.update_failed", carrier=self.name, error=type(exc).__name__)
            return False

    async def transfer(self, call_id: str, destination: str) -> bool:
        """Replace the call's TwiML with a <Dial>: Twilio ends our stream and connects the caller."""
        target = (
            f"<Sip>{escape(destination)}</Sip>" if destination.startswith("sip:") else escape(destination)
        )
        twiml = f'<?xml version="1.0" encoding="UTF-8"?><Response><Dial>{target}</Dial></Response>'
        return await self.update_call(call_id, {"Twiml": twiml})

    async def hangup(self, call_id: str) -> None:
        if await self.update_call(call_id, {"Status": "completed"}):
            log.info("carrier.hangup", carrier=self.name)

    async def say_and_hangup(self, call_id: str, text: str, language: str) -> None:
        """Replace the call's TwiML with <Say> then <Hangup/>: Twilio ends our stream, speaks, hangs up."""
        twiml = twiml_say(text, voice=self.config.say_voice, language=language, hangup=True)
        if await self.update_call(call_id, {"Twiml": twiml}):
            log.info("carrier.announced_hangup", carrier=self.name)
        else:
            await self.hangup(call_id)

    async def create_call(self, to: str, from_: str, url: str) -> tuple[int, dict[str, Any]]:
        """Place an outbound call whose TwiML Twilio fetches from `url` (POST to the Calls list).

        Returns Twilio's HTTP status and JSON body (`sid` on success); (0, {}) when it is unreachable.
        """
        base = self.config.api_base_url.rstrip("/")
        try:
            async with self._http.post(
                f"{base}/2010-04-01/Accounts/{self.config.account_sid}/Calls.json",
                data={"To": to, "From": from_, "Url": url, "Method": "POST"},
                headers={"Authorization": self._basic_auth},
                timeout=aiohttp.ClientTimeout(total=10),
            ) as response:
                return response.status, await _json_object(response)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("carrier.dial_failed", carrier=self.name, error=type(exc).__name__)
            return 0, {}


async def _json_object(response: aiohttp.ClientResponse) -> dict[str, Any]:
    """The response's JSON object, or {} when the body is not one (an HTML error page, say)."""
    try:
        body = await response.json(content_type=None)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
