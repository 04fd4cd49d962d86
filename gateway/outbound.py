"""`POST /v1/calls`: place an outbound call through Twilio or Telnyx and bridge it to an agent.

A leaked admin token must not become a way to dial premium numbers, so a call needs three things:
the bearer `server.admin_token` (without one configured the route does not exist), E.164 numbers, and
a `to` under `allowed_outbound_prefixes`, which is empty by default: nothing is dialled until an
operator opts in. Phone numbers are never logged.

Once the callee answers, the call is handled exactly like an inbound one. Twilio fetches the voice
webhook from a URL naming the agent (the signature covers it); Telnyx reports `call.answered`, and
the gateway starts the media stream for the agent it remembered at dial time.
"""

from __future__ import annotations

import hmac
import json
import uuid
from typing import Any, Literal
from urllib.parse import urlencode

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway import keys
from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.schema import E164

log = structlog.get_logger("gateway.outbound")

ROUTE = "/v1/calls"
CarrierName = Literal["twilio", "telnyx"]
CARRIERS: tuple[CarrierName, ...] = ("twilio", "telnyx")


class DialRequest(BaseModel):
    """The JSON body of `POST /v1/calls`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent: str
    to: str
    from_: str = Field(alias="from")
    carrier: str | None = None  # may be left out when only one carrier is configured


class Refused(GatewayError):
    """A request the gateway will not dial; becomes `{"error", "field"}` with `status`."""

    def __init__(
        self, status: int, reason: str, error: str, field: str | None = None, **extra: object
    ) -> None:
        self.status = status
        self.reason = reason  # a short, static label for the log line
        self.error = error
        self.field = field
        self.extra = extra
        super().__init__(error)

    def response(self) -> web.Response:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        body = {"error": self.error, "field": self.field, **self.extra}
        return web.json_response(body, status=self.status, headers=headers)


def _authorize(request: web.Request) -> None:
    token = keys.runtime(request.app).config.server.admin_token
    if token is None:
        raise Refused(404, "disabled", "POST /v1/calls is disabled: set server.admin_token to enable it")
    expected = f"Bearer {token.get_secret_value()}".encode()
    if not hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected):
        raise Refused(401, "unauthorized", "missing or wrong bearer token")


def _parse(raw: bytes) -> DialRequest:
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than json.loads follows
        raise Refused(400, "bad_body", "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise Refused(400, "bad_body", "the body must be a JSON object")
    try:
        return DialRequest.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else None
        message = {"missing": "required", "extra_forbidden": "unknown field"}.get(error["type"], error["msg"])
        raise Refused(400, "bad_body", f"{field}: {message}", field) from None


def pick_carrier(config: GatewayConfig, requested: str | None) -> CarrierName:
    """The carrier to dial through: the one asked for, or the only one configured."""
    configured = [name for name in CARRIERS if getattr(config.carriers, name) is not None]
    if requested is None:
        if len(configured) == 1:
            return configured[0]
        raise Refused(
            400, "bad_carrier", "carrier: required when more than one carrier is configured", "carrier"
        )
    for name in configured:
        if requested == name:
            return name
    if requested in CARRIERS:
        error = f"carrier: {requested} is not configured (carriers.{requested})"
    else:
        error = f"carrier: unknown carrier, use one of {', '.join(configured)}"
    raise Refused(400, "bad_carrier", error, "carrier")


def _check(config: GatewayConfig, dial: DialRequest) -> CarrierName:
    """Every check made before anything is dialled: agent, carrier, numbers, prefixes; the carrier."""
    if dial.agent not in config.agents:
        raise Refused(400, "unknown_agent", "agent: no agent of that name under agents", "agent")
    carrier = pick_carrier(config, dial.carrier)
    for field, number in (("to", dial.to), ("from", dial.from_)):
        if not E164.match(number):
            raise Refused(400, "bad_number", f"{field}: must be an E.164 number such as +15551230000", field)
    prefixes = config.allowed_outbound_prefixes
    if not prefixes:
        hint = 'list the prefixes they may dial in allowed_outbound_prefixes, e.g. ["+1555"]'
        raise Refused(403, "outbound_disabled", f"outbound calls are disabled: {hint}")
    if not any(dial.to.startswith(prefix) for prefix in prefixes):
        raise Refused(403, "prefix_not_allowed", "to: not under allowed_outbound_prefixes", "to")
    if carrier == "telnyx":
        _connection_id(config)
    return carrier


def _connection_id(config: GatewayConfig) -> str:
    telnyx = config.carriers.telnyx
    if telnyx is None or not telnyx.connection_id:
        error = "carrier: set carriers.telnyx.connection_id (the Call Control application that dials)"
        raise Refused(400, "telnyx_connection_unset", error, "carrier")
    return telnyx.connection_id


def _carrier_error(body: dict[str, Any]) -> tuple[object, object]:
    """(code, message) from a Twilio (`code`, `message`) or Telnyx (`errors[0]`) error body."""
    errors = body.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        return first.get("code"), first.get("detail") or first.get("title")
    return body.get("code"), body.get("message")


async def _dial(app: web.Application, carrier: CarrierName, dial: DialRequest) -> str:
    """Ask the carrier to place the call; its call id, or Refused(502) naming the carrier's status."""
    runtime = keys.runtime(app)
    config = runtime.config
    if carrier == "twilio":
        query = urlencode({"agent": dial.agent})
        url = f"{config.server.public_url}/twilio/voice?{query}"
        status, body = await runtime.twilio.create_call(dial.to, dial.from_, url)
        call_id = body.get("sid")
    else:
        connection_id = _connection_id(config)
        status, body = await runtime.telnyx.dial(dial.to, dial.from_, connection_id)
        data = body.get("data")
        call_id = data.get("call_control_id") if isinstance(data, dict) else None
    if 200 <= status < 300 and isinstance(call_id, str) and call_id:
        return call_id
    code, message = _carrier_error(body)
    if status == 0:
        error = f"{carrier} did not answer"
    elif 200 <= status < 300:
        error = f"{carrier} answered without a call id"
    else:
        error = f"{carrier} refused the call ({status}): {str(message or 'no message')[:300]}"
    # The carrier's message may quote the numbers: it goes back to the API's caller, never to the log
    # (the log line has only the status and code, as `extra`).
    raise Refused(502, "carrier_failed", error, carrier_status=status or None, carrier_code=code)


