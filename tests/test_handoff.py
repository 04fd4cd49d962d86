"""Hand-off between agents mid-call, and the per-call transcript file (issue 6, items 5 and 6)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.conftest import StartGateway, free_port
from tests.fakes.openai_realtime import FakeRealtimeConnection, FakeRealtimeServer
from tests.fakes.signals import tone_ulaw
from tests.fakes.twilio import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio, FakeTwilioApi

HANDOFF_AGENTS: dict[str, Any] = {
    "receptionist": {
        "engine": "openai_realtime_2",
        "audio": "g711",
        "prompt": "front desk",
        "tools": [{"builtin": "handoff", "agents": ["billing", "support"]}],
    },
    "billing": {"engine": "openai_realtime", "audio": "g711", "prompt": "billing desk"},
    "support": {"engine": "elevenlabs_convai", "agent_id": "agent_test"},
}


async def function_call(model: FakeRealtimeConnection, name: str, arguments: dict[str, Any]) -> None:
    item = {
        "id": "item_fc",
        "type": "function_call",
        "status": "completed",
        "call_id": "call_1",
        "name": name,
        "arguments": json.dumps(arguments),
    }
    await model.send(
        {"type": "response.output_item.done", "response_id": "resp_fc", "output_index": 0, "item": item}
    )


async def caller_said(model: FakeRealtimeConnection, text: str) -> None:
    await model.send(
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": "item_u",
            "content_index": 0,
            "transcript": text,
            "usage": {"type": "duration", "seconds": 1},
        }
    )


def transcript_lines(directory: Path) -> list[dict[str, Any]]:
    files = list(directory.glob("*.jsonl"))
    assert len(files) == 1, files
    return [json.loads(line) for line in files[0].read_text().splitlines()]


class TestHandoff:
    async def test_ga_agent_hands_over_to_a_beta_agent_with_the_summary(
        self, start_gateway: StartGateway, tmp_path: Path
    ) -> None:
        """The GA agent hands off to a beta agent: new session in the beta dialect, summary in its
        first instructions, the old session closed, audio flowing to and from the new one."""
        gw = await start_gateway("auto", agents=HANDOFF_AGENTS, transcripts={"dir": str(tmp_path)})
        call = await gw.twilio.call()
        first = await gw.model.next_connection()
        assert first.dialect == "ga"
        await caller_said(first, "I have a question about my invoice")
        await function_call(first, "handoff", {"agent": "billing"})

        second = await gw.model.next_connection()
        assert second.dialect == "beta"
        update = (await second.wait_for("session.update"))[0]["session"]
        assert update["instructions"] == "billing desk"
        created = (await second.wait_for("response.create"))[0]
        assert "response" not in created  # the billing prompt stays in force for the greeting
        [greeting] = second.system_notes()
        assert "I have a question about my invoice" in greeting
        await asyncio.wait_for(first.closed.wait(), 5)

        await call.send_audio(b"\x12" * 160)
        await second.wait_audio(160)
        await second.speak(b"\x34" * 800, chunk_bytes=800)
        await call.wait_audio(800)
        assert bytes(call.audio_out) == b"\x34" * 800
        await call.stop()
        await call.wait_closed()
        events = [line["event"] for line in transcript_lines(tmp_path)]
        assert "handoff" in events
        handoff = next(line for line in transcript_lines(tmp_path) if line["event"] == "handoff")
        assert (handoff["from_agent"], handoff["to_agent"]) == ("receptionist", "billing")

    async def test_ga_agent_hands_over_to_an_elevenlabs_agent(self, start_gateway: StartGateway) -> None:
        """A hand-off to an ElevenLabs agent opens a conversation there and passes the summary as a
        contextual update; caller audio then reaches ElevenLabs."""
        gw = await start_gateway("auto", agents=HANDOFF_AGENTS)
        call = await gw.twilio.call()
        first = await gw.model.next_connection()
        await caller_said(first, "I need technical help")
        await function_call(first, "handoff", {"agent": "support"})
        conn = await gw.elevenlabs.next_connection()
        update = (await conn.wait_for("contextual_update"))[0]
        assert "I need technical help" in update["text"]
        await asyncio.wait_for(first.closed.wait(), 5)
        await call.send_audio(b"\x56" * 160)
        await conn.wait_audio(160)
        await call.stop()
        await call.wait_closed()

    async def test_handoff_to_an_agent_not_in_the_list_is_an_error_output(
        self, start_gateway: StartGateway
    ) -> None:
        """The model can only name agents from the tool's list; anything else is an error output."""
        gw = await start_gateway("auto", agents=HANDOFF_AGENTS)
        await gw.twilio.call()
        first = await gw.model.next_connection()
        await function_call(first, "handoff", {"agent": "ghost"})
        output = (await first.wait_for("conversation.item.create"))[0]["item"]
        assert "unknown agent" in json.loads(output["output"])["error"]
        assert len(gw.model.all_connections) == 1


