"""aiohttp handlers for Telnyx: TeXML (`/telnyx/voice`), Call Control (`/telnyx/events`) and the media
socket (`/telnyx/media/{token}`).

Telnyx does not sign the media upgrade, so the stream URL handed out by a verified webhook carries a
single-use, short-lived token naming the call; a socket without a good one is closed with 1008 before
any model socket is opened.
"""

from __future__ import annotations

import asyncio
import json
import time

import structlog
from aiohttp import WSMsgType, web

from gateway import keys
from gateway.bridge import CallBridge
from gateway.carriers.base import StreamStart
from gateway.carriers.telnyx import decode_frame, signature_problem, texml_connect_stream, texml_reject
from gateway.errors import ProtocolError
from gateway.tokens import Grant

log = structlog.get_logger("gateway.telnyx")

MEDIA_PREFIX = "/telnyx/media/"
START_TIMEOUT_S = 10.0
MEDIA_IDLE_TIMEOUT_S = 15.0  # Telnyx streams RTP continuously, silence included
MAX_FRAME_BYTES = 1024 * 1024


async def _verified_body(request: web.Request) -> bytes:
    """The raw body, after checking its Ed25519 signature (when verification is on): 403 otherwise."""
    body = await request.read()
    telnyx = request.app[keys.TELNYX]
    if telnyx.config.verify_signatures:
        problem = signature_problem(
            telnyx.public_key,
            request.headers,
            body,
            now=time.time(),
            tolerance_s=telnyx.config.webhook_tolerance_s,
        )
        if problem is not None:
            log.warning("webhook.rejected", carrier="telnyx", reason=problem)
            request.app[keys.METRICS].webhook_rejections_total.labels("telnyx", problem).inc()
            raise web.HTTPForbidden(text=f"telnyx signature: {problem}")
    return body


def _admit(request: web.Request, call_id: str, to: str) -> tuple[str | None, str | None]:
    """(agent, None) for a call to take, or (None, reason) with reason `unrouted` or `busy`."""
    app = request.app
    config, metrics = app[keys.CONFIG], app[keys.METRICS]
    agent_name = config.agent_for(to)
    if agent_name is None:
        log.warning("call.rejected", carrier="telnyx", reason="unrouted")
        metrics.calls_total.labels("telnyx", "", "", "rejected_unrouted").inc()
        return None, "unrouted"
    if not app[keys.STATE].accepting or not app[keys.CALLS].reserve(call_id):
        log.warning("call.rejected", carrier="telnyx", reason="busy", agent=agent_name)
        engine = config.agents[agent_name].engine
        metrics.calls_total.labels("telnyx", agent_name, engine, "rejected_busy").inc()
        return None, "busy"
    log.info("call.accepted", carrier="telnyx", agent=agent_name, call_id=call_id)
    return agent_name, None


def _stream_url(request: web.Request, call_id: str, agent_name: str) -> str:
    token = request.app[keys.TOKENS].issue("telnyx", call_id, agent_name)
    return request.app[keys.CONFIG].server.media_base_url + MEDIA_PREFIX + token


async def texml_webhook(request: web.Request) -> web.Response:
    """TeXML instruction fetch (GET by default, or POST): answer <Connect><Stream> in rtp mode."""
    await _verified_body(request)
    params: dict[str, str] = dict(request.query)
    if request.method == "POST":
        params.update((k, v) for k, v in (await request.post()).items() if isinstance(v, str))
    call_id = params.get("CallSid", "")
    if not call_id:
        request.app[keys.METRICS].webhook_rejections_total.labels("telnyx", "malformed").inc()
        raise web.HTTPBadRequest(text="missing CallSid")
    agent_name, reason = _admit(request, call_id, params.get("To", ""))
    if agent_name is None:
        return web.Response(
            text=texml_reject("busy" if reason == "busy" else None), content_type="application/xml"
        )
    codec = request.app[keys.TELNYX].config.codec
    texml = texml_connect_stream(_stream_url(request, call_id, agent_name), codec)
    return web.Response(text=texml, content_type="application/xml")


