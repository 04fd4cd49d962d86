"""Tests for gateway.carriers.twilio's pure parts: X-Twilio-Signature, Media Streams framing and TwiML.

Signatures are checked against the `twilio` package's own RequestValidator, frames against recorded
frames shaped as protocols.md §C.4 (tests/data/twilio_frames.json), and the frames and TwiML we emit
are parsed back (JSON / XML) rather than compared as strings, so escaping mistakes show up as parse
failures or changed values.
"""

from __future__ import annotations

import base64
import json
import random
import re
import string
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from multidict import MultiDict
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Connect, VoiceResponse

from gateway.carriers.base import (
    Connected,
    Dtmf,
    Ignored,
    MarkEcho,
    Media,
    StreamStart,
    StreamStop,
    Unknown,
)
from gateway.carriers.twilio import (
    TwilioCarrier,
    TwilioMediaCodec,
    compute_signature,
    decode_frame,
    signature_matches,
    twiml_connect_stream,
    twiml_reject,
    twiml_say,
)
from gateway.errors import ProtocolError

FRAMES: dict[str, dict[str, Any]] = json.loads(
    (Path(__file__).parent / "data" / "twilio_frames.json").read_text(encoding="utf-8")
)["frames"]
STREAM_SID = FRAMES["start"]["streamSid"]
CALL_SID = FRAMES["start"]["start"]["callSid"]

# protocols.md §C.3 worked example.
EXAMPLE_TOKEN = "12345"
EXAMPLE_URL = "https://example.com/voice?foo=bar"
EXAMPLE_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+12349013030",
    "Digits": "1234",
    "From": "+12349013030",
    "To": "+18005551212",
}
EXAMPLE_SIGNATURE = "hc33LIsW/SGMH9hzD/AwO1HOgQM="

TOKEN = "0123456789abcdef0123456789abcdef"
WEBHOOK_PARAMS = {"CallSid": ["CA" + "1" * 32], "From": ["+15551230000"], "To": ["+15555550100"]}


def wire(frame: dict[str, Any]) -> str:
    """A frame as Twilio puts it on the socket: compact JSON text."""
    return json.dumps(frame, separators=(",", ":"))


def lists(params: dict[str, str]) -> dict[str, list[str]]:
    return {name: [value] for name, value in params.items()}


def twilio_sign(url: str, params: dict[str, list[str]], token: str = TOKEN) -> str:
    """The signature the real Twilio library computes for this URL and form."""
    form = MultiDict((name, value) for name, values in params.items() for value in values)
    return str(RequestValidator(token).compute_signature(url, form))


def parse_xml(text: str) -> ET.Element:
    # Parsing TwiML the code under test just produced from test values, not untrusted input.
    return ET.fromstring(text)  # noqa: S314


class TestComputeSignature:
    def test_worked_example(self) -> None:
        """The §C.3 worked example gives the documented signature, as the twilio library does."""
        ours = compute_signature(EXAMPLE_TOKEN, EXAMPLE_URL, lists(EXAMPLE_PARAMS))
        assert ours == EXAMPLE_SIGNATURE
        assert ours == RequestValidator(EXAMPLE_TOKEN).compute_signature(EXAMPLE_URL, EXAMPLE_PARAMS)

    def test_no_params(self) -> None:
        """With no params only the URL is signed (GET webhooks, media upgrades)."""
        url = "wss://gw.example.com/twilio/media"
        assert compute_signature(TOKEN, url, {}) == RequestValidator(TOKEN).compute_signature(url, {})

    def test_random_params_match_the_library(self) -> None:
        """Random forms, including multi-valued names, repeated values, unicode and empty values,
        sign exactly as the twilio library signs them."""
        rng = random.Random(3)
        alphabet = string.ascii_letters + string.digits + "+-_ .:/&=?é€"
        for _ in range(200):
            params: dict[str, list[str]] = {}
            for _ in range(rng.randrange(0, 8)):
                name = "".join(rng.choices(string.ascii_letters + "_", k=rng.randrange(1, 12)))
                values = [
                    "".join(rng.choices(alphabet, k=rng.randrange(0, 20))) for _ in range(rng.randrange(1, 4))
                ]
                if rng.random() < 0.3:
                    values.append(values[0])  # the library de-duplicates values
                params[name] = values
            token = "".join(rng.choices(string.hexdigits, k=32))
            url = f"https://gw{rng.randrange(10)}.example.com/twilio/voice?n={rng.randrange(100)}"
            assert compute_signature(token, url, params) == twilio_sign(url, params, token), params

    def test_multi_valued_order_does_not_matter(self) -> None:
        """Values of one name are signed sorted, so their arrival order does not change the signature."""
        a = compute_signature(TOKEN, EXAMPLE_URL, {"Digits": ["2", "1"], "To": ["+1"]})
        b = compute_signature(TOKEN, EXAMPLE_URL, {"To": ["+1"], "Digits": ["1", "2"]})
        assert a == b == twilio_sign(EXAMPLE_URL, {"Digits": ["1", "2"], "To": ["+1"]})


