"""aiohttp handlers for Telnyx: TeXML (`/telnyx/voice`), Call Control (`/telnyx/events`) and the media
socket (`/telnyx/media/{token}`).

Telnyx does not sign the media upgrade, so the stream URL handed out by a verified webhook carries a
single-use, short-lived token naming the call; a socket without a good one is closed with 1008 before
any model socket is opened.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import time

import structlog
from aiohttp import web

from gateway import keys
from gateway.bridge import CallBridge
from gateway.carriers.base import StreamStart
from gateway.carriers.forms import post_form
from gateway.carriers.inbound import FLOOD_CLOSE_MESSAGE, InboundFrames, media_socket_response
from gateway.carriers.telnyx import (
    ActionResult,
    decode_frame,
    signature_problem,
    texml_connect_stream,
    texml_reject,
)
from gateway.frames import FrameAudit
from gateway.services import carrier_format
from gateway.tokens import Grant

log = structlog.get_logger("gateway.telnyx")

MEDIA_PREFIX = "/telnyx/media/"
START_TIMEOUT_S = 10.0


async def _verified_body(request: web.Request) -> bytes:
    """The raw body, after checking its Ed25519 signature (when verification is on): 403 otherwise."""
    body = await request.read()
    telnyx = keys.runtime(request.app).telnyx
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
    config, metrics = keys.runtime(app).config, app[keys.METRICS]
    agent_name = config.agent_for(to)
    if agent_name is None:
        log.warning("call.rejected", carrier="telnyx", reason="unrouted")
        metrics.calls_total.labels("telnyx", "", "", "rejected_unrouted").inc()
        return None, "unrouted"
    # While draining, only a call already held goes on (a retried TeXML fetch).
    if not app[keys.CALLS].reserve(call_id, new_calls=app[keys.STATE].accepting):
        log.warning("call.rejected", carrier="telnyx", reason="busy", agent=agent_name)
        engine = config.agents[agent_name].engine
        metrics.calls_total.labels("telnyx", agent_name, engine, "rejected_busy").inc()
        return None, "busy"
    log.info("call.accepted", carrier="telnyx", agent=agent_name, call_id=call_id)
    return agent_name, None


def _stream_url(request: web.Request, call_id: str, agent_name: str) -> str:
    token = request.app[keys.TOKENS].issue("telnyx", call_id, agent_name)
    return keys.runtime(request.app).config.server.media_base_url + MEDIA_PREFIX + token


def _check_texml_secret(request: web.Request) -> None:
    """GET fetches carry the call in the query string, which a signature over the (empty) body does
    not cover: they must present the configured `texml_secret` instead (403 otherwise)."""
    telnyx = keys.runtime(request.app).telnyx
    if not telnyx.config.verify_signatures:
        return
    secret = telnyx.config.texml_secret
    presented = request.query.get("secret", "")
    if secret is None or not hmac.compare_digest(presented.encode(), secret.get_secret_value().encode()):
        reason = "texml_secret_unset" if secret is None else "bad_texml_secret"
        log.warning("webhook.rejected", carrier="telnyx", reason=reason)
        request.app[keys.METRICS].webhook_rejections_total.labels("telnyx", reason).inc()
        hint = "set carriers.telnyx.texml_secret and add ?secret=... to the TeXML URL, or fetch with POST"
        raise web.HTTPForbidden(text=f"GET /telnyx/voice needs the TeXML secret: {hint}")


async def texml_webhook(request: web.Request) -> web.Response:
    """TeXML instruction fetch (GET by default, or POST): answer <Connect><Stream> in rtp mode."""
    if request.method == "POST":
        await _verified_body(request)
        # Only the signed body counts: the query string of a POST is not covered by the signature.
        params = {k: v for k, v in (await post_form(request)).items() if isinstance(v, str)}
    else:
        _check_texml_secret(request)
        params = {k: v for k, v in request.query.items() if k != "secret"}
    call_id = params.get("CallSid", "")
    if not call_id:
        request.app[keys.METRICS].webhook_rejections_total.labels("telnyx", "malformed").inc()
        raise web.HTTPBadRequest(text="missing CallSid")
    agent_name, reason = _admit(request, call_id, params.get("To", ""))
    if agent_name is None:
        return web.Response(
            text=texml_reject("busy" if reason == "busy" else None), content_type="application/xml"
        )
    codec = keys.runtime(request.app).telnyx.config.codec
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
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):  # RecursionError: deep nesting
        request.app[keys.METRICS].webhook_rejections_total.labels("telnyx", "malformed").inc()
        raise web.HTTPBadRequest(text="not a Telnyx webhook envelope") from None
    calls = request.app[keys.CALLS]
    if not call_id:
        return web.json_response({"ok": True})  # not about a call the gateway handles
    if event_type == "call.initiated" and payload.get("direction", "incoming") == "incoming":
        if calls.holds(call_id):
            # A retried (or replayed) event for a call already answered must not answer it again.
            log.info("webhook.duplicate", carrier="telnyx", event_type=event_type, call_id=call_id)
        else:
            await _answer(request, call_id, str(payload.get("to", "")))
    elif event_type == "call.answered":
        agent_name = keys.runtime(request.app).telnyx.dialed.take(call_id)
        if agent_name is not None:  # a call this replica dialed (POST /v1/calls) was picked up
            await _start_dialed_stream(request, call_id, agent_name)
    elif event_type == "call.speak.ended":
        keys.runtime(request.app).telnyx.speech_ended(call_id)
    elif event_type == "call.hangup":
        keys.runtime(request.app).telnyx.speech_ended(call_id)
        keys.runtime(request.app).telnyx.dialed.forget(call_id)
        calls.release(call_id)
        log.info(
            "carrier.call_hangup",
            carrier="telnyx",
            call_id=call_id,
            cause=str(payload.get("hangup_cause", "")),
        )
    elif event_type == "streaming.failed":
        # Answered, but the stream never reached us: without a hang-up the caller waits in silence.
        failure = str(payload.get("failure_reason", ""))[:200]
        log.warning("media.stream_failed", carrier="telnyx", call_id=call_id, failure=failure)
        calls.release(call_id)
        await keys.runtime(request.app).telnyx.hangup(call_id)
    return web.json_response({"ok": True})


async def _answer(request: web.Request, call_id: str, to: str) -> None:
    telnyx = keys.runtime(request.app).telnyx
    agent_name, reason = _admit(request, call_id, to)
    if agent_name is None:
        await telnyx.action(
            call_id, "reject", {"cause": "USER_BUSY" if reason == "busy" else "CALL_REJECTED"}
        )
        return
    answered = await telnyx.action(call_id, "answer", _stream_params(request, call_id, agent_name))
    if answered != "ok":  # failed, or the caller hung up before we answered
        request.app[keys.CALLS].release(call_id)


def _stream_params(request: web.Request, call_id: str, agent_name: str) -> dict[str, str]:
    """The bidirectional stream, as `answer` (inbound) and `streaming_start` (dialed calls) take it."""
    codec = keys.runtime(request.app).telnyx.config.codec
    return {
        "stream_url": _stream_url(request, call_id, agent_name),
        "stream_track": "inbound_track",
        "stream_codec": codec,
        # Without rtp, Telnyx treats what we send as mp3 files and the caller hears nothing (§F).
        "stream_bidirectional_mode": "rtp",
        "stream_bidirectional_codec": codec,
    }


async def _start_dialed_stream(request: web.Request, call_id: str, agent_name: str) -> None:
    """The callee of a dialed call answered: stream it to the agent, or hang up if that cannot be."""
    app = request.app
    runtime, metrics = keys.runtime(app), app[keys.METRICS]
    config, telnyx = runtime.config, runtime.telnyx
    agent = config.agents.get(agent_name)
    # The call holds a place from the dial, kept while draining; it is taken again here in case a
    # long ring outlived it (not while draining: then it is a new call).
    calls = app[keys.CALLS]
    admitted = agent is not None and calls.reserve(call_id, new_calls=app[keys.STATE].accepting)
    if not admitted:
        reason = "unrouted" if agent is None else "busy"
        log.warning("call.rejected", carrier="telnyx", reason=reason, agent=agent_name, call_id=call_id)
        labels = ("", "") if agent is None else (agent_name, agent.engine)
        metrics.calls_total.labels("telnyx", *labels, f"rejected_{reason}").inc()
        started: ActionResult = "failed"
    else:
        log.info("call.accepted", carrier="telnyx", agent=agent_name, call_id=call_id, direction="outbound")
        params = _stream_params(request, call_id, agent_name)
        started = await telnyx.action(call_id, "streaming_start", params)
    if started != "ok":
        # Refused, or answered but never streamed: the callee would hear silence, so end the call.
        calls.release(call_id)
        if started == "failed":
            await telnyx.hangup(call_id)


async def _read_start(frames: InboundFrames) -> StreamStart | None:
    """The `start` frame (after `connected`); None when the socket ends first. Bad frames before it
    are counted and skipped (InboundFrames); only START_TIMEOUT_S bounds the wait."""
    async with asyncio.timeout(START_TIMEOUT_S):
        while (event := await frames.next_event()) is not None:
            if isinstance(event, StreamStart):
                return event
    return None


async def _reject(
    ws: web.WebSocketResponse, request: web.Request, reason: str, message: str, hangup_call: str | None = None
) -> web.WebSocketResponse:
    """Close with 1008. With `hangup_call` (a call the token vouches for), also end it at Telnyx: an
    answered call whose stream is refused would otherwise keep the caller in silence."""
    log.warning("media.rejected", carrier="telnyx", reason=reason)
    request.app[keys.METRICS].webhook_rejections_total.labels("telnyx", reason).inc()
    await ws.close(code=1008, message=message.encode())
    if hangup_call is not None:
        request.app[keys.CALLS].release(hangup_call)
        await keys.runtime(request.app).telnyx.hangup(hangup_call)
    return ws


async def media_socket(request: web.Request) -> web.WebSocketResponse:
    """Telnyx media streaming: redeem the URL's token, read `start`, hand the call to a CallBridge."""
    app = request.app
    limits = keys.runtime(app).config.server.limits
    ws = media_socket_response(limits)
    await ws.prepare(request)
    grant = app[keys.TOKENS].redeem(request.match_info.get("token", ""), "telnyx")
    if not isinstance(grant, Grant):
        return await _reject(ws, request, f"token_{grant}", f"stream token {grant}")
    audit = FrameAudit(app[keys.METRICS], limits.bad_frame_log_interval_s)
    frames = InboundFrames(ws, "telnyx", decode_frame, limits, audit)
    try:
        start = await _read_start(frames)
    except TimeoutError:
        log.warning("media.no_start", carrier="telnyx", error="timeout")
        return await _reject(ws, request, "no_start", "expected a start frame", grant.call_id)
    finally:
        audit.flush()
    if start is None:
        if frames.ended_by != "closed":  # flooded, or a frame the socket could not take
            log.warning("media.no_start", carrier="telnyx", error=frames.ended_by)
            message = FLOOD_CLOSE_MESSAGE if frames.ended_by == "flood" else "expected a start frame"
            return await _reject(ws, request, "no_start", message, grant.call_id)
        return ws
    if start.call_id != grant.call_id:
        return await _reject(ws, request, "token_wrong_call", "stream token wrong_call")
    if not start.encoding:
        start = dataclasses.replace(start, encoding=keys.runtime(app).telnyx.config.codec)
    if carrier_format(start.encoding) is None:
        return await _reject(
            ws, request, "unsupported_codec", f"unsupported codec {start.encoding}", start.call_id
        )
    # The call starts now, so it runs on the config of now: a reload since the webhook applies to it.
    runtime = keys.runtime(app)
    agent = runtime.config.agents.get(grant.agent)
    if agent is None:  # the config was reloaded without this agent
        return await _reject(ws, request, "unknown_agent", "unknown agent", start.call_id)
    bridge = CallBridge(
        carrier=runtime.telnyx,
        ws=ws,
        start=start,
        agent_name=grant.agent,
        agent=agent,
        services=runtime.services,
    )
    await bridge.run()
    return ws


def add_routes(app: web.Application) -> None:
    app.router.add_route("GET", "/telnyx/voice", texml_webhook)
    app.router.add_route("POST", "/telnyx/voice", texml_webhook)
    app.router.add_post("/telnyx/events", call_control_webhook)
    app.router.add_get(MEDIA_PREFIX + "{token}", media_socket)
    app.router.add_get(MEDIA_PREFIX.rstrip("/"), media_socket)  # no token: refused as `missing`
