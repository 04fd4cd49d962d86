"""Prometheus metrics, registered on an injected registry (a fresh one per test, the default in production).

Labels come only from small closed sets (carrier, agent, engine, model, kind, component, outcome,
status, reason, direction, result, source): never call ids, phone numbers or anything a peer sent.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

CALL_DURATION_BUCKETS_S = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600)
CALL_COST_BUCKETS_USD = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# ok: applied; partial: applied except fields that need a restart; invalid: rejected, nothing changed.
ReloadResult = Literal["ok", "partial", "invalid"]
RELOAD_RESULTS: tuple[ReloadResult, ...] = ("ok", "partial", "invalid")
LATENCY_BUCKETS_S = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1, 1.25, 1.5, 2, 3, 5, 10)


def gateway_version() -> str:
    try:
        return version("telephony-gateway")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.calls_total = Counter(
            "gateway_calls",
            "Calls handled, by how they ended (outcome) or why they were refused (rejected_*).",
            ["carrier", "agent", "engine", "outcome"],
            registry=registry,
        )
        self.calls_active = Gauge(
            "gateway_calls_active", "Calls currently bridged.", ["carrier", "engine"], registry=registry
        )
        self.call_duration_seconds = Histogram(
            "gateway_call_duration_seconds",
            "Duration of bridged calls, from media start to teardown.",
            ["carrier", "agent", "engine"],
            buckets=CALL_DURATION_BUCKETS_S,
            registry=registry,
        )
        self.webhook_rejections_total = Counter(
            "gateway_webhook_rejections",
            "Carrier webhooks and media sockets refused, by reason (bad_signature, token_expired, ...).",
            ["carrier", "reason"],
            registry=registry,
        )
        self.bad_frames_total = Counter(
            "gateway_bad_frames",
            "Frames from a carrier or model socket that were not used, by source (carrier or engine) and "
            "reason (malformed_json, bad_base64, oversize, rate_limited, ...).",
            ["source", "reason"],
            registry=registry,
        )
        # -- usage and cost ---------------------------------------------------------------------
        self.realtime_tokens_total = Counter(
            "gateway_realtime_tokens",
            "Realtime model tokens from response.done usage, by kind (cached input counted separately).",
            ["agent", "model", "kind"],
            registry=registry,
        )
        self.transcription_usage_total = Counter(
            "gateway_transcription_usage",
            "Caller transcription usage, by unit (seconds, input_tokens, output_tokens).",
            ["agent", "model", "unit"],
            registry=registry,
        )
        self.cost_usd_total = Counter(
            "gateway_cost_usd",
            "Estimated cost in USD, by the call's realtime model and component (token kind, "
            "transcription, telephony).",
            ["agent", "model", "component"],
            registry=registry,
        )
        self.unpriced_usage_total = Counter(
            "gateway_unpriced_usage",
            "Usage reports that had no price in the pricing table (counted in tokens, priced 0).",
            ["model"],
            registry=registry,
        )
        self.call_cost_usd = Histogram(
            "gateway_call_cost_usd",
            "Estimated whole-call cost in USD (model tokens, transcription and telephony).",
            ["agent"],
            buckets=CALL_COST_BUCKETS_USD,
            registry=registry,
        )
        self.responses_total = Counter(
            "gateway_responses",
            "Model responses, by final status (completed, cancelled, failed, incomplete).",
            ["agent", "model", "status"],
            registry=registry,
        )
        # -- latency and behaviour --------------------------------------------------------------
        self.turn_latency_seconds = Histogram(
            "gateway_turn_latency_seconds",
            "Caller stops speaking (speech_stopped, or commit) to first agent audio written to the carrier.",
            ["agent", "model"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.first_audio_seconds = Histogram(
            "gateway_first_audio_seconds",
            "Media start to the first agent audio written to the carrier.",
            ["agent"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.barge_ins_total = Counter(
            "gateway_barge_ins", "Caller interruptions of the agent.", ["agent"], registry=registry
        )
        self.engine_errors_total = Counter(
            "gateway_engine_errors",
            "Error events and failures reported by the model side, by code.",
            ["engine", "code"],
            registry=registry,
        )
        self.engine_reconnects_total = Counter(
            "gateway_engine_reconnects",
            "Model sessions replaced mid-call, by result: ok (reconnected after a drop), failed (gave "
            "up; the call ended), rollover (planned, before the session's maximum length), "
            "rollover_failed (the replacement could not be opened; the old session carries on).",
            ["engine", "result"],
            registry=registry,
        )
        self.transcode_cpu_seconds_total = Counter(
            "gateway_transcode_cpu_seconds",
            "CPU time spent converting audio, by direction (caller_to_model, model_to_caller).",
            ["direction"],
            registry=registry,
        )
        # -- configuration ----------------------------------------------------------------------
        self.config_reloads_total = Counter(
            "gateway_config_reloads",
            "Config reloads (SIGHUP), by result: ok; partial (applied, except fields that need a restart); "
            "invalid (rejected, the running config stays).",
            ["result"],
            registry=registry,
        )
        for result in RELOAD_RESULTS:  # every result exported from the start, so increase() sees the first
            self.config_reloads_total.labels(result)
        self.config_last_reload_successful = Gauge(
            "gateway_config_last_reload_successful",
            "1 if the last config load (startup or reload) was applied, 0 if it was rejected.",
            registry=registry,
        )
        self.config_last_reload_success_timestamp_seconds = Gauge(
            "gateway_config_last_reload_success_timestamp_seconds",
            "Unix time of the last config load (startup or reload) that was applied.",
            registry=registry,
        )
        build_info = Gauge(
            "gateway_build_info",
            "Always 1; labels name the running build.",
            ["version", "python"],
            registry=registry,
        )
        build_info.labels(gateway_version(), ".".join(map(str, sys.version_info[:3]))).set(1)

    def config_loaded(self, now: float) -> None:
        """A config was applied: at startup, or by a reload (ok or partial)."""
        self.config_last_reload_successful.set(1)
        self.config_last_reload_success_timestamp_seconds.set(now)

    def config_reloaded(self, result: ReloadResult, now: float) -> None:
        self.config_reloads_total.labels(result).inc()
        if result == "invalid":
            self.config_last_reload_successful.set(0)
        else:
            self.config_loaded(now)
