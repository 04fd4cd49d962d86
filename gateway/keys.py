"""Every typed application key, in one place (aiohttp's recommended way to hold app state).

What comes from the config file (the config itself, carriers, engines, prices, hold clips, the
`Services` calls start with) is not here but in the one `Runtime` under `RUNTIME`, which a reload
replaces whole (gateway.runtime). Read it with `runtime(app)`, once per handler.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from aiohttp import web

from gateway.calls import CallRegistry
from gateway.metrics import GatewayMetrics
from gateway.runtime import Runtime, RuntimeRef
from gateway.tokens import MediaTokens

METRICS = web.AppKey("metrics", GatewayMetrics)
CALLS = web.AppKey("calls", CallRegistry)
HTTP = web.AppKey("http", aiohttp.ClientSession)
TOKENS = web.AppKey("tokens", MediaTokens)
RUNTIME = web.AppKey("runtime", RuntimeRef)


@dataclass(slots=True)
class GatewayState:
    accepting: bool = True


STATE = web.AppKey("state", GatewayState)


def runtime(app: web.Application) -> Runtime:
    """The config-derived objects new calls and webhooks use right now (set once the app has started)."""
    return app[RUNTIME].current
