"""Whole calls through a real gateway: fake Twilio caller ⇄ gateway ⇄ fake OpenAI Realtime server."""

from __future__ import annotations

import asyncio

import pytest

from gateway.audio import CallerToModel, ModelToCaller
from tests.conftest import StartGateway
from tests.fakes.signals import MS, PCM24_MS, tone_pcm24, tone_ulaw


class TestFullCall:
    @pytest.mark.parametrize("dialect", ["ga", "beta"])
    async def test_g711_passthrough_is_byte_exact(self, start_gateway: StartGateway, dialect: str) -> None:
        """In g711 mode caller bytes reach the model unchanged and model bytes reach the caller unchanged."""
        gw = await start_gateway(dialect, agent={"audio": "g711"})
        call = await gw.twilio.call()
        model = await gw.model.next_connection()
        update = (await model.wait_for("session.update"))[0]["session"]
        if dialect == "ga":
            assert update["audio"]["input"]["format"] == {"type": "audio/pcmu"}
            assert update["audio"]["output"]["format"] == {"type": "audio/pcmu"}
        else:
            assert update["input_audio_format"] == update["output_audio_format"] == "g711_ulaw"

        caller_audio = tone_ulaw(1000)
        await call.send_audio(caller_audio)
        await model.wait_audio(len(caller_audio))
        assert bytes(model.audio_in) == caller_audio

        agent_audio = tone_ulaw(1500, hz=700)
        await model.speak(agent_audio, chunk_bytes=800)
        await call.wait_audio(len(agent_audio))
        assert bytes(call.audio_out) == agent_audio
        # One mark per 200 ms of audio (7), and one for the last 100 ms when the item is done.
        await call.wait_for("mark", count=8)
        assert len(call.of_type("mark")) == 8

        await call.stop()
        await asyncio.wait_for(model.closed.wait(), 5)
        assert await call.wait_closed() is not None
        assert gw.twilio_api.hangups() == []
        assert (
            gw.metric(
                "gateway_calls_total",
                carrier="twilio",
                agent="receptionist",
                engine=gw.config.agents["receptionist"].engine,
                outcome="caller_hangup",
            )
            == 1
        )
        assert (
            gw.metric(
                "gateway_calls_active", carrier="twilio", engine=gw.config.agents["receptionist"].engine
            )
            == 0
        )
        assert (
            gw.metric(
                "gateway_call_duration_seconds_count",
                carrier="twilio",
                agent="receptionist",
                engine=gw.config.agents["receptionist"].engine,
            )
            == 1
        )

    @pytest.mark.parametrize("dialect", ["ga", "beta"])
    async def test_pcm24k_transcodes_with_exact_sample_accounting(
        self, start_gateway: StartGateway, dialect: str
    ) -> None:
        """In pcm24k mode 1 s of caller µ-law becomes 1 s of 24 kHz PCM and back, ± one 20 ms frame."""
        gw = await start_gateway(dialect, agent={"audio": "pcm24k"})
        call = await gw.twilio.call()
        model = await gw.model.next_connection()
        update = (await model.wait_for("session.update"))[0]["session"]
        if dialect == "ga":
            assert update["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        else:
            assert update["input_audio_format"] == update["output_audio_format"] == "pcm16"

        # Reference converters fed the same chunks give the exact byte streams the call must carry:
        # one stateful resampler per direction, nothing lost at frame edges, the tail flushed.
        caller_audio = tone_ulaw(1000)
        reference_up = CallerToModel()
        expected_up = b"".join(
            reference_up.convert(caller_audio[i : i + 160]) for i in range(0, len(caller_audio), 160)
        )
        await call.send_audio(caller_audio)
        await model.wait_audio(len(expected_up))
        await call.send_audio(tone_ulaw(20))  # a later frame: everything before it has been forwarded
        await model.wait_for("input_audio_buffer.append", count=51)
        assert bytes(model.audio_in[: len(expected_up)]) == expected_up
        assert abs(len(expected_up) - 1000 * PCM24_MS) <= 20 * PCM24_MS  # ± one frame of delay line

        agent_audio = tone_pcm24(2000)
        chunk = 100 * PCM24_MS
        reference_down = ModelToCaller()
        expected_down = b"".join(
            reference_down.convert(agent_audio[i : i + chunk]) for i in range(0, len(agent_audio), chunk)
        )
        expected_down += reference_down.flush()
        assert len(expected_down) == 2000 * MS  # the flush makes the response exact, not just close
        await model.speak(agent_audio, chunk_bytes=chunk)
        await call.wait_audio(len(expected_down))
        assert bytes(call.audio_out) == expected_down
        await call.stop()
        await call.wait_closed()
        assert len(call.audio_out) == len(expected_down)

    async def test_beta_reads_ga_audio_spelling_and_vice_versa(self, start_gateway: StartGateway) -> None:
        """Either dialect accepts both spellings of the audio delta event (protocols.md §B.4)."""
        gw = await start_gateway("ga", agent={"audio": "g711"})
        call = await gw.twilio.call()
        model = await gw.model.next_connection()
        await model.response_created("resp_1")
        await model.audio_delta("resp_1", "item_1", b"\x11" * 160, name="response.audio.delta")
        await model.audio_delta("resp_1", "item_1", b"\x22" * 160, name="response.output_audio.delta")
        await call.wait_audio(320)
        assert bytes(call.audio_out) == b"\x11" * 160 + b"\x22" * 160


class TestFirstMessage:
    @pytest.mark.parametrize("dialect", ["ga", "beta"])
    async def test_first_message_is_requested_right_after_session_update(
        self, start_gateway: StartGateway, dialect: str
    ) -> None:
        """With first_message set, a system message with that exact text and a plain response.create
        follow the session.update: no per-response instructions, which would replace the agent's
        prompt for the greeting."""
        agent = {"first_message": "Hello! How can I help today?", "prompt": "You are a receptionist."}
        gw = await start_gateway(dialect, agent=agent)
        await gw.twilio.call()
        model = await gw.model.next_connection()
        await model.wait_for("response.create")
        kinds = [e["type"] for e in model.received]
        assert kinds[:3] == ["session.update", "conversation.item.create", "response.create"]
        assert model.received[0]["session"]["instructions"] == "You are a receptionist."
        [note] = model.system_notes()
        assert "Hello! How can I help today?" in note
        assert "response" not in model.received[2]

    async def test_no_first_message_means_no_response_create(self, start_gateway: StartGateway) -> None:
        """Without first_message the agent waits for the caller: no response.create is sent."""
        gw = await start_gateway("ga", agent={"audio": "g711"})
        call = await gw.twilio.call()
        model = await gw.model.next_connection()
        await call.send_audio(tone_ulaw(100))
        await model.wait_audio(800)
        assert model.of_type("response.create") == []


class TestMarks:
    async def test_one_mark_per_200_ms_and_one_at_the_end(self, start_gateway: StartGateway) -> None:
        """Marks follow every 200 ms of agent audio written, not every frame, and the end of the item."""
        gw = await start_gateway("ga", agent={"audio": "g711"})
        call = await gw.twilio.call()
        model = await gw.model.next_connection()
        await model.response_created("resp_1")
        for _ in range(25):  # 500 ms in 20 ms deltas
            await model.audio_delta("resp_1", "item_a", tone_ulaw(20))
        await call.wait_audio(500 * MS)
        await call.wait_for("mark", count=2)
        await model.audio_done("resp_1", "item_a")
        await call.wait_for("mark", count=3)
        events = [f["event"] for f in call.frames if f["event"] in ("media", "mark")]
        assert [i for i, event in enumerate(events) if event == "mark"] == [10, 21, 27]

    async def test_a_new_item_marks_the_previous_one_first(self, start_gateway: StartGateway) -> None:
        """Audio of a new item is preceded by a mark for the previous item's unmarked audio, so one mark
        never confirms audio of two items."""
        gw = await start_gateway("ga", agent={"audio": "g711"})
        call = await gw.twilio.call()
        model = await gw.model.next_connection()
        await model.response_created("resp_1")
        await model.audio_delta("resp_1", "item_a", tone_ulaw(100))
        await model.audio_delta("resp_1", "item_b", tone_ulaw(100))
        await call.wait_audio(200 * MS)
        await call.wait_for("mark", count=1)
        events = [f["event"] for f in call.frames if f["event"] in ("media", "mark")]
        assert events == ["media", "mark", "media"]


class TestBargeIn:
    @pytest.mark.parametrize(("dialect", "audio"), [("ga", "g711"), ("beta", "g711"), ("ga", "pcm24k")])
    async def test_barge_in_clears_cancels_and_truncates_at_played_ms(
        self, start_gateway: StartGateway, dialect: str, audio: str
    ) -> None:
        """speech_started → Twilio clear, response.cancel, truncate with audio_end_ms = ms actually played."""
        gw = await start_gateway(dialect, agent={"audio": audio})
        call = await gw.twilio.call(auto_play=False)
        model = await gw.model.next_connection()
        await model.response_created("resp_1")
        if audio == "g711":
            for _ in range(10):
                await model.audio_delta("resp_1", "item_a", tone_ulaw(100))
        else:
            for _ in range(10):
                await model.audio_delta("resp_1", "item_a", tone_pcm24(100))
        # One mark per 200 ms of audio written; the pcm24k resampler holds 5 ms back, so one fewer.
        marks = 5 if audio == "g711" else 4
        await call.wait_for("mark", count=marks)
        await call.play(300 * MS)  # the caller has heard 300 ms when they start talking
        await call.send_audio(tone_ulaw(20))  # frames are handled in order: the marks were seen first
        await model.wait_audio(1)
        await model.speech_started()

        truncate = (await model.wait_for("conversation.item.truncate"))[0]
        await call.wait_for("clear")
        assert truncate["item_id"] == "item_a"
        assert truncate["content_index"] == 0
        # What the last mark echoed confirms (g711: 200 ms): never more than the caller heard.
        assert truncate["audio_end_ms"] == call.played_bytes // MS
        assert 200 <= truncate["audio_end_ms"] <= 300
        assert len(model.of_type("response.cancel")) == 1

        # Audio of the interrupted item still in flight is dropped; the next response plays.
        before = len(call.audio_out)
        late = tone_ulaw(100) if audio == "g711" else tone_pcm24(100)
        await model.audio_delta("resp_1", "item_a", late)
        await model.response_done("resp_1", status="cancelled")
        await model.response_created("resp_2")
        fresh = b"\x55" * 800 if audio == "g711" else tone_pcm24(100)
        await model.audio_delta("resp_2", "item_b", fresh)
        await call.wait_audio(before + 1)
        await model.audio_done("resp_2", "item_b")
        await model.response_done("resp_2")
        await call.wait_for("mark", count=marks + 1)  # item_b's 100 ms, marked when its audio is done
        if audio == "g711":
            assert bytes(call.audio_out[before:]) == fresh

    async def test_no_cancel_when_no_response_in_progress(self, start_gateway: StartGateway) -> None:
        """Caller speech after the agent finished: clear is sent, but no cancel and no truncate."""
        gw = await start_gateway("ga", agent={"audio": "g711"})
        call = await gw.twilio.call()
        model = await gw.model.next_connection()
        await model.speak(tone_ulaw(200), chunk_bytes=800)
        await call.wait_for("mark", count=1)
        await call.send_audio(tone_ulaw(20))
        await model.wait_audio(160)
        await model.speech_started()
        await call.wait_for("clear")
        await call.send_audio(tone_ulaw(20))
        await model.wait_audio(320)
        assert model.of_type("response.cancel") == []
        assert model.of_type("conversation.item.truncate") == []

    async def test_truncate_after_response_done_while_audio_still_plays(
        self, start_gateway: StartGateway
    ) -> None:
        """The model finished, but the caller has heard only part of it: truncate, but no cancel."""
        gw = await start_gateway("ga", agent={"audio": "g711"})
        call = await gw.twilio.call(auto_play=False)
        model = await gw.model.next_connection()
        await model.speak(tone_ulaw(1000), chunk_bytes=800)
        await call.wait_for("mark", count=5)
        await call.play(400 * MS)
        await call.send_audio(tone_ulaw(20))
        await model.wait_audio(160)
        await model.speech_started()
        truncate = (await model.wait_for("conversation.item.truncate"))[0]
        assert truncate["audio_end_ms"] == 400
        await call.wait_for("clear")
        assert model.of_type("response.cancel") == []

    async def test_rejected_truncate_does_not_end_the_call(self, start_gateway: StartGateway) -> None:
        """An error event answering the truncate is logged and survived: the call keeps going."""
        gw = await start_gateway("ga", agent={"audio": "g711"})
        call = await gw.twilio.call(auto_play=False)
        model = await gw.model.next_connection()
        await model.response_created("resp_1")
        await model.audio_delta("resp_1", "item_a", tone_ulaw(500))
        await call.wait_for("mark")
        await model.speech_started()
        await model.wait_for("conversation.item.truncate")
        await model.error("invalid_value", "Audio content of 500ms is already shorter than 800ms")
        await model.speak(b"\x33" * 800, chunk_bytes=800)
        await call.wait_audio(500 * MS + 800)
        await call.send_audio(tone_ulaw(20))
        await model.wait_audio(160)
        assert gw.twilio_api.hangups() == []


class TestConcurrency:
    async def test_twenty_concurrent_calls_are_isolated(self, start_gateway: StartGateway) -> None:
        """20 simultaneous calls: each caller hears only its own model's audio, each model only its caller."""
        gw = await start_gateway(agent={"audio": "g711"})
        calls = await asyncio.gather(*(gw.twilio.call() for _ in range(20)))
        models = [await gw.model.next_connection() for _ in range(20)]

        async def converse(index: int) -> None:
            await calls[index].send_audio(bytes([index + 1]) * 1600)

        async def echo(model_index: int) -> None:
            model = models[model_index]
            await model.wait_audio(1600)
            marker = model.audio_in[0]
            assert set(model.audio_in) == {marker}
            await model.speak(bytes([marker + 100]) * 2400, chunk_bytes=800)

        await asyncio.gather(*(converse(i) for i in range(20)), *(echo(i) for i in range(20)))
        for index, call in enumerate(calls):
            await call.wait_audio(2400)
            assert set(call.audio_out) == {index + 101}
        assert gw.metric("gateway_calls_active", carrier="twilio", engine="openai_realtime_2") == 20
        await asyncio.gather(*(call.stop() for call in calls))
        await asyncio.gather(*(call.wait_closed() for call in calls))
        assert (
            gw.metric(
                "gateway_calls_total",
                carrier="twilio",
                agent="receptionist",
                engine="openai_realtime_2",
                outcome="caller_hangup",
            )
            == 20
        )


class TestEndpoints:
    async def test_health_ready_and_metrics(self, start_gateway: StartGateway) -> None:
        """/healthz and /readyz answer 200; /metrics serves the Prometheus text format."""
        gw = await start_gateway()
        async with gw.http.get(gw.url + "/healthz") as response:
            assert response.status == 200
        async with gw.http.get(gw.url + "/readyz") as response:
            assert response.status == 200
        async with gw.http.get(gw.url + "/metrics") as response:
            assert response.status == 200
            text = await response.text()
        for name in ("gateway_calls_total", "gateway_calls_active", "gateway_call_duration_seconds"):
            assert f"# TYPE {name.removesuffix('_total')}" in text