async def call_control_webhook(request: web.Request) -> web.Response:
    """Call Control events: answer `call.initiated` with streaming; 200 for everything else."""
    body = await _verified_body(request)
    try:
        envelope = json.loads(body)
        data = envelope["data"]
        event_type, payload = str(data["event_type"]), data.get("payload") or {}
        call_id = str(payload.get("call_control_id", ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        request.app[keys.METRICS].webhook_rejections_total.labels("telnyx", "malformed").inc()
        raise web.HTTPBadRequest(text="not a Telnyx webhook envelope") from None
    if event_type == "call.initiated" and payload.get("direction", "incoming") == "incoming" and call_id:
        await _answer(request, call_id, str(payload.get("to", "")))
    elif event_type == "call.hangup" and call_id:
        request.app[keys.CALLS].release(call_id)
        log.info(
            "carrier.call_hangup",
            carrier="telnyx",
            call_id=call_id,
            cause=str(payload.get("hangup_cause", "")),
        )
    return web.json_response({"ok": True})


async def _answer(request: web.Request, call_id: str, to: str) -> None:
    telnyx = request.app[keys.TELNYX]
    agent_name, reason = _admit(request, call_id, to)
    if agent_name is None:
        await telnyx.action(
            call_id, "reject", {"cause": "USER_BUSY" if reason == "busy" else "CALL_REJECTED"}
        )
        return
    codec = telnyx.config.codec
    answered = await telnyx.action(
        call_id,
        "answer",
        {
            "stream_url": _stream_url(request, call_id, agent_name),
            "stream_track": "inbound_track",
            "stream_codec": codec,
            # Without rtp, Telnyx treats what we send as mp3 files and the caller hears nothing (§F).
            "stream_bidirectional_mode": "rtp",
            "stream_bidirectional_codec": codec,
        },
    )
    if not answered:
        request.app[keys.CALLS].release(call_id)


async def _read_start(ws: web.WebSocketResponse) -> StreamStart | None:
    async with asyncio.timeout(START_TIMEOUT_S):
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                continue
            event = decode_frame(message.data)
            if isinstance(event, StreamStart):
                return event
    return None


async def _reject(
    ws: web.WebSocketResponse, request: web.Request, reason: str, message: str
) -> web.WebSocketResponse:
    log.warning("media.rejected", carrier="telnyx", reason=reason)
    request.app[keys.METRICS].webhook_rejections_total.labels("telnyx", reason).inc()
    await ws.close(code=1008, message=message.encode())
    return ws


async def media_socket(request: web.Request) -> web.WebSocketResponse:
    """Telnyx media streaming: redeem the URL's token, read `start`, hand the call to a CallBridge."""
    app = request.app
    ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, receive_timeout=MEDIA_IDLE_TIMEOUT_S)
    await ws.prepare(request)
    grant = app[keys.TOKENS].redeem(request.match_info.get("token", ""), "telnyx")
    if not isinstance(grant, Grant):
        return await _reject(ws, request, f"token_{grant}", f"stream token {grant}")
    try:
        start = await _read_start(ws)
    except (TimeoutError, ProtocolError) as exc:
        log.warning("media.no_start", carrier="telnyx", error=str(exc) or "timeout")
        return await _reject(ws, request, "no_start", "expected a start frame")
    if start is None:
        return ws
    if start.call_id != grant.call_id:
        return await _reject(ws, request, "token_wrong_call", "stream token wrong_call")
    agent = app[keys.CONFIG].agents.get(grant.agent)
    if agent is None:  # the config was reloaded without this agent
        return await _reject(ws, request, "unknown_agent", "unknown agent")
    bridge = CallBridge(
        carrier=app[keys.TELNYX],
        ws=ws,
        start=start,
        agent_name=grant.agent,
        agent=agent,
        engines=app[keys.ENGINES],
        registry=app[keys.CALLS],
        metrics=app[keys.METRICS],
        prices=app[keys.PRICES],
    )
    await bridge.run()
    return ws


def add_routes(app: web.Application) -> None:
    app.router.add_route("GET", "/telnyx/voice", texml_webhook)
    app.router.add_route("POST", "/telnyx/voice", texml_webhook)
    app.router.add_post("/telnyx/events", call_control_webhook)
    app.router.add_get(MEDIA_PREFIX + "{token}", media_socket)
    app.router.add_get(MEDIA_PREFIX.rstrip("/"), media_socket)  # no token: refused as `missing`