class TestSignatureMatches:
    @pytest.mark.parametrize(
        ("signed_url", "checked_url"),
        [
            ("https://gw.example.com/twilio/voice", "https://gw.example.com/twilio/voice"),
            ("https://gw.example.com:443/twilio/voice", "https://gw.example.com/twilio/voice"),
            ("https://gw.example.com/twilio/voice", "https://gw.example.com:443/twilio/voice"),
            ("http://gw.example.com:80/twilio/voice?x=1", "http://gw.example.com/twilio/voice?x=1"),
            ("http://gw.example.com/twilio/voice?x=1", "http://gw.example.com:80/twilio/voice?x=1"),
            ("https://gw.example.com:8443/twilio/voice", "https://gw.example.com:8443/twilio/voice"),
        ],
    )
    def test_accepts_with_and_without_default_port(self, signed_url: str, checked_url: str) -> None:
        """A webhook signed over the URL with or without :443/:80 is accepted against either spelling."""
        signature = twilio_sign(signed_url, WEBHOOK_PARAMS)
        assert signature_matches(TOKEN, [checked_url], WEBHOOK_PARAMS, signature)

    @pytest.mark.parametrize(
        ("signed_url", "checked_url"),
        [
            ("wss://gw.example.com/twilio/media", "wss://gw.example.com/twilio/media"),
            ("wss://gw.example.com:443/twilio/media", "wss://gw.example.com/twilio/media"),
            ("wss://gw.example.com/twilio/media", "wss://gw.example.com:443/twilio/media"),
            ("ws://127.0.0.1:80/twilio/media", "ws://127.0.0.1/twilio/media"),
        ],
    )
    def test_accepts_websocket_upgrade_urls(self, signed_url: str, checked_url: str) -> None:
        """The media upgrade (ws(s):// URL, empty params, as TAC signs it) verifies, default port or not."""
        signature = twilio_sign(signed_url, {})
        assert signature_matches(TOKEN, [checked_url], {}, signature)

    def test_non_default_port_is_significant(self) -> None:
        """Only the default port may be added or dropped: :8443 is a different URL."""
        signature = twilio_sign("https://gw.example.com/twilio/voice", WEBHOOK_PARAMS)
        assert not signature_matches(
            TOKEN, ["https://gw.example.com:8443/twilio/voice"], WEBHOOK_PARAMS, signature
        )

    def test_any_candidate_url(self) -> None:
        """The signature is accepted if it matches any of the candidate URLs."""
        signature = twilio_sign("https://gw.example.com/twilio/media", {})
        urls = ["wss://gw.example.com/twilio/media", "https://gw.example.com/twilio/media"]
        assert signature_matches(TOKEN, urls, {}, signature)

    def test_rejects_wrong_token(self) -> None:
        """A signature made with another account's token is rejected."""
        url = "https://gw.example.com/twilio/voice"
        signature = twilio_sign(url, WEBHOOK_PARAMS, token="f" * 32)
        assert not signature_matches(TOKEN, [url], WEBHOOK_PARAMS, signature)

    def test_rejects_empty_signature(self) -> None:
        """A missing (empty) header never verifies, whatever the URL and params."""
        assert not signature_matches(TOKEN, ["https://gw.example.com/twilio/voice"], WEBHOOK_PARAMS, "")
        assert not signature_matches(TOKEN, ["wss://gw.example.com/twilio/media"], {}, "")

    @pytest.mark.parametrize(
        "tamper",
        [
            lambda p: {**p, "To": ["+15555550199"]},
            lambda p: {**p, "Extra": ["1"]},
            lambda p: {k: v for k, v in p.items() if k != "From"},
            lambda p: {**p, "To": [*p["To"], "+15555550199"]},
        ],
        ids=["changed", "added", "removed", "extra-value"],
    )
    def test_rejects_tampered_params(self, tamper: Any) -> None:
        """Changing, adding or removing any form param invalidates the signature."""
        url = "https://gw.example.com/twilio/voice"
        signature = twilio_sign(url, WEBHOOK_PARAMS)
        assert signature_matches(TOKEN, [url], WEBHOOK_PARAMS, signature)
        assert not signature_matches(TOKEN, [url], tamper(WEBHOOK_PARAMS), signature)

    def test_rejects_other_url(self) -> None:
        """The URL (scheme, host, path and query) is part of what is signed."""
        signature = twilio_sign("https://gw.example.com/twilio/voice?a=1", WEBHOOK_PARAMS)
        for url in (
            "https://gw.example.com/twilio/voice?a=2",
            "https://gw.example.com/twilio/voice",
            "http://gw.example.com/twilio/voice?a=1",
            "https://evil.example.com/twilio/voice?a=1",
        ):
            assert not signature_matches(TOKEN, [url], WEBHOOK_PARAMS, signature), url

    def test_rejects_truncated_signature(self) -> None:
        """A prefix of the right signature is not accepted."""
        url = "https://gw.example.com/twilio/voice"
        signature = twilio_sign(url, WEBHOOK_PARAMS)
        assert not signature_matches(TOKEN, [url], WEBHOOK_PARAMS, signature[:-1])


