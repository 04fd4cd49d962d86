"""What the bridge needs from a carrier: decoded media-socket events and frame encoders.

Framing is pure and synchronous (encode/decode of one JSON text frame), so it is tested with recorded
frames and costs nothing to call on the hot path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway import fastjson
from gateway.errors import ProtocolError


@dataclass(frozen=True, slots=True)
class StreamStart:
    """The carrier's `start` frame: which call this socket carries."""

    call_id: str
    stream_id: str
    encoding: str
    sample_rate_hz: int
    params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Media:
    payload_b64: str


@dataclass(frozen=True, slots=True)
class MarkEcho:
    name: str


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str


@dataclass(frozen=True, slots=True)
class StreamStop:
    """The carrier ended the stream (the caller hung up, or the call moved on): no fields."""


@dataclass(frozen=True, slots=True)
class Connected:
    """The socket's first frame, before `start`: it carries nothing the bridge uses."""


@dataclass(frozen=True, slots=True)
class Ignored:
    """A well-formed frame the bridge has no use for."""

    event: str


@dataclass(frozen=True, slots=True)
class Unknown:
    """A well-formed frame whose event the protocol does not define (counted, then dropped)."""

    event: str


CarrierEvent = StreamStart | Media | MarkEcho | Dtmf | StreamStop | Connected | Ignored | Unknown


def media_payload(text: str) -> str | None:
    """The payload of an inbound media frame, parsed the fast way (gateway.fastjson); None for any
    other frame, which `decode` then judges. Twilio (§C.4) and Telnyx (§D.3) share this shape."""
    try:
        frame = fastjson.loads(text)
    except ValueError:
        return None
    if type(frame) is not dict or frame.get("event") != "media":
        return None
    media = frame.get("media")
    if type(media) is not dict:
        return None
    payload = media.get("payload")
    if type(payload) is not str or media.get("track", "inbound") != "inbound":
        return None
    return payload


def load_frame(text: str, carrier: str) -> tuple[dict[str, Any], str]:
    """One frame's JSON object and its `event` name; ProtocolError (`malformed_json`) otherwise."""
    try:
        frame = json.loads(text)
    except ValueError:
        raise ProtocolError(f"{carrier} frame: not JSON", reason="malformed_json") from None
    except RecursionError:
        # Nesting deeper than the interpreter allows fits in a few kilobytes of `[`.
        raise ProtocolError(f"{carrier} frame: nested too deeply", reason="malformed_json") from None
    if not isinstance(frame, dict) or not isinstance(frame.get("event"), str):
        raise ProtocolError(f"{carrier} frame: no event field", reason="malformed_json")
    return frame, frame["event"]


# The sixteen DTMF keys. A `digit` is forwarded to the model as the caller's words, so anything else
# (a frame could carry any text there) is refused rather than passed on.
_DTMF_KEYS = frozenset("0123456789*#ABCD")


def dtmf_digit(value: object, carrier: str) -> str:
    """A dtmf frame's `digit`, if it is one DTMF key (A-D in either case); ProtocolError otherwise."""
    if isinstance(value, str) and value.upper() in _DTMF_KEYS:
        return value.upper()
    raise ProtocolError(f"{carrier} dtmf frame: digit is not a DTMF key")


def json_string(text: str) -> str:
    """`text` as a JSON string literal. Mark names are the playback tracker's sequence numbers, which
    need no escaping, so the hot path skips json.dumps (a few µs per model delta) for them."""
    if text.isdigit() and text.isascii():
        return '"' + text + '"'
    return json.dumps(text)


class MediaCodec(Protocol):
    """Encodes frames for one media stream (Twilio needs the stream id on every frame)."""

    def media(self, payload_b64: str) -> str: ...

    def mark(self, name: str) -> str: ...

    def clear(self) -> str: ...


class Carrier(Protocol):
    name: str

    def decode(self, text: str) -> CarrierEvent:
        """Decode one text frame; raises ProtocolError (and nothing else) naming what is wrong."""

    def media_payload(self, text: str) -> str | None:
        """The payload if `text` is a well-formed inbound media frame (what `decode` would return as
        Media), quickly; None for anything else, including frames `decode` would refuse."""

    def codec(self, start: StreamStart) -> MediaCodec: ...

    async def hangup(self, call_id: str) -> None:
        """End the call at the carrier; a call that already ended counts as success."""

    async def say_and_hangup(self, call_id: str, text: str, language: str) -> None:
        """Have the carrier speak `text` to the caller (its own text-to-speech), then end the call.

        For calls the agent cannot finish itself: the model is gone, or the gateway is shutting down.
        Falls back to a plain hang-up when the carrier refuses to speak.
        """

    async def transfer(self, call_id: str, destination: str) -> bool:
        """Connect the caller to `destination` (E.164 or sip: URI); True when the carrier took it."""
