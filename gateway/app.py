"""create_app(config) -> web.Application: routes, long-lived resources, shutdown."""

from __future__ import annotations

import hmac
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from gateway import fastws, keys, outbound
from gateway.calls import CallRegistry
from gateway.carriers import telnyx_routes, twilio_routes
from gateway.config import GatewayConfig
from gateway.errors import ConfigError
from gateway.hold import HoldClip, load_hold_clip
from gateway.metrics import GatewayMetrics
from gateway.runtime import RuntimeRef, build_runtime
from gateway.tokens import MediaTokens

log = structlog.get_logger("gateway.app")


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and its event loop answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Config loaded and accepting calls; 503 while shutting down so load balancers stop sending calls."""
    state = request.app[keys.STATE]
    if not state.accepting:
        return web.json_response({"status": "draining"}, status=503)
    calls = request.app[keys.CALLS]
    if calls.full:
        # Full is not ready: a load balancer should send the next call to another replica.
        return web.json_response({"status": "full", "calls_active": len(calls)}, status=503)
    return web.json_response({"status": "ready", "calls_active": len(calls)})


async def list_calls(request: web.Request) -> web.Response:
    """Live calls with their cost so far. Needs `server.admin_token`; without one the route is off."""
    token = keys.runtime(request.app).config.server.admin_token
    if token is None:
        raise web.HTTPNotFound(text="GET /calls is disabled: set server.admin_token to enable it")
    expected = f"Bearer {token.get_secret_value()}".encode()
    if not hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected):
        raise web.HTTPUnauthorized(
            text="missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
        )
    calls = [call.snapshot() for call in request.app[keys.CALLS].live()]
    return web.json_response({"calls": calls, "count": len(calls)})


def _http_session(
    config: GatewayConfig, hold_clips: dict[str, HoldClip]
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def http_session(app: web.Application) -> AsyncIterator[None]:
        # The default connector caps a session at 100 connections: model sockets of calls beyond the
        # 100th would silently queue while caller audio piles up.
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
        async with aiohttp.ClientSession(
            connector=connector, ws_response_class=fastws.TappedClientWebSocketResponse
        ) as http:
            app[keys.HTTP] = http
            runtime = build_runtime(
                config, hold_clips, http=http, registry=app[keys.CALLS], metrics=app[keys.METRICS]
            )
            app[keys.RUNTIME] = RuntimeRef(runtime)
            yield

    return http_session


async def _on_shutdown(app: web.Application) -> None:
    app[keys.STATE].accepting = False
    await app[keys.CALLS].cancel_all()


def load_hold_clips(config: GatewayConfig) -> dict[str, HoldClip]:
    """Every agent's hold audio, converted once at startup; an unreadable file is a config error."""
    clips: dict[str, HoldClip] = {}
    problems: list[str] = []
    for name, agent in config.agents.items():
        if agent.hold_audio is None or agent.hold_audio.file in clips:
            continue
        try:
            clips[agent.hold_audio.file] = load_hold_clip(agent.hold_audio.file)
        except ConfigError as error:
            problems += [f"agents.{name}.hold_audio.file: {problem}" for problem in error.problems]
    if problems:
        raise ConfigError(problems)
    return clips


def token_secret(config: GatewayConfig) -> bytes:
    """Media tokens are signed with the carriers' own secrets, so every replica that shares the
    config accepts every other replica's tokens (no cross-call state between replicas)."""
    parts = [b"gateway"]
    if config.carriers.twilio is not None:
        parts.append(config.carriers.twilio.auth_token.get_secret_value().encode())
    if config.carriers.telnyx is not None:
        parts.append(config.carriers.telnyx.api_key.get_secret_value().encode())
    return b"|".join(parts)


def create_app(config: GatewayConfig, registry: CollectorRegistry | None = None) -> web.Application:
    hold_clips = load_hold_clips(config)  # raises ConfigError for unreadable files
    app = web.Application()
    app[keys.STATE] = keys.GatewayState()
    app[keys.METRICS] = GatewayMetrics(registry if registry is not None else REGISTRY)
    app[keys.METRICS].config_loaded(time.time())
    app[keys.CALLS] = CallRegistry(config.server.max_concurrent_calls)
    app[keys.TOKENS] = MediaTokens(token_secret(config))
    app.cleanup_ctx.append(_http_session(config, hold_clips))
    app.on_shutdown.append(_on_shutdown)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", make_aiohttp_handler(app[keys.METRICS].registry))
    app.router.add_get("/calls", list_calls)
    outbound.add_routes(app)
    if config.carriers.twilio is not None:
        twilio_routes.add_routes(app)
        if not config.carriers.twilio.verify_signatures:
            log.warning("twilio.signatures_disabled", hint="anyone who can reach the gateway can start calls")
    if config.carriers.telnyx is not None:
        telnyx_routes.add_routes(app)
        if not config.carriers.telnyx.verify_signatures:
            log.warning("telnyx.signatures_disabled", hint="anyone who can reach the gateway can start calls")
    return app
