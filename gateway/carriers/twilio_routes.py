"""aiohttp handlers for Twilio: the voice webhook (TwiML) and the Media Streams socket."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiohttp import WSMsgType, web
from multidict import MultiDict, MultiDictProxy

from gateway import keys
from gateway.bridge import CallBridge
from gateway.carriers.base import StreamStart
from gateway.carriers.twilio import decode_frame, twiml_connect_stream, twiml_reject
from gateway.errors import ProtocolError

log = structlog.get_logger("gateway.twilio")

MEDIA_PATH = "/twilio/media"
START_TIMEOUT_S = 10.0
MAX_FRAME_BYTES = 1024 * 1024


def _twiml(body: str) -> web.Response:
    return web.Response(text=body, content_type="application/xml")


def _params(form: MultiDictProxy[Any] | MultiDict[str]) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for name, value in form.items():
        if isinstance(value, str):
            params.setdefault(name, []).append(value)
    return params


async def voice_webhook(request: web.Request) -> web.Response:
    """Twilio's voice webhook: verify the signature, pick the agent, answer with <Connect><Stream>."""
    app = request.app
    config, metrics, twilio, calls = app[keys.CONFIG], app[keys.METRICS], app[keys.TWILIO], app[keys.CALLS]
    form = await request.post() if request.method == "POST" else MultiDict[str]()
    params = _params(form)
    if twilio.config.verify_signatures:
        url = config.server.public_url + request.raw_path
        if not twilio.verify([url], params, request.headers.get("X-Twilio-Signature", "")):
            log.warning("webhook.rejected", carrier="twilio", reason="bad_signature")
            metrics.webhooks_total.labels("twilio", "voice", "bad_signature").inc()
            raise web.HTTPForbidden(text="invalid X-Twilio-Signature")
    values = {**{k: v[0] for k, v in params.items()}}
    to = values.get("To") or request.query.get("To", "")
    agent_name = config.agent_for(to)
    metrics.webhooks_total.labels("twilio", "voice", "ok").inc()
    if agent_name is None:
        log.warning("call.rejected", carrier="twilio", reason="unrouted")
        metrics.calls_total.labels("twilio", "", "", "rejected_unrouted").inc()
        return _twiml(twiml_reject())
    agent = config.agents[agent_name]
    if calls.full or not app[keys.STATE].accepting:
        log.warning("call.rejected", carrier="twilio", reason="busy", agent=agent_name)
        metrics.calls_total.labels("twilio", agent_name, agent.engine, "rejected_busy").inc()
        return _twiml(twiml_reject("busy"))
    log.info("call.accepted", carrier="twilio", agent=agent_name)
    media_url = config.server.media_base_url + MEDIA_PATH
    return _twiml(twiml_connect_stream(media_url, {"agent": agent_name}))


def _upgrade_urls(request: web.Request, media_base_url: str) -> list[str]:
    # Twilio's own server code signs wss://host/path with empty params; accept the https:// spelling
    # and the query-string variant too (protocols.md §C.3).
    urls = [media_base_url + request.path]
    if request.query_string:
        urls.append(media_base_url + request.raw_path)
    https = "https" + media_base_url[3:] if media_base_url.startswith("wss") else None
    if https:
        urls.append(https + request.path)
    return urls


async def _read_start(ws: web.WebSocketResponse) -> StreamStart | None:
    async with asyncio.timeout(START_TIMEOUT_S):
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                continue
            event = decode_frame(message.data)
            if isinstance(event, StreamStart):
                return event
    return None


async def media_socket(request: web.Request) -> web.WebSocketResponse:
    """Twilio Media Streams: verify the upgrade, read `start`, hand the call to a CallBridge."""
    app = request.app
    config, metrics, twilio = app[keys.CONFIG], app[keys.METRICS], app[keys.TWILIO]
    ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, heartbeat=None)
    await ws.prepare(request)
    if twilio.config.verify_signatures:
        signature = request.headers.get("X-Twilio-Signature", "")
        if not twilio.verify(_upgrade_urls(request, config.server.media_base_url), {}, signature):
            log.warning("media.rejected", carrier="twilio", reason="bad_signature")
            metrics.webhooks_total.labels("twilio", "media", "bad_signature").inc()
            await ws.close(code=1008, message=b"invalid X-Twilio-Signature")
            return ws
    metrics.webhooks_total.labels("twilio", "media", "ok").inc()
    try:
        start = await _read_start(ws)
    except (TimeoutError, ProtocolError) as exc:
        log.warning("media.rejected", carrier="twilio", reason="no_start", error=str(exc) or "timeout")
        await ws.close(code=1008, message=b"expected a start frame")
        return ws
    if start is None:
        return ws
    agent_name = start.params.get("agent", "")
    agent = config.agents.get(agent_name)
    if agent is None:
        log.warning("media.rejected", carrier="twilio", reason="unknown_agent")
        await ws.close(code=1008, message=b"unknown agent")
        return ws
    bridge = CallBridge(
        carrier=twilio,
        ws=ws,
        start=start,
        agent_name=agent_name,
        agent=agent,
        engines=app[keys.ENGINES],
        registry=app[keys.CALLS],
        metrics=metrics,
    )
    await bridge.run()
    return ws


def add_routes(app: web.Application) -> None:
    app.router.add_route("POST", "/twilio/voice", voice_webhook)
    app.router.add_route("GET", "/twilio/voice", voice_webhook)
    app.router.add_get(MEDIA_PATH, media_socket)
