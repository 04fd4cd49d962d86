"""Prometheus metrics, registered on an injected registry (a fresh one per test, the default in production).

Labels come only from small closed sets (carrier, agent, engine, outcome): never call ids or numbers.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

CALL_DURATION_BUCKETS_S = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600)


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
            "gateway_calls_active",
            "Calls currently bridged.",
            ["carrier", "engine"],
            registry=registry,
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
            "Carrier webhooks and media sockets refused, by reason (bad_signature, bad_stream_token, ...).",
            ["carrier", "reason"],
            registry=registry,
        )
