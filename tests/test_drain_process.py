"""SIGTERM on a real `gateway run` process with live calls: the drain, the goodbyes, the exit code.

The gateway runs as a child process; the fake model, the fake Twilio REST API and the fake caller run
in the test's own loop, all on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.schema import AnnouncementsConfig
from tests.conftest import OPENAI_KEY, config_dict, free_port
from tests.fakes.openai_realtime import FakeRealtimeServer
from tests.fakes.twilio import FakeTwilio, FakeTwilioApi

STARTUP_S = 20.0


@dataclass
class Process:
    process: asyncio.subprocess.Process
    url: str
    http: aiohttp.ClientSession
    model: FakeRealtimeServer
    twilio: FakeTwilio
    twilio_api: FakeTwilioApi

    async def status(self, path: str) -> int:
        async with self.http.get(self.url + path) as response:
            return response.status

    async def wait_status(self, path: str, expected: int) -> None:
        """Poll `path` until it answers `expected` (bounded; the process changes state on its own)."""
        async with asyncio.timeout(STARTUP_S):
            while True:
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    if await self.status(path) == expected:
                        return
                await asyncio.sleep(0.05)

    async def finish(self) -> list[dict[str, Any]]:
        """Wait for the process to exit; its JSON log lines."""
        _, stderr = await asyncio.wait_for(self.process.communicate(), STARTUP_S)
        return [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]


@pytest.fixture
async def gateway_process(tmp_path: Path) -> AsyncIterator[Any]:
    """`await gateway_process(drain_timeout_s=…)` → a running `gateway run` child with its fakes."""
    async with contextlib.AsyncExitStack() as stack:
        processes: list[asyncio.subprocess.Process] = []

        async def start(drain_timeout_s: float) -> Process:
            model = await stack.enter_async_context(FakeRealtimeServer("ga", api_key=OPENAI_KEY))
            twilio_api = await stack.enter_async_context(FakeTwilioApi())
            http = await stack.enter_async_context(aiohttp.ClientSession())
            port = free_port()
            doc = config_dict(port, model.url, twilio_api.url)
            doc["server"]["drain_timeout_s"] = drain_timeout_s
            config = tmp_path / "agents.yaml"
            config.write_text(yaml.safe_dump(doc))
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "run", "--config", str(config), "--log-format", "json",
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ},
            )  # fmt: skip
            processes.append(process)
            url = f"http://127.0.0.1:{port}"
            gateway = Process(process, url, http, model, FakeTwilio(http, url, url), twilio_api)
            await gateway.wait_status("/healthz", 200)
            return gateway

        try:
            yield start
        finally:
            for process in processes:
                if process.returncode is None:
                    process.kill()
                    await process.wait()


class TestSigterm:
    async def test_live_calls_finish_while_new_ones_are_refused(self, gateway_process: Any) -> None:
        """SIGTERM: /readyz turns 503 and new calls get <Reject reason="busy"/> while the live call
        carries on (audio still flows); when it ends the process exits 0 without any hang-up or
        announcement of ours."""
        gw: Process = await gateway_process(drain_timeout_s=30)
        call = await gw.twilio.call()
        model = await gw.model.next_connection()
        await model.wait_for("session.update")
        gw.process.send_signal(signal.SIGTERM)
        await gw.wait_status("/readyz", 503)
        status, body = await gw.twilio.webhook()
        assert status == 200
        assert 'reason="busy"' in body
        assert gw.process.returncode is None
        await model.speak(b"\x00\x10" * 2400, chunk_bytes=4800)  # 100 ms of PCM16 24 kHz
        await call.wait_audio(800)  # 100 ms of µ-law 8 kHz reached the caller
        await call.stop()
        events = await gw.finish()
        assert gw.process.returncode == 0
        names = [event["event"] for event in events]
        assert "gateway.drained" in names
        assert "gateway.drain_incomplete" not in names
        [ended] = [event for event in events if event["event"] == "call.ended"]
        assert ended["reason"] == "caller_hangup"
        assert gw.twilio_api.updates == []

    async def test_drain_timeout_says_goodbye_then_exits_zero(self, gateway_process: Any) -> None:
        """A call still live when drain_timeout_s runs out hears the carrier's goodbye (<Say> then
        <Hangup/> in one call update) and the process still exits 0."""
        gw: Process = await gateway_process(drain_timeout_s=0.2)
        call = await gw.twilio.call()
        await gw.model.next_connection()
        gw.process.send_signal(signal.SIGTERM)
        events = await gw.finish()
        assert gw.process.returncode == 0
        assert gw.twilio_api.said(call.call_sid) == [AnnouncementsConfig().shutdown]
        assert gw.twilio_api.hangups() == [call.call_sid]
        names = [event["event"] for event in events]
        assert names.index("gateway.drain_incomplete") < names.index("call.ended")
        [ended] = [event for event in events if event["event"] == "call.ended"]
        assert ended["reason"] == "shutdown"
        [loop] = [event for event in events if event["event"] == "gateway.event_loop"]
        assert loop["loop"] == ("asyncio" if sys.platform == "win32" else "uvloop")

    async def test_a_second_signal_stops_at_once(self, gateway_process: Any) -> None:
        """A second SIGTERM during the drain cuts it short: the live call is hung up plainly (no
        goodbye) and the process exits 0."""
        gw: Process = await gateway_process(drain_timeout_s=60)
        call = await gw.twilio.call()
        await gw.model.next_connection()
        gw.process.send_signal(signal.SIGTERM)
        await gw.wait_status("/readyz", 503)
        gw.process.send_signal(signal.SIGTERM)
        events = await gw.finish()
        assert gw.process.returncode == 0
        assert gw.twilio_api.updates_of(call.call_sid) == [{"Status": "completed"}]
        assert "gateway.forced_stop" in [event["event"] for event in events]
