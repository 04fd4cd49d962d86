"""Cost and latency end to end: a fake call with known usage → exact tokens and dollars on /metrics,
checked by promtool and by a real Prometheus server scraping the gateway."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import Gateway, StartGateway, free_port
from tests.fakes.openai_realtime import FakeRealtimeConnection
from tests.fakes.signals import tone_ulaw
from tests.fakes.twilio import FakeTwilioCall

# Two responses with every token kind (GA shape, protocols.md §B.6), and one transcription.
USAGE_1 = {
    "total_tokens": 1200, "input_tokens": 1000, "output_tokens": 200,
    "input_token_details": {
        "text_tokens": 300, "audio_tokens": 700, "image_tokens": 0, "cached_tokens": 640,
        "cached_tokens_details": {"text_tokens": 256, "audio_tokens": 384, "image_tokens": 0},
    },
    "output_token_details": {"text_tokens": 40, "audio_tokens": 160},
}  # fmt: skip
USAGE_2 = {
    "total_tokens": 1530, "input_tokens": 1000, "output_tokens": 530,
    "input_token_details": {"text_tokens": 120, "audio_tokens": 880, "image_tokens": 0, "cached_tokens": 0},
    "output_token_details": {"text_tokens": 30, "audio_tokens": 500},
}  # fmt: skip
TRANSCRIPTION_USAGE = {"type": "duration", "seconds": 7.5}

# Worked out by hand from gpt-realtime-2's rates (USD per 1M: audio 32/64, text 4/24, cached 0.40).
EXPECTED_TOKENS = {"audio_in": 316 + 880, "audio_in_cached": 384, "text_in": 44 + 120, "text_in_cached": 256,
                   "audio_out": 660, "text_out": 70}  # fmt: skip
EXPECTED_COST = {
    "audio_in": 1196 * 32 / 1e6,  # 0.038272
    "audio_in_cached": 384 * 0.40 / 1e6,  # 0.0001536
    "text_in": 164 * 4 / 1e6,  # 0.000656
    "text_in_cached": 256 * 0.40 / 1e6,  # 0.0001024
    "audio_out": 660 * 64 / 1e6,  # 0.04224
    "text_out": 70 * 24 / 1e6,  # 0.00168
    "transcription": 7.5 / 60 * 0.006,  # 0.00075 (whisper-1, per minute)
    "telephony": 1 * 0.0085,  # Twilio: a call under a minute is billed one started minute
}
EXPECTED_TOTAL = sum(EXPECTED_COST.values())
AGENT = {"model": "gpt-realtime-2", "audio": "g711", "input_audio_transcription_model": "whisper-1"}


async def scripted_call(gw: Gateway) -> tuple[FakeTwilioCall, FakeRealtimeConnection]:
    """Caller speaks, model answers twice with known usage, caller interrupts once, caller hangs up."""
    call = await gw.twilio.call()
    model = await gw.model.next_connection()
    await call.send_audio(tone_ulaw(100))
    await model.wait_audio(800)
    await model.speech_stopped()
    await model.transcription_completed(TRANSCRIPTION_USAGE)
    await model.response_created("resp_1")
    await model.audio_delta("resp_1", "item_1", tone_ulaw(100))
    await call.wait_audio(800)
    await model.speech_started()  # the agent is still talking: a barge-in
    await call.wait_for("clear")
    await model.audio_done("resp_1", "item_1")
    await model.response_done("resp_1", status="cancelled", usage=USAGE_1)
    await model.speech_stopped()
    await model.response_created("resp_2")
    await model.audio_delta("resp_2", "item_2", tone_ulaw(100))
    await model.audio_done("resp_2", "item_2")
    await model.response_done("resp_2", usage=USAGE_2)
    await call.wait_audio(1600)
    return call, model


async def hang_up(call: FakeTwilioCall) -> None:
    await call.stop()
    await call.wait_closed()


class TestCostOnMetrics:
    async def test_two_responses_give_exact_tokens_and_dollars(self, start_gateway: StartGateway) -> None:
        """Known usage in two response.done events shows up on /metrics to the token and to 1e-9 USD."""
        gw = await start_gateway(agent=AGENT)
        call, _ = await scripted_call(gw)
        await hang_up(call)
        labels = {"agent": "receptionist", "model": "gpt-realtime-2"}
        for kind, count in EXPECTED_TOKENS.items():
            assert gw.metric("gateway_realtime_tokens_total", **labels, kind=kind) == count, kind
        for component, usd in EXPECTED_COST.items():
            assert gw.metric("gateway_cost_usd_total", **labels, component=component) == pytest.approx(
                usd, abs=1e-9
            ), component
        assert gw.metric("gateway_call_cost_usd_sum", agent="receptionist") == pytest.approx(
            EXPECTED_TOTAL, abs=1e-9
        )
        assert gw.metric("gateway_call_cost_usd_count", agent="receptionist") == 1
        assert (
            gw.metric(
                "gateway_transcription_usage_total", agent="receptionist", model="whisper-1", unit="seconds"
            )
            == 7.5
        )
        assert gw.metric("gateway_responses_total", **labels, status="completed") == 1
        assert gw.metric("gateway_responses_total", **labels, status="cancelled") == 1

    async def test_latency_and_behaviour_metrics(self, start_gateway: StartGateway) -> None:
        """Turn latency is observed per answered turn, first audio once, barge-ins counted."""
        gw = await start_gateway(agent=AGENT)
        call, _ = await scripted_call(gw)
        await hang_up(call)
        assert (
            gw.metric("gateway_turn_latency_seconds_count", agent="receptionist", model="gpt-realtime-2") == 2
        )
        assert gw.metric("gateway_first_audio_seconds_count", agent="receptionist") == 1
        assert gw.metric("gateway_barge_ins_total", agent="receptionist") == 1
        assert gw.metric("gateway_build_info", version=_version(gw), python=_python()) == 1

    async def test_transcoding_cpu_is_counted(self, start_gateway: StartGateway) -> None:
        """pcm24k calls add process CPU time per direction to gateway_transcode_cpu_seconds_total."""
        gw = await start_gateway(agent={"audio": "pcm24k"})
        call = await gw.twilio.call()
        model = await gw.model.next_connection()
        await call.send_audio(tone_ulaw(200))
        await model.wait_for("input_audio_buffer.append", count=10)
        await model.speak(b"\x00\x10" * 4800, chunk_bytes=4800)
        await call.wait_for("mark")
        await hang_up(call)
        assert gw.metric("gateway_transcode_cpu_seconds_total", direction="caller_to_model") > 0
        assert gw.metric("gateway_transcode_cpu_seconds_total", direction="model_to_caller") > 0

    async def test_engine_errors_are_counted_by_code(self, start_gateway: StartGateway) -> None:
        """Every model error event is counted under its code, fatal or not."""
        gw = await start_gateway(agent=AGENT)
        call = await gw.twilio.call()
        model = await gw.model.next_connection()
        await model.error("invalid_value")
        await model.error("invalid_value")
        await model.close()
        await call.wait_closed()
        assert gw.metric("gateway_engine_errors_total", engine="openai_realtime_2", code="invalid_value") == 2

    async def test_unpriced_model_counts_tokens_at_zero_cost(self, start_gateway: StartGateway) -> None:
        """A model missing from the price table: tokens counted, no dollars, gateway_unpriced_usage_total."""
        gw = await start_gateway(agent={**AGENT, "model": "gpt-realtime-9"})
        call, _ = await scripted_call(gw)
        await hang_up(call)
        labels = {"agent": "receptionist", "model": "gpt-realtime-9"}
        assert gw.metric("gateway_realtime_tokens_total", **labels, kind="audio_out") == 660
        assert gw.metric("gateway_cost_usd_total", **labels, component="audio_out") == 0
        assert gw.metric("gateway_unpriced_usage_total", model="gpt-realtime-9") == 2

    async def test_yaml_pricing_overrides_defaults(self, start_gateway: StartGateway) -> None:
        """`pricing:` in YAML replaces a model's default rates and the carrier's per-minute rate."""
        pricing = {"models": {"gpt-realtime-2": {"audio_in": 1, "audio_out": 2, "text_in": 3, "text_out": 4,
                                                  "audio_in_cached": 5, "text_in_cached": 6}},
                   "telephony": {"twilio": {"per_minute": 0.5}}}  # fmt: skip
        gw = await start_gateway(agent=AGENT, pricing=pricing)
        call, _ = await scripted_call(gw)
        await hang_up(call)
        labels = {"agent": "receptionist", "model": "gpt-realtime-2"}
        assert gw.metric("gateway_cost_usd_total", **labels, component="audio_out") == pytest.approx(
            660 * 2 / 1e6
        )
        telephony = gw.metric("gateway_cost_usd_total", **labels, component="telephony")
        assert 0 < telephony < 0.5 / 60  # not rounded up: overrides replace the whole carrier entry


class TestCallsEndpoint:
    async def test_live_calls_with_cost_so_far(self, start_gateway: StartGateway) -> None:
        """GET /calls (bearer admin_token) lists live calls with model and cost so far, no numbers."""
        gw = await start_gateway(agent=AGENT, server=_server(admin_token="let-me-in"))
        call = await gw.twilio.call()
        model = await gw.model.next_connection()
        await model.response_done("resp_1", usage=USAGE_1)
        await call.send_audio(tone_ulaw(20))
        await model.wait_audio(160)
        body = await _get_calls(gw, "Bearer let-me-in")
        assert body["count"] == 1
        live = body["calls"][0]
        assert set(live) == {"id", "carrier", "agent", "model", "started_at", "duration_s", "cost_usd"}
        assert live["id"] == call.call_sid
        assert (live["carrier"], live["agent"], live["model"]) == ("twilio", "receptionist", "gpt-realtime-2")
        tokens_usd = sum(v for k, v in EXPECTED_COST.items() if k not in ("transcription", "telephony"))
        usage_1_usd = (316 * 32 + 384 * 0.4 + 44 * 4 + 256 * 0.4 + 160 * 64 + 40 * 24) / 1e6
        assert 0 < live["cost_usd"] < tokens_usd
        assert live["cost_usd"] == pytest.approx(usage_1_usd, abs=1e-9)
        assert live["started_at"].endswith("Z")
        await hang_up(call)
        assert (await _get_calls(gw, "Bearer let-me-in"))["count"] == 0

    async def test_wrong_token_is_401_and_no_token_configured_is_404(
        self, start_gateway: StartGateway
    ) -> None:
        """Without the right bearer token /calls is refused; without server.admin_token it does not exist."""
        gw = await start_gateway(server=_server(admin_token="let-me-in"))
        async with gw.http.get(gw.url + "/calls", headers={"Authorization": "Bearer nope"}) as response:
            assert response.status == 401
        async with gw.http.get(gw.url + "/calls") as response:
            assert response.status == 401
        plain = await start_gateway()
        async with plain.http.get(plain.url + "/calls", headers={"Authorization": "Bearer x"}) as response:
            assert response.status == 404


class TestPrometheus:
    async def test_promtool_accepts_the_exposition(self, start_gateway: StartGateway, tmp_path: Path) -> None:
        """`promtool check metrics` finds no problem in the gateway's /metrics after a real call."""
        promtool = shutil.which("promtool")
        if promtool is None:
            pytest.skip("promtool is not installed (Debian package `prometheus`; .ci/run installs it)")
        gw = await start_gateway(agent=AGENT)
        call, _ = await scripted_call(gw)
        await hang_up(call)
        async with gw.http.get(gw.url + "/metrics") as response:
            text = await response.text()
        process = await asyncio.create_subprocess_exec(
            promtool,
            "check",
            "metrics",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(text.encode()), 30)
        assert process.returncode == 0, (out + err).decode()

    @pytest.mark.timeout(90)
    async def test_real_prometheus_scrapes_the_cost(
        self, start_gateway: StartGateway, tmp_path: Path
    ) -> None:
        """A real Prometheus server scrapes the gateway during a call; sum(gateway_cost_usd_total) matches."""
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.skip("prometheus is not installed (Debian package `prometheus`; .ci/run installs it)")
        gw = await start_gateway(agent=AGENT)
        port = free_port()
        target = gw.url.removeprefix("http://")
        (tmp_path / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"scrape_configs:\n  - job_name: gateway\n    static_configs: [{{targets: ['{target}']}}]\n"
        )
        process = await asyncio.create_subprocess_exec(
            binary, "--log.level=error", f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            api = f"http://127.0.0.1:{port}"
            call, _ = await scripted_call(gw)
            await hang_up(call)
            value = await _query_until(api, "sum(gateway_cost_usd_total)", EXPECTED_TOTAL, deadline_s=60)
            assert value == pytest.approx(EXPECTED_TOTAL, abs=1e-9)
        finally:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _query_until(api: str, query: str, expected: float, deadline_s: float) -> float:
    """Poll Prometheus's HTTP API (bounded) until the query returns `expected`; returns the last value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    last = float("nan")
    async with aiohttp.ClientSession() as http:
        while loop.time() < deadline:
            try:
                async with http.get(f"{api}/api/v1/query", params={"query": query}) as response:
                    data: dict[str, Any] = await response.json()
                result = data["data"]["result"]
                if result:
                    last = float(result[0]["value"][1])
                    if abs(last - expected) <= 1e-9:
                        return last
            except aiohttp.ClientConnectionError:
                pass  # still starting up
            await asyncio.sleep(0.5)  # an external process's scrape cadence; nothing to wait on instead
    return last


async def _get_calls(gw: Gateway, authorization: str) -> dict[str, Any]:
    async with gw.http.get(gw.url + "/calls", headers={"Authorization": authorization}) as response:
        assert response.status == 200
        body: dict[str, Any] = await response.json()
    return body


def _server(**extra: Any) -> dict[str, Any]:
    # server.port/public_url are placeholders: the test server listens on its own port, and the fake
    # Twilio signs with whatever public_url the config says.
    return {"host": "127.0.0.1", "port": 1, "public_url": "http://127.0.0.1:1", **extra}


def _version(gw: Gateway) -> str:
    from gateway.metrics import gateway_version  # noqa: PLC0415

    return gateway_version()


def _python() -> str:
    import sys  # noqa: PLC0415

    return ".".join(map(str, sys.version_info[:3]))


class _RecordingCounter:
    """Stands in for a prometheus counter child: records what is added."""

    def __init__(self) -> None:
        self.added: list[float] = []

    def inc(self, amount: float = 1.0) -> None:
        self.added.append(amount)


class TestCpuSampling:
    def test_one_conversion_in_n_is_timed_and_scaled(self) -> None:
        """gateway_transcode_cpu_seconds_total is sampled: the first conversion of a call and then one
        in CPU_SAMPLE_EVERY are timed, each counted CPU_SAMPLE_EVERY times; every conversion still
        converts."""
        from gateway.audio import CallerToModel  # noqa: PLC0415
        from gateway.audio_path import CPU_SAMPLE_EVERY, _CpuSampler  # noqa: PLC0415

        counter = _RecordingCounter()
        sampler = _CpuSampler(counter)  # type: ignore[arg-type]
        converter, reference = CallerToModel(), CallerToModel()
        frame = tone_ulaw(20)
        for _ in range(2 * CPU_SAMPLE_EVERY + 1):
            assert sampler.convert(converter, frame) == reference.convert(frame)
        assert len(counter.added) == 3
        assert all(amount > 0 for amount in counter.added)