async def place_call(request: web.Request) -> web.Response:
    """`POST /v1/calls` `{agent, to, from, carrier}` → 201 `{call_id, carrier, agent}`."""
    app = request.app
    try:
        _authorize(request)
        dial = _parse(await request.read())
        carrier = _check(keys.runtime(app).config, dial)
        call_id = await _place(app, carrier, dial)
    except Refused as exc:
        log.warning("outbound.refused", reason=exc.reason, field=exc.field, status=exc.status, **exc.extra)
        return exc.response()
    log.info("outbound.placed", carrier=carrier, agent=dial.agent, call_id=call_id)
    return web.json_response({"call_id": call_id, "carrier": carrier, "agent": dial.agent}, status=201)


async def _place(app: web.Application, carrier: CarrierName, dial: DialRequest) -> str:
    calls = app[keys.CALLS]
    if not app[keys.STATE].accepting:
        raise Refused(503, "draining", "the gateway is shutting down")
    # The call's id is only known from the carrier's answer, so a stand-in holds its place while the
    # carrier is asked: a burst of requests cannot dial more calls than the gateway can take.
    stand_in = f"dialing:{uuid.uuid4().hex}"
    if not calls.reserve(stand_in):
        raise Refused(503, "full", "the gateway is full (server.max_concurrent_calls)")
    try:
        call_id = await _dial(app, carrier, dial)
    finally:
        calls.release(stand_in)
    # No await since the stand-in was released, so its place is still free for the real call. The
    # carrier's webhook for the call then finds it held (reserve() is True for a call already held).
    calls.reserve(call_id)
    if carrier == "telnyx":
        keys.runtime(app).telnyx.dialed.remember(call_id, dial.agent)
    return call_id


def add_routes(app: web.Application) -> None:
    app.router.add_post(ROUTE, place_call)