class TestDecodeFrame:
    def test_connected(self) -> None:
        """`connected` decodes to Connected."""
        assert decode_frame(wire(FRAMES["connected"])) == Connected()

    def test_start(self) -> None:
        """`start` carries the call and stream ids, the media format and the custom parameters."""
        assert decode_frame(wire(FRAMES["start"])) == StreamStart(
            call_id=CALL_SID,
            stream_id=STREAM_SID,
            encoding="audio/x-mulaw",
            sample_rate_hz=8000,
            params={"agent": "receptionist", "tenant": "acme"},
        )

    def test_start_with_uuid_stream_sid(self) -> None:
        """The 2020 capture's UUID streamSid is accepted: the id format is not validated."""
        event = decode_frame(wire(FRAMES["start_2020_capture"]))
        assert isinstance(event, StreamStart)
        assert event.stream_id == "77f3a5c6-2b1e-4a3d-9c7e-5f2b8d1a6e40"
        assert event.params == {}

    def test_start_defaults_and_fallbacks(self) -> None:
        """No mediaFormat means µ-law 8 kHz; with no top-level streamSid, start.streamSid is used."""
        frame = json.loads(wire(FRAMES["start"]))
        del frame["streamSid"]
        del frame["start"]["mediaFormat"]
        del frame["start"]["customParameters"]
        assert decode_frame(wire(frame)) == StreamStart(
            call_id=CALL_SID, stream_id=STREAM_SID, encoding="audio/x-mulaw", sample_rate_hz=8000, params={}
        )

    def test_media_inbound(self) -> None:
        """Inbound media keeps its base64 payload untouched (160 bytes of µ-law per 20 ms)."""
        event = decode_frame(wire(FRAMES["media_inbound"]))
        assert event == Media(FRAMES["media_inbound"]["media"]["payload"])
        assert isinstance(event, Media)
        assert len(base64.b64decode(event.payload_b64)) == 160

    def test_media_without_track_is_inbound(self) -> None:
        """A media frame without `track` is treated as the caller's audio."""
        frame = json.loads(wire(FRAMES["media_inbound"]))
        del frame["media"]["track"]
        assert decode_frame(wire(frame)) == Media(frame["media"]["payload"])

    def test_media_outbound_ignored(self) -> None:
        """Outbound-track media (our own audio echoed back) is ignored, never fed to the model."""
        assert decode_frame(wire(FRAMES["media_outbound"])) == Ignored("media")

    def test_mark(self) -> None:
        """A mark echo carries the mark's name."""
        assert decode_frame(wire(FRAMES["mark"])) == MarkEcho("item_abc:3")

    def test_dtmf(self) -> None:
        """A DTMF frame carries the digit."""
        assert decode_frame(wire(FRAMES["dtmf"])) == Dtmf("1")

    def test_stop(self) -> None:
        """`stop` decodes to StreamStop."""
        assert decode_frame(wire(FRAMES["stop"])) == StreamStop()

    def test_unknown_event_is_reported_not_raised(self) -> None:
        """A well-formed frame with an event we do not know is Unknown with its name (counted as an
        unknown_event bad frame by the socket reader), not an error."""
        assert decode_frame(wire(FRAMES["unknown"])) == Unknown("transcription")

    def test_every_recorded_frame_decodes(self) -> None:
        """Every recorded frame decodes without error, also with Twilio's spaced JSON formatting."""
        for name, frame in FRAMES.items():
            assert decode_frame(json.dumps(frame, indent=1)) == decode_frame(wire(frame)), name

    def test_carrier_decode_is_decode_frame(self) -> None:
        """TwilioCarrier.decode is the same pure decoder."""
        assert TwilioCarrier.decode(wire(FRAMES["mark"])) == MarkEcho("item_abc:3")

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("not json", "twilio frame: not JSON"),
            ("", "twilio frame: not JSON"),
            ('{"event": "media"', "twilio frame: not JSON"),
            ("[]", "twilio frame: no event field"),
            ('"media"', "twilio frame: no event field"),
            ('{"streamSid": "MZ1"}', "twilio frame: no event field"),
            ('{"event": 5}', "twilio frame: no event field"),
            ('{"event": "media", "streamSid": "MZ1"}', "twilio media frame: missing media"),
            ('{"event": "media", "media": "AAAA"}', "twilio media frame: missing payload"),
            ('{"event": "media", "media": {"track": "inbound"}}', "twilio media frame: missing payload"),
            ('{"event": "media", "media": {"payload": 5}}', "twilio media frame: payload is not a string"),
            ('{"event": "start", "streamSid": "MZ1"}', "twilio start frame: missing start"),
            ('{"event": "start", "streamSid": "MZ1", "start": {}}', "twilio start frame: missing callSid"),
            ('{"event": "start", "streamSid": "MZ1", "start": "CA1"}', "twilio start frame: missing callSid"),
            ('{"event": "start", "start": {"callSid": "CA1"}}', "twilio start frame: missing streamSid"),
            (
                '{"event": "start", "streamSid": "MZ1", "start": {"callSid": "CA1", "mediaFormat": "ulaw"}}',
                "twilio start frame: mediaFormat is not an object",
            ),
            (
                '{"event": "start", "streamSid": "MZ1", "start": {"callSid": "CA1", '
                '"mediaFormat": {"sampleRate": "fast"}}}',
                "twilio start frame: sampleRate is not a number",
            ),
            (
                '{"event": "start", "streamSid": "MZ1", "start": {"callSid": "CA1", '
                '"mediaFormat": {"sampleRate": null}}}',
                "twilio start frame: sampleRate is not a number",
            ),
            (
                '{"event": "start", "streamSid": "MZ1", '
                '"start": {"callSid": "CA1", "customParameters": ["a"]}}',
                "twilio start frame: customParameters is not an object",
            ),
            ('{"event": "mark", "mark": {}}', "twilio mark frame: missing name"),
            ('{"event": "mark"}', "twilio mark frame: missing mark"),
            ('{"event": "dtmf", "dtmf": {"track": "inbound_track"}}', "twilio dtmf frame: missing digit"),
        ],
    )
    def test_malformed_frames(self, text: str, message: str) -> None:
        """A malformed frame raises ProtocolError (never another exception) saying what is wrong."""
        with pytest.raises(ProtocolError, match=f"^{re.escape(message)}$"):
            decode_frame(text)


