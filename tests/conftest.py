"""Shared fixtures: a real gateway on a loopback port, wired to fake Twilio and fake OpenAI servers."""

from __future__ import annotations

import contextlib
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp.web_runner import BaseRunner
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir
from prometheus_client import CollectorRegistry

from gateway.app import create_app
from gateway.config import GatewayConfig, parse_config
from tests.fakes.elevenlabs import FakeElevenLabsServer
from tests.fakes.openai_realtime import FakeRealtimeServer
from tests.fakes.openai_validation import Dialect
from tests.fakes.telnyx import API_KEY as TELNYX_API_KEY
from tests.fakes.telnyx import FakeTelnyx, FakeTelnyxApi, FakeTelnyxCall, TelnyxKeys
from tests.fakes.twilio import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio, FakeTwilioApi, FakeTwilioCall

OPENAI_KEY = "sk-test"
TEXML_SECRET = "texml-secret-test"

# Property tests: the same examples on every run (derandomize) so CI is reproducible, a fixed budget
# per test (each test's own max_examples keeps it to a few seconds), no deadline (the machine is
# shared, and timing must not fail a test), and no example database written into the checkout.
settings.register_profile("gateway", database=None, derandomize=True, deadline=None, print_blob=True)
settings.load_profile("gateway")
# Hypothesis still caches Unicode tables in its home directory (default: ./.hypothesis); keep that out of
# the checkout too.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "telephony-gateway-hypothesis")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def config_dict(port: int, model_url: str, twilio_api_url: str, **overrides: Any) -> dict[str, Any]:
    """A complete config document for a gateway on `port`; `overrides` replace top-level sections."""
    doc: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port, "public_url": f"http://127.0.0.1:{port}"},
        "carriers": {
            "twilio": {"account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN, "api_base_url": twilio_api_url}
        },
        "providers": {"openai": {"api_key": OPENAI_KEY, "realtime_url": model_url}},
        "agents": {"receptionist": {"engine": "openai_realtime_2", "prompt": "You are a receptionist."}},
        "routes": {"+15555550100": "receptionist"},
        "default_agent": "receptionist",
    }
    doc.update(overrides)
    return doc


class GatewayTestServer(TestServer):
    """aiohttp's TestServer with the app run as `gateway.server` runs it. TestServer cancels a handler
    whose connection is lost (handler_cancellation=True); production's AppRunner does not, so a call
    whose media socket aiohttp closed itself (an oversize message, a missed pong) must be seen ending
    as in production, not as `shutdown`."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        kwargs["handler_cancellation"] = False
        return await super()._make_runner(**kwargs)


@dataclass
class Gateway:
    config: GatewayConfig
    app: web.Application
    registry: CollectorRegistry
    url: str
    model: FakeRealtimeServer
    twilio: FakeTwilio
    twilio_api: FakeTwilioApi
    http: aiohttp.ClientSession
    telnyx: FakeTelnyx
    telnyx_api: FakeTelnyxApi
    elevenlabs: FakeElevenLabsServer

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


StartGateway = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def start_gateway() -> AsyncIterator[StartGateway]:
    """`await start_gateway(dialect="ga", agents=..., **sections)` → a running Gateway with its fakes."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(
            dialect: Dialect = "ga",
            *,
            agent: dict[str, Any] | None = None,
            elevenlabs: dict[str, Any] | None = None,
            telnyx: dict[str, Any] | None = None,
            twilio: dict[str, Any] | None = None,
            **overrides: Any,
        ) -> Gateway:
            """`elevenlabs`: FakeElevenLabsServer options; `telnyx`, `twilio`: carriers.* overrides."""
            model = await stack.enter_async_context(FakeRealtimeServer(dialect, api_key=OPENAI_KEY))
            twilio_api = await stack.enter_async_context(FakeTwilioApi())
            telnyx_api = await stack.enter_async_context(FakeTelnyxApi())
            eleven = await stack.enter_async_context(FakeElevenLabsServer(**(elevenlabs or {})))
            keys = TelnyxKeys.generate()
            port = free_port()
            doc = config_dict(port, model.url, twilio_api.url, **overrides)
            if twilio is not None:
                doc["carriers"] = {**doc["carriers"], "twilio": {**doc["carriers"]["twilio"], **twilio}}
            doc["carriers"] = {
                **doc["carriers"],
                "telnyx": {
                    "api_key": TELNYX_API_KEY,
                    "public_key": keys.public_key_b64,
                    "api_base_url": telnyx_api.url,
                    "texml_secret": TEXML_SECRET,
                    **(telnyx or {}),
                },
            }
            doc["providers"] = {
                **doc["providers"],
                "elevenlabs": {
                    "api_key": eleven.api_key,
                    "api_base_url": eleven.api_url,
                    "ws_url": eleven.ws_url,
                },
            }
            if agent is not None:
                engine = {"ga": "openai_realtime_2", "beta": "openai_realtime"}.get(
                    dialect, "elevenlabs_convai"
                )
                doc["agents"] = {"receptionist": {"engine": engine, **agent}}
            config = parse_config(doc, env={})
            registry = CollectorRegistry()
            app = create_app(config, registry=registry)
            server = GatewayTestServer(app, host="127.0.0.1", port=port)
            await server.start_server()
            stack.push_async_callback(server.close)
            http = await stack.enter_async_context(aiohttp.ClientSession())
            url = f"http://127.0.0.1:{port}"
            gateway = Gateway(
                config,
                app,
                registry,
                url,
                model,
                FakeTwilio(http, url, config.server.public_url),
                twilio_api,
                http,
                _fake_telnyx(http, url, config, keys),
                telnyx_api,
                eleven,
            )
            stack.push_async_callback(_close_calls, gateway)
            return gateway

        yield start


def _fake_telnyx(
    http: aiohttp.ClientSession, url: str, config: GatewayConfig, keys: TelnyxKeys
) -> FakeTelnyx:
    telnyx = config.carriers.telnyx
    assert telnyx is not None
    fake = FakeTelnyx(http, url, config.server.public_url, keys)
    fake.texml_secret = telnyx.texml_secret.get_secret_value() if telnyx.texml_secret else None
    return fake


async def _close_calls(gateway: Gateway) -> None:
    calls: list[FakeTwilioCall | FakeTelnyxCall] = [*gateway.twilio.calls, *gateway.telnyx.calls]
    for call in calls:
        await call.aclose()
    problems = gateway.model.problems + gateway.twilio_api.problems + gateway.telnyx_api.problems
    problems += gateway.elevenlabs.problems
    problems += [p for call in calls for p in call.problems]
    assert not problems, problems
