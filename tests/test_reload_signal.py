"""SIGHUP on the real `gateway run` process: a good file is applied, a broken one is refused and counted."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port
from tests.fakes.twilio import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio

SALES = "+15555550101"
OPENAI_KEY = "sk-never-printed"


def gateway_config(port: int) -> dict[str, Any]:
    # Nothing here is ever dialled: the test only looks at webhooks' answers and /metrics.
    return {
        "server": {"host": "127.0.0.1", "port": port, "public_url": f"http://127.0.0.1:{port}"},
        "carriers": {
            "twilio": {
                "account_sid": ACCOUNT_SID,
                "auth_token": AUTH_TOKEN,
                "api_base_url": "http://127.0.0.1:9",
            }
        },
        "providers": {"openai": {"api_key": OPENAI_KEY, "realtime_url": "ws://127.0.0.1:9/v1/realtime"}},
        "agents": {"receptionist": {"engine": "openai_realtime_2", "prompt": "front desk"}},
        "routes": {"+15555550100": "receptionist"},
    }


async def metric(http: aiohttp.ClientSession, url: str, name: str, **labels: str) -> float:
    async with http.get(url + "/metrics") as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


async def wait_until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(200):  # bounded: the process under test starts up, or reloads, on its own time
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def listening(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url + "/healthz") as response:
            return response.status == 200
    except aiohttp.ClientConnectionError:
        return False


async def routed_agent(twilio: FakeTwilio, to: str) -> str | None:
    """The agent the gateway's TwiML answer names for a call to `to`; None if it rejects the call."""
    status, body = await twilio.webhook(to=to)
    assert status == 200, body
    if "<Reject" in body:
        return None
    return twilio.parse_stream(body)[1]["agent"]


class TestSighup:
    async def test_sighup_applies_a_good_file_and_refuses_a_broken_one(self, tmp_path: Path) -> None:
        """SIGHUP with a rewritten file: the reload counts as ok and a webhook routes to the new agent.
        SIGHUP with a broken file: counted as invalid, logged, and the gateway serves the last good
        config. The process still drains and exits 0, with no secret or phone number in its logs. (The
        two calls routed to `sales` were answered but never streamed: the drain waits for them until
        drain_timeout_s, as the carrier could still connect them.)"""
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        path = tmp_path / "agents.yaml"
        doc = gateway_config(port)
        doc["server"]["drain_timeout_s"] = 1
        path.write_text(yaml.safe_dump(doc))
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "gateway", "run", "--config", str(path), "--log-format", "json"),
            env={**os.environ},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            async with aiohttp.ClientSession() as http:
                await wait_until(lambda: listening(http, url), "the listener")
                twilio = FakeTwilio(http, url, url)
                assert await routed_agent(twilio, SALES) is None

                doc["agents"]["sales"] = {"engine": "openai_realtime_2", "prompt": "sales desk"}
                doc["routes"][SALES] = "sales"
                path.write_text(yaml.safe_dump(doc))
                process.send_signal(signal.SIGHUP)

                async def reloaded_ok() -> bool:
                    return await metric(http, url, "gateway_config_reloads_total", result="ok") == 1

                await wait_until(reloaded_ok, "reloads_total{result=ok} == 1")
                assert await routed_agent(twilio, SALES) == "sales"

                path.write_text("agents:\n  sales: [unclosed\n")
                process.send_signal(signal.SIGHUP)

                async def reloaded_invalid() -> bool:
                    return await metric(http, url, "gateway_config_reloads_total", result="invalid") == 1

                await wait_until(reloaded_invalid, "reloads_total{result=invalid} == 1")
                assert await metric(http, url, "gateway_config_last_reload_successful") == 0
                assert await routed_agent(twilio, SALES) == "sales"
                async with http.get(url + "/readyz") as response:
                    assert response.status == 200
            process.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(process.communicate(), 20)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode == 0
        lines = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
        reloaded = next(line for line in lines if line["event"] == "config.reloaded")
        assert (reloaded["agents_added"], reloaded["routes"]) == (["sales"], 2)
        failed = next(line for line in lines if line["event"] == "config.reload_failed")
        assert [problem.split(" at line")[0] for problem in failed["problems"]] == [f"{path}: not valid YAML"]
        incomplete = next(line for line in lines if line["event"] == "gateway.drain_incomplete")
        assert (incomplete["calls_active"], incomplete["calls_answered"]) == (0, 2)
        for secret in (OPENAI_KEY, AUTH_TOKEN, SALES):
            assert secret not in stderr.decode()
