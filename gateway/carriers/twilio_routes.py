"""aiohttp handlers for Twilio: the voice webhook (TwiML) and the Media Streams socket."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiohttp import web
from multidict import MultiDict, MultiDictProxy, MultiMapping

from gateway import keys
from gateway.bridge import CallBridge
from gateway.carriers.base import StreamStart
from gateway.carriers.forms import post_form
from gateway.carriers.inbound import FLOOD_CLOSE_MESSAGE, InboundFrames, media_socket_response
from gateway.carriers.twilio import decode_frame, twiml_connect_stream, twiml_reject
from gateway.config import GatewayConfig
from gateway.frames import FrameAudit
from gateway.services import carrier_format
from gateway.tokens import Grant

log = structlog.get_logger("gateway.twilio")

MEDIA_PATH = "/twilio/media"
START_TIMEOUT_S = 10.0
# Twilio streams 50 frames a second, silence included; this long without one means the socket is dead.


def _twiml(body: str) -> web.Response:
    return web.Response(text=body, content_type="application/xml")


def _params(form: MultiDictProxy[Any] | MultiDict[str]) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for name, value in form.items():
        if isinstance(value, str):
            params.setdefault(name, []).append(value)
    return params


def _agent_for(config: GatewayConfig, values: dict[str, str], query: MultiMapping[str]) -> str | None:
    """Inbound calls are routed by `To`. A call the gateway placed (`POST /v1/calls`) names its agent
    in the webhook URL it gave Twilio; that URL, query included, is covered by the signature (§C.3).
    The `agent` parameter is read for those calls only, so it cannot re-route an inbound call."""
    if values.get("Direction") == "outbound-api" and "agent" in query:
        agent_name = query["agent"]
        return agent_name if agent_name in config.agents else None
    return config.agent_for(values.get("To", ""))


async def voice_webhook(request: web.Request) -> web.Response:
    """Twilio's voice webhook: verify the signature, pick the agent, answer with <Connect><Stream>."""
    app = request.app
    runtime, metrics, calls = keys.runtime(app), app[keys.METRICS], app[keys.CALLS]
    config, twilio = runtime.config, runtime.twilio
    form = await post_form(request) if request.method == "POST" else MultiDict[str]()
    params = _params(form)
    if twilio.config.verify_signatures:
        url = config.server.public_url + request.raw_path
        if not twilio.verify([url], params, request.headers.get("X-Twilio-Signature", "")):
            log.warning("webhook.rejected", carrier="twilio", reason="bad_signature")
            metrics.webhook_rejections_total.labels("twilio", "bad_signature").inc()
            raise web.HTTPForbidden(text="invalid X-Twilio-Signature")
    values = {**request.query, **{k: v[0] for k, v in params.items()}}
    call_sid = values.get("CallSid", "")
    if not call_sid:
        metrics.webhook_rejections_total.labels("twilio", "malformed").inc()
        raise web.HTTPBadRequest(text="missing CallSid")
    agent_name = _agent_for(config, values, request.query)
    if agent_name is None:
        log.warning("call.rejected", carrier="twilio", reason="unrouted")
        metrics.calls_total.labels("twilio", "", "", "rejected_unrouted").inc()
        return _twiml(twiml_reject())
    agent = config.agents[agent_name]
    # While draining, only a call already held goes on: a call this gateway dialed, now answered.
    if not calls.reserve(call_sid, new_calls=app[keys.STATE].accepting):
        log.warning("call.rejected", carrier="twilio", reason="busy", agent=agent_name)
        metrics.calls_total.labels("twilio", agent_name, agent.engine, "rejected_busy").inc()
        return _twiml(twiml_reject("busy"))
    log.info("call.accepted", carrier="twilio", agent=agent_name, call_id=call_sid)
    media_url = config.server.media_base_url + MEDIA_PATH
    # The token binds the media stream to this verified webhook: a replayed upgrade signature
    # (it is the same for every call) cannot open a stream for a call we did not just answer.
    parameters = {"agent": agent_name, "token": app[keys.TOKENS].issue("twilio", call_sid, agent_name)}
    return _twiml(twiml_connect_stream(media_url, parameters))


