"""The frame budget (token bucket and flood verdict), the bad-frame audit, and the limits' config."""

from __future__ import annotations

import pytest
from aiohttp import WebSocketError, WSCloseCode
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.frames import FLOOD_GAP_S, FrameAudit, FrameBudget, safe_name, socket_error_reason
from gateway.metrics import GatewayMetrics
from gateway.schema import LimitsConfig


class Clock:
    """A hand-driven monotonic clock."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def admitted(budget: FrameBudget, frames: int) -> int:
    return sum(budget.admit() for _ in range(frames))


class TestFrameBudget:
    def test_burst_then_sustained_rate(self) -> None:
        """A full bucket admits `burst` frames at once, then refills at the sustained rate."""
        clock = Clock()
        budget = FrameBudget(rate_per_s=200, burst=400, flood_timeout_s=5, clock=clock)
        assert admitted(budget, 500) == 400
        assert budget.dropped == 100
        clock.now += 0.5  # 100 tokens
        assert admitted(budget, 150) == 100

    def test_honest_stream_is_never_dropped(self) -> None:
        """50 media frames and 50 mark echoes a second for ten minutes: nothing dropped."""
        clock = Clock()
        budget = FrameBudget(rate_per_s=200, burst=400, flood_timeout_s=5, clock=clock)
        for _ in range(600 * 100):
            clock.now += 0.01
            assert budget.admit()
        assert budget.dropped == 0
        assert not budget.flooding

    def test_the_bucket_never_holds_more_than_the_burst(self) -> None:
        """An hour of silence does not bank an hour of frames."""
        clock = Clock()
        budget = FrameBudget(rate_per_s=200, burst=400, flood_timeout_s=5, clock=clock)
        clock.now += 3600
        assert admitted(budget, 1000) == 400

    def test_a_sustained_flood_is_flagged_after_the_timeout(self) -> None:
        """Frames dropped continuously for flood_timeout_s make `flooding` true, and it stays true."""
        clock = Clock()
        budget = FrameBudget(rate_per_s=100, burst=100, flood_timeout_s=2, clock=clock)
        assert admitted(budget, 100) == 100
        while clock.now < 101.9:
            clock.now += 0.001  # 1000 frames a second against a budget of 100
            budget.admit()
            assert not budget.flooding
        while clock.now < 102.1:
            clock.now += 0.001
            budget.admit()
        assert budget.flooding

    def test_short_bursts_do_not_add_up_to_a_flood(self) -> None:
        """Bursts over the limit separated by quiet spells longer than FLOOD_GAP_S never flag a flood."""
        clock = Clock()
        budget = FrameBudget(rate_per_s=100, burst=100, flood_timeout_s=2, clock=clock)
        for _ in range(10):
            assert admitted(budget, 300) == 100  # e.g. the mark echoes a `clear` releases at once
            clock.now += FLOOD_GAP_S + 0.5
        assert budget.dropped == 10 * 200
        assert not budget.flooding


class TestFrameAudit:
    def test_every_bad_frame_is_counted_by_source_and_reason(self) -> None:
        """Each call of bad() increments gateway_bad_frames_total{source,reason}."""
        registry = CollectorRegistry()
        audit = FrameAudit(GatewayMetrics(registry), interval_s=10)
        for _ in range(3):
            audit.bad("carrier", "twilio", "malformed_json")
        audit.bad("engine", "openai_realtime_2", "unknown_event", "response.new_thing")
        sample = registry.get_sample_value
        assert sample("gateway_bad_frames_total", {"source": "twilio", "reason": "malformed_json"}) == 3
        labels = {"source": "openai_realtime_2", "reason": "unknown_event"}
        assert sample("gateway_bad_frames_total", labels) == 1
        assert audit.total == 4

    def test_logging_is_rate_limited_per_reason_with_a_suppressed_count(self) -> None:
        """One warning per (source, reason) per interval; the next one says how many were skipped."""
        clock = Clock()
        audit = FrameAudit(GatewayMetrics(CollectorRegistry()), interval_s=10, clock=clock)
        with capture_logs() as logs:
            for _ in range(50):
                audit.bad("carrier", "twilio", "bad_base64")
            audit.bad("carrier", "twilio", "binary")  # another reason has its own allowance
            clock.now += 10
            audit.bad("carrier", "twilio", "bad_base64")
        assert [(entry["event"], entry["reason"], entry.get("suppressed")) for entry in logs] == [
            ("carrier.bad_frame", "bad_base64", None),
            ("carrier.bad_frame", "binary", None),
            ("carrier.bad_frame", "bad_base64", 49),
        ]
        assert logs[-1]["count"] == 51
        assert all(entry["log_level"] == "warning" for entry in logs)

    def test_flush_reports_what_is_still_suppressed(self) -> None:
        """flush() logs the suppressed remainder once, so a burst at the end of a call is not lost."""
        audit = FrameAudit(GatewayMetrics(CollectorRegistry()), interval_s=10)
        with capture_logs() as logs:
            for _ in range(5):
                audit.bad("engine", "elevenlabs_convai", "malformed_json")
            audit.flush()
            audit.flush()
        assert [(entry["event"], entry.get("suppressed")) for entry in logs] == [
            ("engine.bad_frame", None),
            ("engine.bad_frame", 4),
        ]

    def test_interval_zero_logs_every_frame(self) -> None:
        """bad_frame_log_interval_s: 0 turns the rate limit off (debugging a carrier integration)."""
        audit = FrameAudit(GatewayMetrics(CollectorRegistry()), interval_s=0)
        with capture_logs() as logs:
            for _ in range(3):
                audit.bad("carrier", "telnyx", "binary")
        assert len(logs) == 3


class TestSafeName:
    @pytest.mark.parametrize("name", ["transcription", "response.new_event", "mcp:tool-1", "a" * 48])
    def test_identifiers_are_kept(self, name: str) -> None:
        """Short identifiers (an unknown event's name) are logged as they are."""
        assert safe_name(name) == name

    @pytest.mark.parametrize("name", ["", "a" * 49, "+15551230000 called", "x\ny", '{"payload": "AAAA"}'])
    def test_anything_else_is_masked(self, name: str) -> None:
        """Long, empty or free-form names (which could carry a number or a payload) become `?`."""
        assert safe_name(name) == "?"


class TestSocketErrorReason:
    def test_oversize(self) -> None:
        """aiohttp's MESSAGE_TOO_BIG (1009) is an oversize frame."""
        error = WebSocketError(WSCloseCode.MESSAGE_TOO_BIG, "too big")
        assert socket_error_reason(error) == "oversize"

    def test_other_websocket_violations(self) -> None:
        """Any other WebSocketError (invalid UTF-8, protocol error) is invalid_websocket."""
        assert socket_error_reason(WebSocketError(WSCloseCode.INVALID_TEXT, "bad")) == "invalid_websocket"
        assert socket_error_reason(WebSocketError(WSCloseCode.PROTOCOL_ERROR, "bad")) == "invalid_websocket"

    def test_transport_trouble_is_no_bad_frame(self) -> None:
        """A reset or a missing pong is the network's doing, not a frame's."""
        assert socket_error_reason(ConnectionResetError()) is None
        assert socket_error_reason(TimeoutError()) is None


def _config(limits: dict[str, object]) -> dict[str, object]:
    return {
        "server": {"public_url": "https://gw.example.com", "limits": limits},
        "carriers": {"twilio": {"account_sid": "AC1", "auth_token": "t"}},
        "providers": {"openai": {"api_key": "sk"}},
        "agents": {"a": {"engine": "openai_realtime_2"}},
        "default_agent": "a",
    }


class TestLimitsConfig:
    def test_defaults(self) -> None:
        """Without `server.limits` the documented defaults apply."""
        config = parse_config(_config({}), env={})
        assert config.server.limits == LimitsConfig(
            max_message_bytes=65536,
            frames_per_s=200,
            frame_burst=400,
            flood_timeout_s=5,
            idle_timeout_s=15,
            heartbeat_s=5,
            bad_frame_log_interval_s=10,
        )

    def test_values_and_null_heartbeat(self) -> None:
        """Every knob can be set; `heartbeat_s: null` turns the media socket heartbeat off."""
        limits = {"max_message_bytes": 8192, "frames_per_s": 150, "frame_burst": 100, "heartbeat_s": None}
        config = parse_config(_config(limits), env={})
        assert config.server.limits.max_message_bytes == 8192
        assert config.server.limits.frame_burst == 100
        assert config.server.limits.heartbeat_s is None

    def test_floors_that_would_cut_every_call_are_refused(self) -> None:
        """Limits below what an honest carrier sends are config errors naming each key."""
        limits = {
            "max_message_bytes": 1000,
            "frames_per_s": 50,
            "frame_burst": 10,
            "flood_timeout_s": 0,
            "idle_timeout_s": -1,
            "heartbeat_s": 0.5,
            "bogus": 1,
        }
        with pytest.raises(ConfigError) as error:
            parse_config(_config(limits), env={})
        assert sorted(error.value.problems) == [
            "server.limits.bogus: unknown key",
            "server.limits.flood_timeout_s: must be greater than 0.0",
            "server.limits.frame_burst: must be at least 50",
            "server.limits.frames_per_s: must be at least 100.0",
            "server.limits.heartbeat_s: must be at least 1.0",
            "server.limits.idle_timeout_s: must be greater than 0.0",
            "server.limits.max_message_bytes: must be at least 4096",
        ]
