"""The fast path in whole calls: caller media and model audio deltas handled as they arrive
(gateway.fastws), counted in the `call.ended` record, with the same bytes as the ordinary path.

Frames take the fast path only while nothing sent before them waits in aiohttp's queue, so the
model's deltas here are sent one at a time, each once the caller has the one before: then every
delta after the first finds the gateway's reader idle and must be taken as it arrives.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from pytest_aiohttp import AiohttpClient
from structlog.testing import capture_logs

from gateway import fastws
from gateway.audio import ULAW_8K
from gateway.audio_path import AudioPath
from gateway.carriers.twilio import TwilioMediaCodec
from gateway.engines.base import AudioDelta
from gateway.metrics import GatewayMetrics
from tests.conftest import Gateway, StartGateway
from tests.fakes.openai_realtime import FakeRealtimeConnection
from tests.fakes.signals import tone_ulaw

DELTAS = 10
BIG_BYTES = 24 * 1024 * 1024  # more than loopback's socket buffers hold
DELTA_BYTES = 800  # 100 ms of µ-law


async def speak_paced(model: FakeRealtimeConnection, call: Any, audio: bytes) -> None:
    """One response whose deltas are sent one by one, each after the caller got the previous one."""
    await model.response_created("resp_fast")
    sent = len(call.audio_out)
    for offset in range(0, len(audio), DELTA_BYTES):
        chunk = audio[offset : offset + DELTA_BYTES]
        await model.audio_delta("resp_fast", "item_fast", chunk)
        sent += len(chunk)
        await call.wait_audio(sent)
    await model.audio_done("resp_fast", "item_fast")
    await model.response_done("resp_fast")


def call_ended(logs: list[dict[str, Any]]) -> dict[str, Any]:
    [ended] = [entry for entry in logs if entry["event"] == "call.ended"]
    return ended


async def converse(gw: Gateway, call: Any) -> dict[str, Any]:
    """A second of caller audio and a second of agent audio, byte exact (g711 passthrough)."""
    model = await gw.model.next_connection()
    await model.wait_for("session.update")
    caller_audio = tone_ulaw(1000)
    await call.send_audio(caller_audio)
    await model.wait_audio(len(caller_audio))
    assert bytes(model.audio_in) == caller_audio
    agent_audio = tone_ulaw(DELTAS * 100, hz=700)
    await speak_paced(model, call, agent_audio)
    assert bytes(call.audio_out) == agent_audio
    with capture_logs() as logs:
        await call.stop()
        await call.wait_closed()
    return call_ended(logs)


class TestFastPathInCalls:
    @pytest.mark.parametrize("dialect", ["ga", "beta"])
    async def test_twilio_call_takes_the_fast_path(self, start_gateway: StartGateway, dialect: str) -> None:
        """Most of the 50 caller frames and all deltas but the first are handled as they arrive."""
        gw = await start_gateway(dialect, agent={"audio": "g711"})
        ended = await converse(gw, await gw.twilio.call())
        assert ended["reason"] == "caller_hangup"
        assert 25 <= ended["fast_caller_frames"] <= 50
        assert DELTAS - 1 <= ended["fast_model_frames"] <= DELTAS

    async def test_telnyx_call_takes_the_fast_path(self, start_gateway: StartGateway) -> None:
        """Telnyx media frames take the same fast path as Twilio's."""
        gw = await start_gateway("ga", agent={"audio": "g711"})
        ended = await converse(gw, await gw.telnyx.call_texml())
        assert ended["reason"] == "caller_hangup"
        assert 25 <= ended["fast_caller_frames"] <= 50
        assert DELTAS - 1 <= ended["fast_model_frames"] <= DELTAS


class TestSlowWrites:
    async def test_no_direct_write_lands_inside_a_slow_write(
        self, aiohttp_client: AiohttpClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A media frame and its mark written through aiohttp (the peer is behind) are not split by a
        delta handled on arrival meanwhile: that delta is declined and takes the ordinary path."""
        results: dict[str, Any] = {}
        ready = asyncio.Event()
        finished = asyncio.Event()

        async def handle(request: web.Request) -> web.WebSocketResponse:
            ws = fastws.TappedWebSocketResponse()
            await ws.prepare(request)
            codec = TwilioMediaCodec("MZ" + "0" * 32)
            audio = AudioPath(ws, codec, ULAW_8K, GatewayMetrics(CollectorRegistry()))
            await ready.wait()  # the client has stopped reading
            monkeypatch.setattr(fastws, "WRITE_BUFFER_CAP", 0)  # the peer is "behind": slow path
            # More than loopback's socket buffers hold, so aiohttp waits for the peer mid-list.
            big = base64.b64encode(b"\x7f" * BIG_BYTES).decode()
            slow = asyncio.create_task(audio.send("item_1", big, BIG_BYTES, mark=True))
            for _ in range(100):
                if audio._slow_writes or slow.done():
                    break
                await asyncio.sleep(0)
            results["waited"] = not slow.done()
            monkeypatch.setattr(fastws, "WRITE_BUFFER_CAP", 1 << 30)  # direct writes would be allowed
            results["now"] = audio.model_audio_now(AudioDelta("resp_1", "item_1", "f39/"))
            results["resume"].resume_reading()
            await slow
            finished.set()
            await ws.receive()
            return ws

        app = web.Application()
        app.router.add_get("/ws", handle)
        client = await aiohttp_client(app)
        ws = await client.ws_connect("/ws", max_msg_size=0)
        transport = ws._writer.transport if ws._writer is not None else None
        assert transport is not None
        transport.pause_reading()
        results["resume"] = transport
        ready.set()
        events = []
        while len(events) < 2:
            message = await ws.receive(timeout=10)
            events.append(json.loads(message.data)["event"])
        await asyncio.wait_for(finished.wait(), 10)
        await ws.close()
        assert results["waited"], "send_str did not wait for the peer: the test proves nothing"
        assert results["now"] is None  # declined: it comes out of events() instead
        assert events == ["media", "mark"]