def _upgrade_urls(request: web.Request, media_base_url: str) -> list[str]:
    # Twilio's own server code signs wss://host/path with empty params; accept the https:// spelling
    # and the query-string variant too (protocols.md §C.3).
    urls = [media_base_url + request.path]
    if request.query_string:
        urls.append(media_base_url + request.raw_path)
    if media_base_url.startswith("wss://"):
        urls.append("https" + media_base_url[3:] + request.path)
    return urls


async def _read_start(frames: InboundFrames) -> StreamStart | None:
    """The `start` frame (after `connected`); None when the socket ends first. Bad frames before it
    are counted and skipped (InboundFrames); only START_TIMEOUT_S bounds the wait."""
    async with asyncio.timeout(START_TIMEOUT_S):
        while (event := await frames.next_event()) is not None:
            if isinstance(event, StreamStart):
                return event
    return None


async def _reject(ws: web.WebSocketResponse, request: web.Request, reason: str, message: str) -> None:
    log.warning("media.rejected", carrier="twilio", reason=reason)
    request.app[keys.METRICS].webhook_rejections_total.labels("twilio", reason).inc()
    await ws.close(code=1008, message=message.encode())


async def media_socket(request: web.Request) -> web.WebSocketResponse:
    """Twilio Media Streams: verify the upgrade, read `start`, hand the call to a CallBridge."""
    app = request.app
    runtime = keys.runtime(app)
    config, twilio = runtime.config, runtime.twilio
    limits = config.server.limits
    ws = media_socket_response(limits)
    await ws.prepare(request)
    verify = twilio.config.verify_signatures
    if verify:
        signature = request.headers.get("X-Twilio-Signature", "")
        if not twilio.verify(_upgrade_urls(request, config.server.media_base_url), {}, signature):
            await _reject(ws, request, "bad_signature", "invalid X-Twilio-Signature")
            return ws
    audit = FrameAudit(app[keys.METRICS], limits.bad_frame_log_interval_s)
    frames = InboundFrames(ws, "twilio", decode_frame, limits, audit)
    try:
        start = await _read_start(frames)
    except TimeoutError:
        log.warning("media.no_start", carrier="twilio", error="timeout")
        await _reject(ws, request, "no_start", "expected a start frame")
        return ws
    finally:
        audit.flush()
    if start is None:
        if frames.ended_by != "closed":  # flooded, or a frame the socket could not take
            log.warning("media.no_start", carrier="twilio", error=frames.ended_by)
            message = FLOOD_CLOSE_MESSAGE if frames.ended_by == "flood" else "expected a start frame"
            await _reject(ws, request, "no_start", message)
        return ws
    agent_name = start.params.get("agent", "")
    if verify:
        grant = app[keys.TOKENS].redeem(start.params.get("token", ""), "twilio", start.call_id)
        if not isinstance(grant, Grant):
            await _reject(ws, request, f"token_{grant}", f"stream token {grant}")
            return ws
        agent_name = grant.agent
    if carrier_format(start.encoding) is None:
        await _reject(ws, request, "unsupported_codec", f"unsupported codec {start.encoding}")
        return ws
    # The call starts now, so it runs on the config of now: a reload since the webhook applies to it.
    runtime = keys.runtime(app)
    agent = runtime.config.agents.get(agent_name)
    if agent is None:  # the config was reloaded without this agent
        await _reject(ws, request, "unknown_agent", "unknown agent")
        return ws
    bridge = CallBridge(
        carrier=runtime.twilio,
        ws=ws,
        start=start,
        agent_name=agent_name,
        agent=agent,
        services=runtime.services,
    )
    await bridge.run()
    return ws


def add_routes(app: web.Application) -> None:
    app.router.add_route("POST", "/twilio/voice", voice_webhook)
    app.router.add_route("GET", "/twilio/voice", voice_webhook)
    app.router.add_get(MEDIA_PATH, media_socket)