class TestTwilioMediaCodec:
    @pytest.mark.parametrize("sid", [STREAM_SID, 'MZ"quoted"\\back\nslash</é\u2028'])
    def test_frames_have_exactly_the_documented_keys(self, sid: str) -> None:
        """media, mark and clear parse as JSON with exactly §C.5's keys, streamSid on all three,
        even when the streamSid needs JSON escaping."""
        codec = TwilioMediaCodec(sid)
        payload = base64.b64encode(bytes(range(256)) * 2).decode()
        assert json.loads(codec.media(payload)) == {
            "event": "media",
            "streamSid": sid,
            "media": {"payload": payload},
        }
        assert json.loads(codec.mark("item_abc:3")) == {
            "event": "mark",
            "streamSid": sid,
            "mark": {"name": "item_abc:3"},
        }
        assert json.loads(codec.clear()) == {"event": "clear", "streamSid": sid}

    def test_mark_name_escaped(self) -> None:
        """A mark name with JSON metacharacters survives the round trip."""
        name = 'a"b\\c\n'
        assert json.loads(TwilioMediaCodec(STREAM_SID).mark(name))["mark"]["name"] == name

    def test_media_frames_are_independent(self) -> None:
        """Successive media frames from one codec each carry only their own payload."""
        codec = TwilioMediaCodec(STREAM_SID)
        first, second = codec.media("AAAA"), codec.media("//8=")
        assert json.loads(first)["media"] == {"payload": "AAAA"}
        assert json.loads(second)["media"] == {"payload": "//8="}

    def test_carrier_codec_uses_the_stream_id(self) -> None:
        """TwilioCarrier.codec builds the codec for the stream announced in `start`."""
        start = decode_frame(wire(FRAMES["start"]))
        assert isinstance(start, StreamStart)
        codec = TwilioCarrier.codec(start)
        assert json.loads(codec.clear()) == {"event": "clear", "streamSid": STREAM_SID}


