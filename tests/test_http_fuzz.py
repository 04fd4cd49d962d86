"""Fuzzing every HTTP endpoint of a real gateway: random methods, paths, queries, headers and bodies,
unsigned or correctly signed (so garbage also reaches the parsing behind the signature checks).

The gateway must answer every one of them without a 5xx, and keep serving: /healthz after each
request, and a real call end to end once the fuzzing is over.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, urlencode

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from tests.conftest import TEXML_SECRET, Gateway, StartGateway
from tests.fakes.signals import tone_ulaw

ADMIN_TOKEN = "admin-test-token"
PATHS = [
    "/twilio/voice",
    "/twilio/media",
    "/telnyx/voice",
    "/telnyx/events",
    "/telnyx/media",
    "/telnyx/media/x",
    "/v1/calls",
    "/calls",
    "/healthz",
    "/readyz",
    "/metrics",
    "/",
    "/nowhere",
]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
# (method, path, auth, content type) of requests each route accepts, so that half the examples get
# past the signature and token checks to the parsing behind them.
ROUTES = [
    ("POST", "/twilio/voice", "twilio", "application/x-www-form-urlencoded"),
    ("GET", "/twilio/voice", "twilio", None),
    ("POST", "/telnyx/voice", "telnyx", "application/x-www-form-urlencoded"),
    ("GET", "/telnyx/voice", "texml_secret", None),
    ("POST", "/telnyx/events", "telnyx", "application/json"),
    ("POST", "/v1/calls", "admin", "application/json"),
    ("GET", "/calls", "admin", None),
    ("GET", "/healthz", "none", None),
    ("GET", "/readyz", "none", None),
    ("GET", "/metrics", "none", None),
]
# Header values as a carrier, a proxy or an attacker could send them (no CR/LF: the client refuses).
header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40
)
HEADERS = [
    "Content-Type",
    "Authorization",
    "X-Twilio-Signature",
    "telnyx-signature-ed25519",
    "telnyx-timestamp",
    "Accept",
    "Accept-Encoding",
    "Cookie",
    "Origin",
    "X-Forwarded-For",
    "X-Forwarded-Proto",
    "Upgrade",
    "Connection",
    "Sec-WebSocket-Version",
]
CONTENT_TYPES = [
    "application/x-www-form-urlencoded",
    "application/json",
    "multipart/form-data; boundary=xyz",
    "multipart/form-data",
    "text/plain",
    "application/octet-stream",
    "application/x-www-form-urlencoded; charset=utf-16",
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)
form_fields = st.dictionaries(
    st.sampled_from(["CallSid", "To", "From", "Direction", "AccountSid", "CallStatus"]) | st.text(max_size=8),
    st.text(max_size=30),
    max_size=6,
)
# Bodies that broke (or could break) a parser: too deep for json.loads, multipart without its
# boundary, an undecodable charset's worth of bytes, envelopes with the wrong types inside.
HOSTILE_BODIES = [
    b"",
    b"[" * 50_000,
    b'{"data": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    b'{"agent": "receptionist", "to": "+15555550100", "from": "+15555550111"}',
    b'{"agent": ' + b"[" * 5_000 + b"]" * 5_000 + b"}",
    b'{"data": {"event_type": "call.initiated", "payload": {"call_control_id": 5}}}',
    b'{"data": {"event_type": "call.hangup", "payload": []}}',
    b'{"data": {"event_type": ' + b"[" * 5_000 + b"]" * 5_000 + b"}}",
    b"--xyz\r\nContent-Disposition: form-data\r\n\r\nabc\r\n--xyz",
    b'--xyz\r\nContent-Disposition: form-data; name="CallSid"\r\n\r\nCA1\r\n--xyz--\r\n',
    b"CallSid=%ZZ&To=%",
    b"\xff\xfe\x00garbage",
    "CallSid=CA1&To=+15555550100&From=\u00e9".encode("utf-16"),
]
bodies = st.one_of(
    st.sampled_from(HOSTILE_BODIES),
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    form_fields.map(lambda f: urlencode(f).encode()),
)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    """One request: method, path (+ query), headers, body, and how it is signed (`auth`).

    Half aim at a route the way it is meant to be called (method, signature or token, content type)
    with a hostile body or query; the other half are random in every respect.
    """
    query = draw(st.dictionaries(st.text(max_size=8), st.text(max_size=16), max_size=3))
    headers = draw(st.dictionaries(st.sampled_from(HEADERS), header_text, max_size=4))
    if draw(st.booleans()):
        method, path, auth, content_type = draw(st.sampled_from(ROUTES))
        headers.pop("Authorization", None)
        if content_type is not None:
            headers["Content-Type"] = content_type
        if auth == "texml_secret":
            query["secret"] = TEXML_SECRET
    else:
        method = draw(st.sampled_from(METHODS))
        path = draw(st.sampled_from(PATHS) | st.text(max_size=20).map(lambda t: "/" + t))
        auth = draw(st.sampled_from(["none", "admin", "twilio", "telnyx"]))
        if draw(st.booleans()):
            headers["Content-Type"] = draw(st.sampled_from(CONTENT_TYPES))
    return {
        "method": method,
        "path": path,
        "query": query,
        "headers": headers,
        "body": draw(bodies),
        "auth": auth,
    }


def sign(gw: Gateway, request: dict[str, Any], url: URL) -> dict[str, str]:
    """Headers that make the request authentic for the route it aims at (when it can be)."""
    headers = dict(request["headers"])
    if request["auth"] == "admin":
        headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
    elif request["auth"] == "twilio":
        public = gw.config.server.public_url + url.raw_path_qs
        params: dict[str, str] = {}
        if request["method"] == "POST" and headers.get("Content-Type") == "application/x-www-form-urlencoded":
            try:
                params = dict(parse_qsl(request["body"].decode(), keep_blank_values=True))
            except (UnicodeDecodeError, ValueError):
                params = {}
        headers["X-Twilio-Signature"] = gw.twilio.validator.compute_signature(public, params)
    elif request["auth"] == "telnyx":
        timestamp = str(int(time.time()))
        headers["telnyx-timestamp"] = timestamp
        headers["telnyx-signature-ed25519"] = gw.telnyx.keys.sign(timestamp, request["body"])
    return headers


@pytest.fixture
async def fuzzed(start_gateway: StartGateway) -> AsyncIterator[Gateway]:
    """A gateway with every route switched on; after the fuzzing, a real call must still work."""
    gw = await start_gateway(
        server={
            "host": "127.0.0.1",
            "port": 1,
            "public_url": "http://127.0.0.1:1",
            "admin_token": ADMIN_TOKEN,
            "max_concurrent_calls": 1000,
        },
        allowed_outbound_prefixes=["+1555"],
        agent={"audio": "g711"},
    )
    yield gw
    # Still serving calls: webhook, media stream, audio both ways.
    call = await gw.twilio.call()
    model = await gw.model.next_connection()
    await call.send_audio(tone_ulaw(200))
    await model.wait_audio(1600)
    await model.speak(b"\x55" * 800, chunk_bytes=400)
    await call.wait_audio(800)
    await call.stop()
    await call.wait_closed()


class TestHttpFuzz:
    @settings(
        max_examples=300,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(request=requests())
    async def test_no_request_gets_a_5xx_and_the_gateway_keeps_serving(
        self, fuzzed: Gateway, request: dict[str, Any]
    ) -> None:
        """Whatever the method, path, headers, body or signature, the answer is below 500 and
        /healthz still answers 200 right after it."""
        url = URL(fuzzed.url).with_path(request["path"]).with_query(request["query"])
        headers = sign(fuzzed, request, url)
        async with fuzzed.http.request(
            request["method"],
            url,
            data=request["body"],
            headers=headers,
            skip_auto_headers=["Content-Type"],
            timeout=aiohttp.ClientTimeout(total=5),
        ) as response:
            await response.read()
            assert response.status < 500, (response.status, request["method"], request["path"])
        async with fuzzed.http.get(fuzzed.url + "/healthz") as health:
            assert health.status == 200


class TestHostileBodies:
    @pytest.mark.parametrize("route", [r for r in ROUTES if r[0] == "POST"], ids=lambda r: r[1])
    async def test_authentic_requests_with_hostile_bodies_get_a_4xx_or_an_answer(
        self,
        start_gateway: StartGateway,
        route: tuple[str, str, str, str],
    ) -> None:
        """Every POST route, correctly signed or authorised, answers each hostile body without a 5xx
        (the fuzz found multipart garbage and deep JSON turning into 500s)."""
        method, path, auth, content_type = route
        gw = await start_gateway(
            server={
                "host": "127.0.0.1",
                "port": 1,
                "public_url": "http://127.0.0.1:1",
                "admin_token": ADMIN_TOKEN,
            },
            allowed_outbound_prefixes=["+1555"],
        )
        content_types = (
            content_type,
            "multipart/form-data; boundary=xyz",
            "application/x-www-form-urlencoded; charset=utf-16",
        )
        for body, ctype in itertools.product(HOSTILE_BODIES, content_types):
            request = {
                "method": method,
                "path": path,
                "query": {},
                "headers": {"Content-Type": ctype},
                "body": body,
                "auth": auth,
            }
            url = URL(gw.url).with_path(path)
            async with gw.http.post(url, data=body, headers=sign(gw, request, url)) as response:
                assert response.status < 500, (response.status, ctype, body[:80])
