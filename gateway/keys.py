"""Every typed application key, in one place (aiohttp's recommended way to hold app state)."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from aiohttp import web

from gateway.accounting import PriceBook
from gateway.calls import CallRegistry
from gateway.carriers.telnyx import TelnyxCarrier
from gateway.carriers.twilio import TwilioCarrier
from gateway.config import GatewayConfig
from gateway.engines.base import EngineFactory
from gateway.hold import HoldClip
from gateway.metrics import GatewayMetrics
from gateway.services import Services
from gateway.tokens import MediaTokens

CONFIG = web.AppKey("config", GatewayConfig)
METRICS = web.AppKey("metrics", GatewayMetrics)
CALLS = web.AppKey("calls", CallRegistry)
HTTP = web.AppKey("http", aiohttp.ClientSession)
TWILIO = web.AppKey("twilio", TwilioCarrier)
ENGINES = web.AppKey("engines", EngineFactory)
PRICES = web.AppKey("prices", PriceBook)
SERVICES = web.AppKey("services", Services)
HOLD_CLIPS = web.AppKey("hold_clips", dict[str, HoldClip])
TOKENS = web.AppKey("tokens", MediaTokens)
TELNYX = web.AppKey("telnyx", TelnyxCarrier)


@dataclass(slots=True)
class GatewayState:
    accepting: bool = True


STATE = web.AppKey("state", GatewayState)