class TestTranscripts:
    async def test_transcript_of_a_normal_call(self, start_gateway: StartGateway, tmp_path: Path) -> None:
        """One JSONL file per call: start, caller and agent turns, barge-in, end with the cost."""
        gw = await start_gateway(agent={"audio": "g711"}, transcripts={"dir": str(tmp_path)})
        call = await gw.twilio.call(auto_play=False)
        model = await gw.model.next_connection()
        await caller_said(model, "Hello there")
        await model.response_created("r1")
        await model.audio_delta("r1", "i1", tone_ulaw(200))
        await model.send(
            {
                "type": "response.output_audio_transcript.done",
                "response_id": "r1",
                "item_id": "i1",
                "output_index": 0,
                "content_index": 0,
                "transcript": "Hi, how can I help?",
            }
        )
        await call.wait_for("mark")
        await model.speech_started()
        await call.wait_for("clear")
        await call.stop()
        await call.wait_closed()
        lines = transcript_lines(tmp_path)
        events = [line["event"] for line in lines]
        assert events[0] == "call.started"
        assert events[-1] == "call.ended"
        assert {"event": "caller", "text": "Hello there"}.items() <= lines[events.index("caller")].items()
        assert lines[events.index("agent")]["text"] == "Hi, how can I help?"
        assert "barge_in" in events
        assert lines[-1]["reason"] == "caller_hangup"
        assert lines[-1]["cost"]["cost_usd_total"] > 0
        assert all("t" in line for line in lines)

    async def test_no_transcripts_unless_configured(
        self, start_gateway: StartGateway, tmp_path: Path
    ) -> None:
        """Transcripts are opt-in: without `transcripts:` nothing is written."""
        gw = await start_gateway(agent={"audio": "g711"})
        call = await gw.twilio.call()
        await gw.model.next_connection()
        await call.stop()
        await call.wait_closed()
        assert _listing(tmp_path) == []


class TestTranscriptSurvivesAKill:
    async def test_killed_gateway_leaves_every_line_written_so_far(self, tmp_path: Path) -> None:
        """SIGKILL mid-call: the transcript has every line written before the kill (flushed per line)."""
        transcripts = tmp_path / "transcripts"
        async with (
            FakeRealtimeServer("ga") as model_server,
            FakeTwilioApi() as api,
            aiohttp.ClientSession() as http,
        ):
            port = free_port()
            config = {
                "server": {"host": "127.0.0.1", "port": port, "public_url": f"http://127.0.0.1:{port}"},
                "carriers": {
                    "twilio": {"account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN, "api_base_url": api.url}
                },
                "providers": {"openai": {"api_key": "sk-test", "realtime_url": model_server.url}},
                "agents": {"receptionist": {"engine": "openai_realtime_2", "audio": "g711"}},
                "default_agent": "receptionist",
                "transcripts": {"dir": str(transcripts)},
            }
            path = tmp_path / "agents.yaml"
            path.write_text(yaml.safe_dump(config))
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway",
                "run",
                "--config",
                str(path),
                "--log-format",
                "json",
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**os.environ},
            )
            try:
                gateway_url = f"http://127.0.0.1:{port}"
                await _wait_listening(http, gateway_url)
                twilio = FakeTwilio(http, gateway_url, gateway_url)
                call = await twilio.call()
                model = await model_server.next_connection()
                await caller_said(model, "please remember this")
                await _wait_for_line(transcripts, "caller")
                process.send_signal(signal.SIGKILL)
                await process.wait()
                await call.aclose()
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        lines = transcript_lines(transcripts)
        assert [line["event"] for line in lines] == ["call.started", "caller"]
        assert lines[1]["text"] == "please remember this"


async def _wait_listening(http: aiohttp.ClientSession, url: str) -> None:
    for _ in range(200):  # bounded: the process is starting up
        try:
            async with http.get(url + "/healthz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.05)
    raise AssertionError("gateway did not start listening")


async def _wait_for_line(directory: Path, event: str) -> None:
    for _ in range(200):  # bounded: another process writes the file
        if event in _events_in(directory):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {event} line in the transcript")


def _listing(directory: Path) -> list[Path]:
    return list(directory.iterdir())


def _events_in(directory: Path) -> list[str]:
    files = list(directory.glob("*.jsonl")) if directory.exists() else []
    return [json.loads(line)["event"] for path in files for line in path.read_text().splitlines()]
