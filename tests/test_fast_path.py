"""The fast path in whole calls: caller media and model audio deltas handled as they arrive
(gateway.fastws), counted in the `call.ended` record, with the same bytes as the ordinary path.

Frames take the fast path only while nothing sent before them waits in aiohttp's queue, so the
model's deltas here are sent one at a time, each once the caller has the one before: then every
delta after the first finds the gateway's reader idle and must be taken as it arrives.
"""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.conftest import Gateway, StartGateway
from tests.fakes.openai_realtime import FakeRealtimeConnection
from tests.fakes.signals import tone_ulaw

DELTAS = 10
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
