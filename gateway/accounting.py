"""Per-call usage, cost and latency accounting, fed by the bridge and published as Prometheus metrics.

Cost labels: `model` is always the call's realtime model, so "cost per model" is everything a call on
that model cost; `component` says which part (a token kind, `transcription` or `telephony`). The
transcription model appears in `gateway_transcription_usage_total`.

Cached input: the GA `cached_tokens_details` breakdown is used as reported. The beta usage has only a
total `cached_tokens`; it is split across audio, text and image input in proportion to their input
counts (largest remainder, so the parts add up to the total exactly).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import structlog

from gateway.config import AnyAgentConfig
from gateway.metrics import GatewayMetrics
from gateway.pricing import TOKEN_KINDS, ModelPrice, PriceTable, TokenKind, TranscriptionPrice

log = structlog.get_logger("gateway.cost")

_INPUT_KINDS = ("audio", "text", "image")


def _int(mapping: Mapping[str, Any], key: str) -> int:
    value = mapping.get(key)
    return value if isinstance(value, int) and value > 0 else 0


def _obj(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _seconds(usage: Mapping[str, Any]) -> float | None:
    """A duration usage's `seconds`, or None unless it is a finite number >= 0 (a Prometheus counter
    raises on a negative increment, which would end the call)."""
    value = usage.get("seconds")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def _split(total: int, weights: dict[str, int]) -> dict[str, int]:
    """Split `total` in proportion to `weights` (largest remainder: the parts sum to `total`)."""
    weight_sum = sum(weights.values())
    if total <= 0 or weight_sum <= 0:
        return dict.fromkeys(weights, 0)
    total = min(total, weight_sum)
    exact = {k: total * w / weight_sum for k, w in weights.items()}
    parts = {k: int(v) for k, v in exact.items()}
    for key in sorted(exact, key=lambda k: exact[k] - parts[k], reverse=True)[: total - sum(parts.values())]:
        parts[key] += 1
    return parts


def token_counts(usage: Mapping[str, Any]) -> dict[TokenKind, int]:
    """Token counts by kind from a `response.done` usage object of either dialect (§A.4, §B.6)."""
    details_in = _obj(usage.get("input_token_details"))
    details_out = _obj(usage.get("output_token_details"))
    inputs = {kind: _int(details_in, f"{kind}_tokens") for kind in _INPUT_KINDS}
    cached_details = _obj(details_in.get("cached_tokens_details"))
    if cached_details:
        cached = {kind: min(_int(cached_details, f"{kind}_tokens"), inputs[kind]) for kind in _INPUT_KINDS}
    else:
        cached = _split(_int(details_in, "cached_tokens"), inputs)
    counts: dict[TokenKind, int] = {
        "audio_in": inputs["audio"] - cached["audio"],
        "audio_in_cached": cached["audio"],
        "text_in": inputs["text"] - cached["text"],
        "text_in_cached": cached["text"],
        "image_in": inputs["image"] - cached["image"],
        "image_in_cached": cached["image"],
        "audio_out": _int(details_out, "audio_tokens"),
        "text_out": _int(details_out, "text_tokens"),
    }
    # Without a breakdown, totals still count: input as text, output as text (the cheapest reading,
    # flagged in the log so the operator knows the estimate is low).
    if not any(inputs.values()) and _int(usage, "input_tokens"):
        counts["text_in"] = _int(usage, "input_tokens")
        log.warning("cost.usage_without_breakdown", side="input")
    if not (counts["audio_out"] or counts["text_out"]) and _int(usage, "output_tokens"):
        counts["text_out"] = _int(usage, "output_tokens")
        log.warning("cost.usage_without_breakdown", side="output")
    return counts


def transcription_cost(usage: Mapping[str, Any], price: TranscriptionPrice) -> float | None:
    """USD for one transcription usage report, or None when the price cannot cover its unit."""
    if usage.get("type") == "duration":
        seconds = _seconds(usage)
        if price.per_minute is None or seconds is None:
            return None
        return seconds / 60 * price.per_minute
    if usage.get("type") == "tokens":
        if price.input_per_1m is None or price.output_per_1m is None:
            return None
        return (
            _int(usage, "input_tokens") * price.input_per_1m
            + _int(usage, "output_tokens") * price.output_per_1m
        ) / 1e6
    return None


class PriceBook:
    """The price table plus one warning per unpriced model (shared by every call of the process)."""

    def __init__(self, table: PriceTable, metrics: GatewayMetrics) -> None:
        self.table = table
        self._metrics = metrics
        self._warned: set[str] = set()

    def unpriced(self, model: str, what: str) -> None:
        self._metrics.unpriced_usage_total.labels(model).inc()
        if model not in self._warned:
            self._warned.add(model)
            log.warning(
                "cost.unpriced_model",
                model=model,
                usage=what,
                hint="add it under pricing: in the config; its usage is counted but priced 0",
            )

    def model(self, name: str) -> ModelPrice | None:
        return self.table.model(name)

    def transcription(self, name: str) -> TranscriptionPrice | None:
        return self.table.transcription_price(name)


class CallAccounting:
    """One call's tokens, cost and latency. Not shared between calls."""

    def __init__(
        self,
        *,
        agent_name: str,
        agent: AnyAgentConfig,
        carrier: str,
        prices: PriceBook,
        metrics: GatewayMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.agent_name = agent_name
        self.model = agent.resolved_model
        self.engine = agent.engine
        self.carrier = carrier
        self._transcription_model = agent.input_audio_transcription_model
        self._prices = prices
        self._metrics = metrics
        self._clock = clock
        self.started = clock()
        self.started_at = datetime.now(UTC)
        self.tokens: dict[TokenKind, int] = dict.fromkeys(TOKEN_KINDS, 0)
        self.cost_usd: dict[str, float] = {}
        self._turn_started: float | None = None
        self._engine_started: float | None = None  # a per-minute engine bills from here
        self._first_audio_seen = False
        self._turn_latency = metrics.turn_latency_seconds.labels(agent_name, self.model)

    @property
    def total_cost_usd(self) -> float:
        return sum(self.cost_usd.values())

    def _charge(self, component: str, usd: float) -> None:
        self.cost_usd[component] = self.cost_usd.get(component, 0.0) + usd
        self._metrics.cost_usd_total.labels(self.agent_name, self.model, component).inc(usd)

    def response_done(self, status: str, usage: Mapping[str, Any] | None) -> None:
        if status:
            self._metrics.responses_total.labels(self.agent_name, self.model, status).inc()
        if not usage:
            return
        counts = token_counts(usage)
        price = self._prices.model(self.model)
        if price is None:
            self._prices.unpriced(self.model, "realtime tokens")
        for kind, count in counts.items():
            if not count:
                continue
            self.tokens[kind] += count
            self._metrics.realtime_tokens_total.labels(self.agent_name, self.model, kind).inc(count)
            if price is not None:
                self._charge(kind, count * price.per_million(kind) / 1e6)

    def transcription_done(self, usage: Mapping[str, Any] | None) -> None:
        model = self._transcription_model
        if not usage or model is None:
            return
        seconds = _seconds(usage)
        if usage.get("type") == "duration" and seconds is not None:
            self._metrics.transcription_usage_total.labels(self.agent_name, model, "seconds").inc(seconds)
        elif usage.get("type") == "tokens":
            for unit in ("input_tokens", "output_tokens"):
                self._metrics.transcription_usage_total.labels(self.agent_name, model, unit).inc(
                    _int(usage, unit)
                )
        price = self._prices.transcription(model)
        usd = None if price is None else transcription_cost(usage, price)
        if usd is None:
            self._prices.unpriced(model, f"transcription ({usage.get('type')})")
            return
        self._charge("transcription", usd)

    def engine_started(self) -> None:
        """The model session is set up: per-minute engines bill from now (not for failed set-ups)."""
        self._engine_started = self._clock()

    def caller_started_speaking(self) -> None:
        """The caller spoke again before the agent answered: the turn now ends later."""
        self._turn_started = None

    def caller_stopped_speaking(self) -> None:
        """speech_stopped (or a commit without one): the turn's latency clock starts."""
        if self._turn_started is None:
            self._turn_started = self._clock()

    def agent_audio_sent(self) -> None:
        """Agent audio was written to the carrier socket."""
        now = self._clock()
        if not self._first_audio_seen:
            self._first_audio_seen = True
            self._metrics.first_audio_seconds.labels(self.agent_name).observe(now - self.started)
        if self._turn_started is not None:
            self._turn_latency.observe(now - self._turn_started)
            self._turn_started = None

    def barge_in(self) -> None:
        """The caller interrupted agent audio that had not finished playing."""
        self._metrics.barge_ins_total.labels(self.agent_name).inc()

    def finish(self, duration_s: float) -> dict[str, Any]:
        """Charge telephony, observe the whole-call cost; returns the record for `call.ended`."""
        engine_s = 0.0 if self._engine_started is None else self.started + duration_s - self._engine_started
        engine_minutes = self._prices.table.engine_minutes_cost(self.engine, max(0.0, engine_s))
        if engine_minutes is not None and engine_s > 0:
            self._charge("engine_minutes", engine_minutes)
        telephony = self._prices.table.telephony_cost(self.carrier, duration_s)
        if telephony is None:
            self._prices.unpriced(self.carrier, "telephony minutes")
        else:
            self._charge("telephony", telephony)
        total = self.total_cost_usd
        self._metrics.call_cost_usd.labels(self.agent_name).observe(total)
        return {
            "model": self.model,
            "tokens": {kind: n for kind, n in self.tokens.items() if n},
            "cost_usd": {k: round(v, 9) for k, v in sorted(self.cost_usd.items())},
            "cost_usd_total": round(total, 9),
        }

    def snapshot(self) -> dict[str, Any]:
        """The live view for `GET /calls`."""
        return {
            "model": self.model,
            "started_at": self.started_at.isoformat().replace("+00:00", "Z"),
            "duration_s": round(self._clock() - self.started, 3),
            "cost_usd": round(self.total_cost_usd, 9),
        }