def shape(element: ET.Element) -> tuple[str, dict[str, str], list[Any]]:
    return element.tag, dict(element.attrib), [shape(child) for child in element]


class TestTwiml:
    def test_connect_stream_structure(self) -> None:
        """<Response><Connect><Stream url> with one <Parameter name value> per parameter, in order."""
        root = parse_xml(
            twiml_connect_stream("wss://gw.example.com/twilio/media", {"agent": "sales", "tenant": "acme"})
        )
        assert shape(root) == (
            "Response",
            {},
            [
                (
                    "Connect",
                    {},
                    [
                        (
                            "Stream",
                            {"url": "wss://gw.example.com/twilio/media"},
                            [
                                ("Parameter", {"name": "agent", "value": "sales"}, []),
                                ("Parameter", {"name": "tenant", "value": "acme"}, []),
                            ],
                        )
                    ],
                )
            ],
        )

    def test_same_shape_as_the_twilio_sdk(self) -> None:
        """Our TwiML parses to the same tree as the twilio SDK's VoiceResponse for the same stream."""
        url, params = "wss://gw.example.com/twilio/media", {"agent": "sales", "x": '<&">'}
        response, connect = VoiceResponse(), Connect()
        stream = connect.stream(url=url)
        for name, value in params.items():
            stream.parameter(name=name, value=value)
        response.append(connect)
        assert shape(parse_xml(twiml_connect_stream(url, params))) == shape(parse_xml(str(response)))

    def test_xml_declaration(self) -> None:
        """The document starts with the UTF-8 XML declaration Twilio expects."""
        assert twiml_connect_stream("wss://x/twilio/media", {}).startswith(
            '<?xml version="1.0" encoding="UTF-8"?>'
        )
        assert twiml_reject().startswith('<?xml version="1.0" encoding="UTF-8"?>')

    def test_no_parameters(self) -> None:
        """Without parameters the Stream element is empty."""
        stream = parse_xml(twiml_connect_stream("wss://gw.example.com/twilio/media", {})).find(
            "Connect/Stream"
        )
        assert stream is not None
        assert list(stream) == []

    @pytest.mark.parametrize(
        "value", ['say "hi"', "it's", "a<b>c", "x&y", "&amp;", "both \" and '", "line\nbreak\ttab"]
    )
    def test_attribute_values_escaped(self, value: str) -> None:
        """Quotes, <, >, & and whitespace in the URL, names and values survive exactly."""
        url = f"wss://gw.example.com/twilio/media?v={value}"
        root = parse_xml(twiml_connect_stream(url, {value: value}))
        stream = root.find("Connect/Stream")
        assert stream is not None
        assert stream.get("url") == url
        assert [dict(p.attrib) for p in stream] == [{"name": value, "value": value}]

    def test_injection_stays_inside_the_attribute(self) -> None:
        """A value crafted to close the tag cannot add elements to the document."""
        evil = '"/><Hangup/><Parameter name="x'
        root = parse_xml(twiml_connect_stream("wss://gw.example.com/twilio/media", {"agent": evil}))
        assert [el.tag for el in root.iter()] == ["Response", "Connect", "Stream", "Parameter"]

    def test_reject_without_reason(self) -> None:
        """twiml_reject() is a bare <Reject/> inside <Response>."""
        assert shape(parse_xml(twiml_reject())) == ("Response", {}, [("Reject", {}, [])])

    def test_reject_with_reason(self) -> None:
        """twiml_reject(reason) sets the reason attribute (e.g. busy)."""
        assert shape(parse_xml(twiml_reject("busy"))) == (
            "Response",
            {},
            [("Reject", {"reason": "busy"}, [])],
        )

    def test_reject_reason_escaped(self) -> None:
        """The reason is attribute-escaped like every other value."""
        root = parse_xml(twiml_reject('a"<&'))
        assert shape(root) == ("Response", {}, [("Reject", {"reason": 'a"<&'}, [])])

    def test_say_escapes_text(self) -> None:
        """<Say> text with markup characters is escaped and read back unchanged."""
        root = parse_xml(twiml_say("Tom & Jerry <3"))
        assert shape(root) == ("Response", {}, [("Say", {}, [])])
        assert root[0].text == "Tom & Jerry <3"
