"""The running daemon: `gateway run` as a real process (signals, drain, exit code), and its logs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import structlog

from gateway.log import configure_logging
from tests.conftest import StartGateway, free_port
from tests.fakes.signals import tone_ulaw

ROOT = Path(__file__).resolve().parent.parent


class TestProcess:
    async def test_sigterm_drains_and_exits_zero(self, tmp_path: Path) -> None:
        """`gateway run` serves /healthz, and on SIGTERM drains, logs it and exits 0."""
        port = free_port()
        config = tmp_path / "agents.yaml"
        config.write_text((ROOT / "config" / "agents.example.yaml").read_text())
        env = {
            **os.environ,
            "PORT": str(port),
            "PUBLIC_URL": f"http://127.0.0.1:{port}",
            "OPENAI_API_KEY": "sk-never-printed",
            "TWILIO_ACCOUNT_SID": "AC1",
            "TWILIO_AUTH_TOKEN": "token-never-printed",
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "run",
            "--config",
            str(config),
            "--log-format",
            "json",
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            async with aiohttp.ClientSession() as http:
                for _ in range(200):  # bounded wait for the listener (the process is starting up)
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                            if response.status == 200:
                                break
                    except aiohttp.ClientConnectionError:
                        await asyncio.sleep(0.05)
                else:
                    raise AssertionError("gateway did not start listening")
            process.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(process.communicate(), 20)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode == 0
        events = [json.loads(line)["event"] for line in stderr.decode().splitlines() if line.startswith("{")]
        assert events[0] == "gateway.starting"
        for expected in (
            "gateway.listening",
            "gateway.stopping",
            "gateway.draining",
            "gateway.drained",
            "gateway.stopped",
        ):
            assert expected in events, events
        assert b"never-printed" not in stderr


class TestLogs:
    async def test_call_logs_bind_call_id_and_hide_numbers_and_secrets(
        self, start_gateway: StartGateway, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Every line of a call carries call_id; one call.ended; no phone number or secret anywhere."""
        saved = structlog.get_config()
        try:
            configure_logging("json")
            gw = await start_gateway(agent={"audio": "g711"})
            call = await gw.twilio.call()
            model = await gw.model.next_connection()
            await call.send_audio(tone_ulaw(100))
            await model.wait_audio(800)
            await model.speak(tone_ulaw(100), chunk_bytes=800)
            await call.wait_audio(800)
            await call.stop()
            await call.wait_closed()
            err = capsys.readouterr().err
        finally:
            structlog.configure(**saved)
        lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        call_lines = [line for line in lines if line.get("call_id") == call.call_sid]
        assert [line["event"] for line in call_lines].count("call.ended") == 1
        started = next(i for i, line in enumerate(lines) if line["event"] == "call.started")
        ended = next(i for i, line in enumerate(lines) if line["event"] == "call.ended")
        assert all(line.get("call_id") == call.call_sid for line in lines[started : ended + 1])
        assert call_lines[-1]["reason"] == "caller_hangup"
        for secret in ("+15551230000", "+15555550100", "twilio-test-token", "sk-test"):
            assert secret not in err
