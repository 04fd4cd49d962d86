"""Tests for gateway.pricing and gateway.accounting: the default price table, model resolution, the
`pricing:` config section, token counting from both usage dialects, and the per-call cost and latency
metrics.

Every expected number is worked out by hand in the test (token counts from the usage, times the rate
the issue lists), never read back from the table under test, so a wrong default or a wrong formula fails.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from structlog.testing import capture_logs

import gateway.pricing
from gateway.accounting import CallAccounting, PriceBook, _split, token_counts, transcription_cost
from gateway.config import OpenAIAgentConfig as AgentConfig
from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.metrics import GatewayMetrics
from gateway.pricing import (
    DEFAULT_MODELS,
    DEFAULT_TELEPHONY,
    DEFAULT_TRANSCRIPTION,
    TOKEN_KINDS,
    ModelPrice,
    PriceTable,
    PricingConfig,
    TelephonyPrice,
    TranscriptionPrice,
    resolve,
)

AGENT = "sales"

# protocols.md §B.6 (GA), plus image tokens so that every token kind is non-zero.
USAGE_ALL_KINDS: dict[str, Any] = {
    "total_tokens": 1250, "input_tokens": 1050, "output_tokens": 200,
    "input_token_details": {
        "text_tokens": 300, "audio_tokens": 700, "image_tokens": 50, "cached_tokens": 650,
        "cached_tokens_details": {"text_tokens": 256, "audio_tokens": 384, "image_tokens": 10},
    },
    "output_token_details": {"text_tokens": 40, "audio_tokens": 160},
}  # fmt: skip
# Uncached = input - cached for each modality.
COUNTS_ALL_KINDS = {
    "audio_in": 700 - 384, "audio_in_cached": 384,
    "text_in": 300 - 256, "text_in_cached": 256,
    "image_in": 50 - 10, "image_in_cached": 10,
    "audio_out": 160, "text_out": 40,
}  # fmt: skip

# protocols.md §B.6 verbatim (no image tokens).
USAGE_GA: dict[str, Any] = {
    "total_tokens": 1200, "input_tokens": 1000, "output_tokens": 200,
    "input_token_details": {
        "text_tokens": 300, "audio_tokens": 700, "image_tokens": 0, "cached_tokens": 640,
        "cached_tokens_details": {"text_tokens": 256, "audio_tokens": 384, "image_tokens": 0},
    },
    "output_token_details": {"text_tokens": 40, "audio_tokens": 160},
}  # fmt: skip

# protocols.md §A.4 verbatim: the beta usage has only a total cached_tokens.
USAGE_BETA: dict[str, Any] = {
    "total_tokens": 1200, "input_tokens": 1000, "output_tokens": 200,
    "input_token_details": {"text_tokens": 300, "audio_tokens": 700, "cached_tokens": 640},
    "output_token_details": {"text_tokens": 40, "audio_tokens": 160},
}  # fmt: skip


def usd(amount: float) -> Any:
    """Dollar amounts are sums of float products: equal to the hand-worked value within 1e-12."""
    return pytest.approx(amount, abs=1e-12)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> GatewayMetrics:
    return GatewayMetrics(registry)


@pytest.fixture
def prices(metrics: GatewayMetrics) -> PriceBook:
    return PriceBook(PriceTable(), metrics)


def make_call(
    metrics: GatewayMetrics,
    prices: PriceBook,
    *,
    model: str = "gpt-realtime-2",
    transcription: str | None = "whisper-1",
    carrier: str = "twilio",
    clock: FakeClock | None = None,
) -> CallAccounting:
    agent = AgentConfig(
        engine="openai_realtime_2", model=model, input_audio_transcription_model=transcription
    )
    return CallAccounting(
        agent_name=AGENT,
        agent=agent,
        carrier=carrier,
        prices=prices,
        metrics=metrics,
        clock=clock or FakeClock(),
    )


def rates(price: ModelPrice) -> tuple[float, ...]:
    """The six rates the issue lists, in its order: audio in/out, text in/out, cached audio/text in."""
    return (
        price.audio_in,
        price.audio_out,
        price.text_in,
        price.text_out,
        price.audio_in_cached,
        price.text_in_cached,
    )


# ---------------------------------------------------------------------------------------------------


class TestDefaultPrices:
    @pytest.mark.parametrize(
        ("model", "expected"),
        [
            ("gpt-realtime-mini", (10, 20, 0.60, 2.40, 0.30, 0.06)),
            ("gpt-realtime", (32, 64, 4, 16, 0.40, 0.40)),
            ("gpt-realtime-2", (32, 64, 4, 24, 0.40, 0.40)),
            ("gpt-4o-realtime-preview", (40, 80, 5, 20, 2.50, 2.50)),
        ],
    )
    def test_model_rates_are_the_issues(self, model: str, expected: tuple[float, ...]) -> None:
        """Each realtime model the issue names has exactly the USD-per-1M rates it lists."""
        assert rates(DEFAULT_MODELS[model]) == expected

    @pytest.mark.parametrize(
        ("model", "per_minute"),
        [("whisper-1", 0.006), ("gpt-4o-mini-transcribe", 0.003), ("gpt-realtime-whisper", 0.017)],
    )
    def test_transcription_per_minute(self, model: str, per_minute: float) -> None:
        """Each transcription model the issue names is priced per minute at its listed rate."""
        assert DEFAULT_TRANSCRIPTION[model].per_minute == per_minute

    def test_telephony(self) -> None:
        """Twilio is 0.0085/min billed per started minute; Telnyx is 0.0035/min."""
        assert DEFAULT_TELEPHONY["twilio"] == TelephonyPrice(per_minute=0.0085, round_up_to_minute=True)
        assert DEFAULT_TELEPHONY["telnyx"].per_minute == 0.0035

    def test_cached_image_defaults_to_image_price(self) -> None:
        """A model without a cached image rate bills cached image tokens at the image input rate."""
        price = ModelPrice(
            audio_in=1, audio_out=2, text_in=3, text_out=4, audio_in_cached=5, text_in_cached=6, image_in=7
        )
        assert price.per_million("image_in_cached") == 7
        assert price.model_copy(update={"image_in_cached": 0.5}).per_million("image_in_cached") == 0.5

    def test_every_default_row_cites_a_source(self) -> None:
        """In pricing.py, every DEFAULT_* row is directly preceded by a comment naming a web source."""
        lines = Path(gateway.pricing.__file__).read_text(encoding="utf-8").splitlines()
        tables = {
            "DEFAULT_MODELS": DEFAULT_MODELS,
            "DEFAULT_TRANSCRIPTION": DEFAULT_TRANSCRIPTION,
            "DEFAULT_TELEPHONY": DEFAULT_TELEPHONY,
        }
        for table_name, table in tables.items():
            start = next(i for i, line in enumerate(lines) if line.startswith(f"{table_name}: "))
            end = next(i for i in range(start, len(lines)) if lines[i] == "}")
            keys = []
            for i in range(start + 1, end):
                row = re.match(r'\s+"([^"]+)": ', lines[i])
                if row is None:
                    continue
                keys.append(row.group(1))
                comment = []
                j = i - 1
                while lines[j].lstrip().startswith("#"):
                    comment.insert(0, lines[j])
                    j -= 1
                assert comment, f"{table_name}[{row.group(1)!r}] has no comment directly above it"
                assert re.search(r"[a-z]+\.(com|org|io)/", " ".join(comment)), (
                    f"{table_name}[{row.group(1)!r}]: its comment names no source"
                )
            # The scan saw every row, so the check above cannot pass vacuously.
            assert keys == list(table)


class TestResolve:
    @pytest.mark.parametrize(
        ("name", "expected"),
        [
            ("gpt-realtime", "gpt-realtime"),
            ("gpt-realtime-2", "gpt-realtime-2"),
            ("gpt-realtime-2025-08-28", "gpt-realtime"),
            ("gpt-realtime-2-2026-01-01", "gpt-realtime-2"),
            ("gpt-realtime-mini-2025-12-15", "gpt-realtime-mini"),
            ("gpt-4o-realtime-preview-2024-12-17", "gpt-4o-realtime-preview"),
        ],
    )
    def test_exact_then_undated(self, name: str, expected: str) -> None:
        """A name resolves to itself, else to itself without a trailing -YYYY-MM-DD snapshot date."""
        assert resolve(name, DEFAULT_MODELS) == expected

    def test_dated_gpt_realtime_is_not_gpt_realtime_2(self) -> None:
        """gpt-realtime-2025-08-28 is billed at gpt-realtime's 16/1M text output, not gpt-realtime-2's 24
        (the longest-prefix bug the issue names)."""
        price = PriceTable().model("gpt-realtime-2025-08-28")
        assert price is not None
        assert price.text_out == 16

    @pytest.mark.parametrize(
        "name",
        ["gpt-realtime-2x", "gpt-realtime-2-preview", "gpt-realtime-", "gpt-realtime-mini-2025-12", "gpt"],
    )
    def test_never_a_prefix_match(self, name: str) -> None:
        """A name that only starts with a priced name (or has a malformed date) is unpriced."""
        assert resolve(name, DEFAULT_MODELS) is None
        assert PriceTable().model(name) is None

    def test_date_only_stripped_at_the_end(self) -> None:
        """Only a trailing date is a snapshot: a date in the middle of the name is not removed."""
        assert resolve("gpt-realtime-2025-08-28-custom", DEFAULT_MODELS) is None

    def test_transcription_names_resolve_the_same_way(self) -> None:
        """Transcription models use the same exact-then-undated rule."""
        table = PriceTable()
        assert (
            table.transcription_price("gpt-4o-mini-transcribe-2025-12-15")
            == DEFAULT_TRANSCRIPTION["gpt-4o-mini-transcribe"]
        )
        assert table.transcription_price("whisper-1x") is None


def minimal_config() -> dict[str, Any]:
    return copy.deepcopy(
        {
            "server": {"public_url": "https://gw.example.com"},
            "carriers": {"twilio": {"account_sid": "AC123", "auth_token": "tw-token"}},
            "providers": {"openai": {"api_key": "sk-key"}},
            "agents": {"sales": {"engine": "openai_realtime_2"}},
        }
    )


def pricing_problems(pricing: object) -> list[str]:
    raw = minimal_config()
    raw["pricing"] = pricing
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, {})
    return caught.value.problems


class TestPricingConfig:
    ISSUE_EXAMPLE = """
    pricing:
      models:            # per 1M tokens
        gpt-realtime-2: {audio_in: 32, audio_out: 64, text_in: 4, text_out: 24, audio_in_cached: 0.4, text_in_cached: 0.4}
      transcription:     # per minute or per 1M tokens
        whisper-1: {per_minute: 0.006}
      telephony:         # per minute
        twilio: {per_minute: 0.0085, round_up_to_minute: true}
    """  # noqa: E501 - the issue's YAML, verbatim

    def test_issue_example_parses(self) -> None:
        """The `pricing:` YAML from the issue is a valid config section."""
        raw = minimal_config() | yaml.safe_load(self.ISSUE_EXAMPLE)
        pricing = parse_config(raw, {}).pricing
        assert rates(pricing.models["gpt-realtime-2"]) == (32, 64, 4, 24, 0.4, 0.4)
        assert pricing.transcription["whisper-1"] == TranscriptionPrice(per_minute=0.006)
        assert pricing.telephony["twilio"] == TelephonyPrice(per_minute=0.0085, round_up_to_minute=True)

    def test_overrides_replace_and_extend(self) -> None:
        """A YAML entry replaces the default of that name (snapshots included), new names are added,
        and every other default stays."""
        raw = minimal_config()
        raw["pricing"] = {
            "models": {
                "gpt-realtime-2": {"audio_in": 30, "audio_out": 60, "text_in": 3, "text_out": 20,
                                   "audio_in_cached": 0.3, "text_in_cached": 0.3},
                "acme-voice-1": {"audio_in": 1, "audio_out": 2, "text_in": 0.1, "text_out": 0.2,
                                 "audio_in_cached": 0.01, "text_in_cached": 0.01},
            },
            "transcription": {"acme-stt": {"per_minute": 0.001}},
            "telephony": {"twilio": {"per_minute": 0.01}},
        }  # fmt: skip
        table = PriceTable.from_config(parse_config(raw, {}).pricing)

        override = table.model("gpt-realtime-2")
        assert override is not None
        assert rates(override) == (30, 60, 3, 20, 0.3, 0.3)
        assert override.image_in == 0  # not given: the override replaces the whole row
        assert table.model("gpt-realtime-2-2026-01-01") == override
        added = table.model("acme-voice-1")
        assert added is not None
        assert rates(added) == (1, 2, 0.1, 0.2, 0.01, 0.01)
        assert table.model("gpt-realtime") == DEFAULT_MODELS["gpt-realtime"]
        assert table.transcription_price("acme-stt") == TranscriptionPrice(per_minute=0.001)
        assert table.transcription_price("whisper-1") == DEFAULT_TRANSCRIPTION["whisper-1"]
        # round_up_to_minute defaults to false: 90 s is 1.5 minutes.
        assert table.telephony_cost("twilio", 90) == usd(1.5 * 0.01)
        assert table.telephony["telnyx"] == DEFAULT_TELEPHONY["telnyx"]
        # The module defaults are not mutated by an override.
        assert rates(DEFAULT_MODELS["gpt-realtime-2"]) == (32, 64, 4, 24, 0.40, 0.40)

    def test_no_section_is_the_defaults(self) -> None:
        """Without `pricing:` (or with no config at all) the table is exactly the defaults."""
        config = parse_config(minimal_config(), {})
        for table in (PriceTable.from_config(config.pricing), PriceTable.from_config(None), PriceTable()):
            assert table.models == DEFAULT_MODELS
            assert table.transcription == DEFAULT_TRANSCRIPTION
            assert table.telephony == DEFAULT_TELEPHONY

    def test_every_problem_has_its_yaml_path(self) -> None:
        """Unknown keys, negative prices and missing rates are each reported with their YAML path."""
        problems = pricing_problems(
            {
                "models": {
                    "foo": {
                        "audio_in": -1,
                        "audio_out": 1,
                        "text_in": 1,
                        "audio_in_cached": 0,
                        "text_in_cached": 0,
                        "bogus": 1,
                    },
                },
                "transcription": {"whisper-1": {"per_minute": -0.1}},
                "telephony": {"twilio": {"per_minute": 0.01, "round_up": True}, "acme": {}},
                "bogus": {},
            }
        )
        # Float bounds print as 0.0, as they do everywhere else in the config (test_config.py).
        assert sorted(problems) == sorted(
            [
                "pricing.models.foo.audio_in: must be at least 0.0",
                "pricing.models.foo.text_out: required",
                "pricing.models.foo.bogus: unknown key",
                "pricing.transcription.whisper-1.per_minute: must be at least 0.0",
                "pricing.telephony.twilio.round_up: unknown key",
                "pricing.telephony.acme.per_minute: required",
                "pricing.bogus: unknown key",
            ]
        )

    def test_wrong_types(self) -> None:
        """A price that is not a number, or a row that is not a mapping, is reported by path."""
        problems = pricing_problems(
            {"models": {"foo": "cheap"}, "telephony": {"twilio": {"per_minute": "x"}}}
        )
        assert sorted(problems) == [
            "pricing.models.foo: must be a mapping",
            "pricing.telephony.twilio.per_minute: must be a number",
        ]

    def test_pricing_config_is_frozen_and_strict(self) -> None:
        """PricingConfig itself rejects unknown sections (it is the YAML schema, not a loose dict)."""
        with pytest.raises(ValidationError) as caught:
            PricingConfig.model_validate({"carriers": {}})
        assert [(e["loc"], e["type"]) for e in caught.value.errors()] == [(("carriers",), "extra_forbidden")]


class TestSplit:
    def test_beta_example_splits_exactly(self) -> None:
        """§A.4's 640 cached over audio 700 / text 300: 640*0.7 = 448 and 640*0.3 = 192, no remainder."""
        assert _split(640, {"audio": 700, "text": 300, "image": 0}) == {"audio": 448, "text": 192, "image": 0}

    def test_largest_remainder(self) -> None:
        """Floors are topped up by the largest fractional parts, so the parts sum to the total:
        10 over 7/3/5 is 4.67/2/3.33 → floors 4/2/3 (9) → the .67 gets the last token → 5/2/3."""
        assert _split(10, {"audio": 7, "text": 3, "image": 5}) == {"audio": 5, "text": 2, "image": 3}

    def test_remainder_goes_to_the_larger_fraction(self) -> None:
        """640 over audio 700 / text 301: 447.55 and 192.45 → floors 447 + 192 = 639 → audio gets the
        last token (0.55 > 0.45)."""
        assert _split(640, {"audio": 700, "text": 301, "image": 0}) == {"audio": 448, "text": 192, "image": 0}

    def test_clamped_to_the_weights(self) -> None:
        """More cached tokens than input tokens is clamped: every input token is cached, no more."""
        assert _split(5000, {"audio": 700, "text": 300, "image": 0}) == {
            "audio": 700,
            "text": 300,
            "image": 0,
        }

    @pytest.mark.parametrize(("total", "weights"), [(0, {"a": 1}), (-3, {"a": 1}), (5, {"a": 0, "b": 0})])
    def test_nothing_to_split(self, total: int, weights: dict[str, int]) -> None:
        """A zero or negative total, or zero weights, gives zero everywhere."""
        assert _split(total, weights) == dict.fromkeys(weights, 0)


class TestTokenCounts:
    def test_ga_cached_details_as_reported(self) -> None:
        """GA usage (§B.6): cached counts come from cached_tokens_details; uncached = input - cached."""
        assert token_counts(USAGE_GA) == {
            "audio_in": 700 - 384, "audio_in_cached": 384,
            "text_in": 300 - 256, "text_in_cached": 256,
            "image_in": 0, "image_in_cached": 0,
            "audio_out": 160, "text_out": 40,
        }  # fmt: skip

    def test_every_kind(self) -> None:
        """Every one of the eight kinds is read, image included."""
        counts = token_counts(USAGE_ALL_KINDS)
        assert set(counts) == set(TOKEN_KINDS)
        assert counts == COUNTS_ALL_KINDS

    def test_ga_cached_details_clamped_to_input(self) -> None:
        """A cached count above its modality's input count is clamped, so uncached never goes negative."""
        usage = copy.deepcopy(USAGE_GA)
        usage["input_token_details"]["cached_tokens_details"] = {"text_tokens": 500, "audio_tokens": 384}
        counts = token_counts(usage)
        assert (counts["text_in"], counts["text_in_cached"]) == (0, 300)
        assert (counts["audio_in"], counts["audio_in_cached"]) == (316, 384)

    def test_beta_cached_split_in_proportion(self) -> None:
        """Beta usage (§A.4, only cached_tokens=640) is split 448 audio / 192 text, summing to 640."""
        counts = token_counts(USAGE_BETA)
        assert counts == {
            "audio_in": 700 - 448, "audio_in_cached": 448,
            "text_in": 300 - 192, "text_in_cached": 192,
            "image_in": 0, "image_in_cached": 0,
            "audio_out": 160, "text_out": 40,
        }  # fmt: skip
        assert counts["audio_in_cached"] + counts["text_in_cached"] == 640

    def test_beta_cached_with_remainder(self) -> None:
        """With text 301 the split has a remainder; the parts still sum to exactly 640 (448 + 192)."""
        usage = copy.deepcopy(USAGE_BETA)
        usage["input_token_details"]["text_tokens"] = 301
        counts = token_counts(usage)
        assert (counts["audio_in_cached"], counts["text_in_cached"]) == (448, 192)
        assert (counts["audio_in"], counts["text_in"]) == (252, 109)

    def test_beta_cached_above_input_is_clamped(self) -> None:
        """cached_tokens larger than all input tokens: everything is cached, nothing uncached."""
        usage = copy.deepcopy(USAGE_BETA)
        usage["input_token_details"]["cached_tokens"] = 5000
        counts = token_counts(usage)
        assert (counts["audio_in"], counts["audio_in_cached"]) == (0, 700)
        assert (counts["text_in"], counts["text_in_cached"]) == (0, 300)

    def test_no_details_counts_totals_as_text_and_warns(self) -> None:
        """Without token details, input and output totals count as text, with a warning for each side."""
        with capture_logs() as logs:
            counts = token_counts({"total_tokens": 1200, "input_tokens": 1000, "output_tokens": 200})
        assert {kind: n for kind, n in counts.items() if n} == {"text_in": 1000, "text_out": 200}
        assert [(e["event"], e["log_level"], e["side"]) for e in logs] == [
            ("cost.usage_without_breakdown", "warning", "input"),
            ("cost.usage_without_breakdown", "warning", "output"),
        ]

    @pytest.mark.parametrize(
        "usage",
        [
            {},
            {"input_tokens": "many", "input_token_details": None},
            {"input_token_details": {"text_tokens": -5, "audio_tokens": 3.5, "cached_tokens": "x"}},
        ],
    )
    def test_malformed_counts_are_zero(self, usage: dict[str, Any]) -> None:
        """Counts that are missing, negative or not integers count as zero; nothing raises."""
        with capture_logs():
            assert token_counts(usage) == dict.fromkeys(TOKEN_KINDS, 0)


class TestCostPerModel:
    # Test-owned rates, in ModelPrice order: audio in/out, text in/out, cached audio/text in, image
    # in / cached image in; and the call total for USAGE_ALL_KINDS summed by hand.
    RATES: ClassVar[dict[str, tuple[tuple[float, ...], float]]] = {
        # 316*32 + 160*64 + 44*4 + 40*24 + 384*0.4 + 256*0.4 + 40*5 + 10*0.5 = 21949 → $0.021949
        "gpt-realtime-2": ((32, 64, 4, 24, 0.40, 0.40, 5, 0.50), 0.021949),
        # as gpt-realtime-2 but text out 16: 21949 - 40*8 = 21629
        "gpt-realtime-1.5": ((32, 64, 4, 16, 0.40, 0.40, 5, 0.50), 0.021629),
        "gpt-realtime": ((32, 64, 4, 16, 0.40, 0.40, 5, 0.50), 0.021629),
        # 3160 + 3200 + 26.4 + 96 + 115.2 + 15.36 + 32 + 0.8 = 6645.76
        "gpt-realtime-mini": ((10, 20, 0.60, 2.40, 0.30, 0.06, 0.80, 0.08), 0.00664576),
        "gpt-realtime-2.1-mini": ((10, 20, 0.60, 2.40, 0.30, 0.06, 0.80, 0.08), 0.00664576),
        # 12640 + 12800 + 220 + 800 + 960 + 640 (no image price) = 28060
        "gpt-4o-realtime-preview": ((40, 80, 5, 20, 2.50, 2.50, 0, 0), 0.02806),
        # 3160 + 3200 + 26.4 + 96 + 115.2 + 76.8 = 6674.4
        "gpt-4o-mini-realtime-preview": ((10, 20, 0.60, 2.40, 0.30, 0.30, 0, 0), 0.0066744),
    }
    KIND_ORDER = ("audio_in", "audio_out", "text_in", "text_out", "audio_in_cached", "text_in_cached",
                  "image_in", "image_in_cached")  # fmt: skip

    def test_every_default_model_is_covered(self) -> None:
        """This class prices every model in the default table (a new default needs a row here)."""
        assert set(self.RATES) == set(DEFAULT_MODELS)

    @pytest.mark.parametrize("model", list(RATES))
    def test_response_done_costs(
        self, model: str, registry: CollectorRegistry, metrics: GatewayMetrics, prices: PriceBook
    ) -> None:
        """One response.done with every kind non-zero: tokens and dollars per kind, and the call total."""
        call = make_call(metrics, prices, model=model)
        call.response_done("completed", USAGE_ALL_KINDS)

        rate_row, total = self.RATES[model]
        per_kind = dict(zip(self.KIND_ORDER, rate_row, strict=True))
        for kind, count in COUNTS_ALL_KINDS.items():
            labels = {"agent": AGENT, "model": model, "kind": kind}
            assert sample(registry, "gateway_realtime_tokens_total", **labels) == count
            cost = sample(registry, "gateway_cost_usd_total", agent=AGENT, model=model, component=kind)
            assert cost == usd(count * per_kind[kind] / 1e6), kind
        assert call.total_cost_usd == usd(total)
        assert sample(registry, "gateway_responses_total", agent=AGENT, model=model, status="completed") == 1
        assert sample(registry, "gateway_unpriced_usage_total", model=model) is None

    def test_reports_accumulate(
        self, registry: CollectorRegistry, metrics: GatewayMetrics, prices: PriceBook
    ) -> None:
        """Two reports add up, in the metrics and in the call's own tally."""
        call = make_call(metrics, prices, model="gpt-realtime-2")
        call.response_done("completed", USAGE_GA)
        call.response_done("completed", USAGE_GA)
        assert (
            sample(
                registry,
                "gateway_realtime_tokens_total",
                agent=AGENT,
                model="gpt-realtime-2",
                kind="audio_out",
            )
            == 320
        )
        assert call.tokens["audio_in_cached"] == 768
        # 2 * (316*32 + 160*64 + 44*4 + 40*24 + 384*0.4 + 256*0.4) / 1e6 = 2 * 0.021744
        assert call.total_cost_usd == usd(0.043488)

    def test_dated_snapshot_billed_as_undated(
        self, registry: CollectorRegistry, metrics: GatewayMetrics, prices: PriceBook
    ) -> None:
        """gpt-realtime-2025-08-28 costs gpt-realtime's rates and keeps its own name in the labels."""
        model = "gpt-realtime-2025-08-28"
        call = make_call(metrics, prices, model=model)
        call.response_done("completed", USAGE_GA)
        cost = sample(registry, "gateway_cost_usd_total", agent=AGENT, model=model, component="text_out")
        assert cost == usd(40 * 16 / 1e6)
        assert sample(registry, "gateway_unpriced_usage_total", model=model) is None

    def test_beta_usage_priced_with_the_split(
        self, registry: CollectorRegistry, metrics: GatewayMetrics, prices: PriceBook
    ) -> None:
        """Beta usage is priced with the proportional cached split: 448 cached audio at 0.40/1M,
        252 uncached audio at 32/1M, 192 cached text at 0.40/1M, 108 uncached text at 4/1M."""
        call = make_call(metrics, prices, model="gpt-realtime")
        call.response_done("completed", USAGE_BETA)

        def cost(component: str) -> float | None:
            return sample(
                registry, "gateway_cost_usd_total", agent=AGENT, model="gpt-realtime", component=component
            )

        assert cost("audio_in_cached") == usd(448 * 0.40 / 1e6)
        assert cost("audio_in") == usd(252 * 32 / 1e6)
        assert cost("text_in_cached") == usd(192 * 0.40 / 1e6)
        assert cost("text_in") == usd(108 * 4 / 1e6)
        assert cost("image_in") is None  # zero counts make no series

    def test_statuses_counted(
        self, registry: CollectorRegistry, metrics: GatewayMetrics, prices: PriceBook
    ) -> None:
        """responses_total counts each final status; a report without usage still counts its status,
        and an empty status is not counted."""
        call = make_call(metrics, prices)
        for status in ("completed", "completed", "cancelled", "failed", "incomplete", ""):
            call.response_done(status, None)
        labels = {"agent": AGENT, "model": "gpt-realtime-2"}
        assert sample(registry, "gateway_responses_total", **labels, status="completed") == 2
        for status in ("cancelled", "failed", "incomplete"):
            assert sample(registry, "gateway_responses_total", **labels, status=status) == 1
        assert sample(registry, "gateway_responses_total", **labels, status="") is None
        assert call.total_cost_usd == 0


class TestUnpricedModel:
    def test_counted_not_priced_warned_once(
        self, registry: CollectorRegistry, metrics: GatewayMetrics, prices: PriceBook
    ) -> None:
        """An unknown model's tokens are counted, it costs nothing, every report is counted as
        unpriced, and the log warns once per model across all calls sharing the PriceBook."""
        with capture_logs() as logs:
            first = make_call(metrics, prices, model="acme-voice-1")
            first.response_done("completed", USAGE_GA)
            first.response_done("completed", USAGE_GA)
            second = make_call(metrics, prices, model="acme-voice-1")
            second.response_done("completed", USAGE_GA)
            other = make_call(metrics, prices, model="gpt-realtime-2x")
            other.response_done("completed", USAGE_GA)

        labels = {"agent": AGENT, "model": "acme-voice-1"}
        assert sample(registry, "gateway_realtime_tokens_total", **labels, kind="audio_in") == 3 * 316
        assert sample(registry, "gateway_realtime_tokens_total", **labels, kind="text_out") == 3 * 40
        for kind in TOKEN_KINDS:
            assert sample(registry, "gateway_cost_usd_total", **labels, component=kind) is None
        assert first.total_cost_usd == second.total_cost_usd == 0
        assert sample(registry, "gateway_unpriced_usage_total", model="acme-voice-1") == 3
        assert sample(registry, "gateway_unpriced_usage_total", model="gpt-realtime-2x") == 1
        warnings = [e for e in logs if e["event"] == "cost.unpriced_model"]
        assert [(e["model"], e["log_level"]) for e in warnings] == [
            ("acme-voice-1", "warning"),
            ("gpt-realtime-2x", "warning"),
        ]

    def test_no_usage_is_not_unpriced(
        self, registry: CollectorRegistry, metrics: GatewayMetrics, prices: PriceBook
    ) -> None:
        """A response without usage has nothing to price: it is not an unpriced report."""
        call = make_call(metrics, prices, model="acme-voice-1")
        call.response_done("cancelled", None)
        call.response_done("cancelled", {})
        assert sample(registry, "gateway_unpriced_usage_total", model="acme-voice-1") is None


class TestTranscriptionCost:
    def test_by_duration(self) -> None:
        """whisper-1, 12.5 s: 12.5/60 minutes at 0.006 = 0.00125 USD."""
        cost = transcription_cost({"type": "duration", "seconds": 12.5}, DEFAULT_TRANSCRIPTION["whisper-1"])
        assert cost == usd(0.00125)

    def test_by_tokens(self) -> None:
        """gpt-4o-mini-transcribe, 1000 in / 200 out at 3 and 5 per 1M: (3000 + 1000)/1e6 = 0.004 USD."""
        usage = {"type": "tokens", "input_tokens": 1000, "output_tokens": 200, "total_tokens": 1200}
        cost = transcription_cost(usage, DEFAULT_TRANSCRIPTION["gpt-4o-mini-transcribe"])
        assert cost == usd(0.004)

    @pytest.mark.parametrize(
        ("usage", "price"),
        [
            # Duration usage for a model priced only per token.
            ({"type": "duration", "seconds": 10}, TranscriptionPrice(input_per_1m=3, output_per_1m=5)),
            # Token usage for a model priced only per minute.
            (
                {"type": "tokens", "input_tokens": 10, "output_tokens": 2},
                TranscriptionPrice(per_minute=0.006),
            ),
            ({"type": "tokens", "input_tokens": 10}, TranscriptionPrice(per_minute=0.006, input_per_1m=3)),
            ({"type": "duration"}, TranscriptionPrice(per_minute=0.006)),
            ({"type": "duration", "seconds": -1}, TranscriptionPrice(per_minute=0.006)),
            ({"type": "duration", "seconds": "12"}, TranscriptionPrice(per_minute=0.006)),
            ({"type": "characters", "count": 10}, TranscriptionPrice(per_minute=0.006)),
            ({"seconds": 10}, TranscriptionPrice(per_minute=0.006)),
        ],
    )
    def test_unit_without_a_price(self, usage: dict[str, Any], price: TranscriptionPrice) -> None:
        """A usage whose unit the price does not cover (or that is malformed) has no cost: None."""
        assert transcription_cost(usage, price) is None


class TestCallTranscription:
    def test_duration(self, registry: CollectorRegistry, metrics: GatewayMetrics, prices: PriceBook) -> None:
        """A whisper-1 duration report counts its seconds by transcription model and charges the
        call's realtime model with component=transcription."""
        call = make_call(metrics, prices, transcription="whisper-1")
        call.transcription_done({"type": "duration", "seconds": 12.5})
        call.transcription_done({"type": "duration", "seconds": 2.5})
        assert (
            sample(
                registry, "gateway_transcription_usage_total", agent=AGENT, model="whisper-1", unit="seconds"
            )
            == 15.0
        )
        cost = sample(
            registry, "gateway_cost_usd_total", agent=AGENT, model="gpt-realtime-2", component="transcription"
        )
        assert cost == usd(15 / 60 * 0.006)
        assert call.cost_usd == {"transcription": usd(0.0015)}

    def test_tokens(self, registry: CollectorRegistry, metrics: GatewayMetrics, prices: PriceBook) -> None:
        """A token report counts input and output tokens and is priced per token."""
        call = make_call(metrics, prices, transcription="gpt-4o-mini-transcribe")
        call.transcription_done(
            {"type": "tokens", "input_tokens": 1000, "output_tokens": 200, "total_tokens": 1200}
        )
        labels = {"agent": AGENT, "model": "gpt-4o-mini-transcribe"}
        assert sample(registry, "gateway_transcription_usage_total", **labels, unit="input_tokens") == 1000
        assert sample(registry, "gateway_transcription_usage_total", **labels, unit="output_tokens") == 200
        assert call.cost_usd["transcription"] == usd((1000 * 3 + 200 * 5) / 1e6)

    def test_token_usage_for_per_minute_model_is_unpriced(
        self, registry: CollectorRegistry, metrics: GatewayMetrics, prices: PriceBook
    ) -> None:
        """whisper-1 is priced per minute only: a token report is counted in usage but unpriced."""
        call = make_call(metrics, prices, transcription="whisper-1")
        with capture_logs() as logs:
            call.transcription_done({"type": "tokens", "input_tokens": 100, "output_tokens": 20})
        assert (
            sample(
                registry,
                "gateway_transcription_usage_total",
                agent=AGENT,
                model="whisper-1",
                unit="input_tokens",
            )
            == 100
        )
        assert sample(registry, "gateway_unpriced_usage_total", model="whisper-1") == 1
        assert call.cost_usd == {}
        assert [e["model"] for e in logs if e["event"] == "cost.unpriced_model"] == ["whisper-1"]

    def test_duration_usage_for_token_model_is_unpriced(
        self, registry: CollectorRegistry, metrics: GatewayMetrics
    ) -> None:
        """A model priced only per token reporting a duration is counted in seconds but unpriced."""
        table = PriceTable(transcription={"acme-stt": TranscriptionPrice(input_per_1m=1, output_per_1m=2)})
        call = make_call(metrics, PriceBook(table, metrics), transcription="acme-stt")
        with capture_logs():
            call.transcription_done({"type": "duration", "seconds": 30})
        assert (
            sample(
                registry, "gateway_transcription_usage_total", agent=AGENT, model="acme-stt", unit="seconds"
            )
            == 30
        )
        assert sample(registry, "gateway_unpriced_usage_total", model="acme-stt") == 1
        assert call.cost_usd == {}

    @pytest.mark.parametrize("seconds", [-1, -0.5, float("nan"), float("inf"), True, "12"])
    def test_malformed_seconds(
        self, seconds: object, registry: CollectorRegistry, metrics: GatewayMetrics, prices: PriceBook
    ) -> None:
        """A duration that is negative, not finite or not a number is neither counted nor charged
        (a Prometheus counter raises on a negative increment, which would end the call), and is
        reported as unpriced."""
        call = make_call(metrics, prices, transcription="whisper-1")
        with capture_logs():
            call.transcription_done({"type": "duration", "seconds": seconds})
        assert (
            sample(
                registry, "gateway_transcription_usage_total", agent=AGENT, model="whisper-1", unit="seconds"
            )
            is None
        )
        assert call.cost_usd == {}
        assert sample(registry, "gateway_unpriced_usage_total", model="whisper-1") == 1

    def test_disabled(self, registry: CollectorRegistry, metrics: GatewayMetrics, prices: PriceBook) -> None:
        """With transcription disabled (model None) a transcription report counts nothing."""
        call = make_call(metrics, prices, transcription=None)
        call.transcription_done({"type": "duration", "seconds": 12.5})
        call.transcription_done(None)
        for name in ("gateway_transcription_usage", "gateway_cost_usd", "gateway_unpriced_usage"):
            assert not [s for m in registry.collect() if m.name == name for s in m.samples], name
        assert call.cost_usd == {}


class TestTelephonyCost:
    # The code's documented choice: billed per started minute, and a call that never connected audio
    # (0 s) still costs one minute.
    @pytest.mark.parametrize(
        ("duration_s", "minutes"),
        [(0, 1), (1, 1), (59.9, 1), (60, 1), (61, 2), (119.9, 2), (120, 2), (120.1, 3), (3600, 60)],
    )
    @pytest.mark.parametrize(("carrier", "per_minute"), [("twilio", 0.0085), ("telnyx", 0.0035)])
    def test_per_started_minute(
        self, carrier: str, per_minute: float, duration_s: float, minutes: int
    ) -> None:
        """Twilio and Telnyx bill whole started minutes."""
        assert PriceTable().telephony_cost(carrier, duration_s) == usd(minutes * per_minute)

    def test_per_second_when_not_rounded(self) -> None:
        """A carrier without round_up_to_minute is billed by the exact duration."""
        table = PriceTable(telephony={"acme": TelephonyPrice(per_minute=0.012)})
        assert table.telephony_cost("acme", 45) == usd(45 / 60 * 0.012)
        assert table.telephony_cost("acme", 0) == 0

    def test_unknown_carrier(self) -> None:
        """A carrier with no price has no telephony cost: None, not 0."""
        assert PriceTable().telephony_cost("vonage", 60) is None


class TestFinish:
    def test_record_and_call_cost(
        self, registry: CollectorRegistry, metrics: GatewayMetrics, prices: PriceBook
    ) -> None:
        """finish() charges telephony, observes the whole-call cost once, and returns the call.ended
        record: non-zero token kinds, cost per component to 1e-9, and the total."""
        call = make_call(metrics, prices, model="gpt-realtime-2", transcription="whisper-1", carrier="twilio")
        call.response_done("completed", USAGE_GA)
        call.transcription_done({"type": "duration", "seconds": 12.5})
        record = call.finish(61.0)

        # gpt-realtime-2: 316*32, 384*0.4, 44*4, 256*0.4, 160*64, 40*24 per 1M; whisper-1 12.5 s;
        # Twilio 61 s = 2 started minutes.
        assert record == {
            "model": "gpt-realtime-2",
            "tokens": {"audio_in": 316, "audio_in_cached": 384, "text_in": 44, "text_in_cached": 256,
                       "audio_out": 160, "text_out": 40},
            "cost_usd": {
                "audio_in": 0.010112, "audio_in_cached": 0.0001536, "audio_out": 0.01024,
                "telephony": 0.017, "text_in": 0.000176, "text_in_cached": 0.0001024,
                "text_out": 0.00096, "transcription": 0.00125,
            },
            "cost_usd_total": 0.039994,
        }  # fmt: skip
        assert list(record["cost_usd"]) == sorted(record["cost_usd"])
        assert sample(
            registry, "gateway_cost_usd_total", agent=AGENT, model="gpt-realtime-2", component="telephony"
        ) == usd(0.017)
        assert sample(registry, "gateway_call_cost_usd_count", agent=AGENT) == 1
        assert sample(registry, "gateway_call_cost_usd_sum", agent=AGENT) == usd(0.039994)
        # 0.039994 falls in the 0.05 bucket, above 0.025.
        assert sample(registry, "gateway_call_cost_usd_bucket", agent=AGENT, le="0.025") == 0
        assert sample(registry, "gateway_call_cost_usd_bucket", agent=AGENT, le="0.05") == 1

    def test_rounding_to_nano_dollars(self, metrics: GatewayMetrics, prices: PriceBook) -> None:
        """Record amounts are rounded to 1e-9 USD: 1 text token on gpt-realtime-mini is 6e-7 exactly,
        and 1 cached text token (0.06/1M = 6e-8) survives rounding."""
        call = make_call(metrics, prices, model="gpt-realtime-mini", carrier="telnyx")
        call.response_done(
            "completed",
            {"input_token_details": {"text_tokens": 2, "cached_tokens_details": {"text_tokens": 1}}},
        )
        record = call.finish(0)
        assert record["cost_usd"] == {"telephony": 0.0035, "text_in": 6e-7, "text_in_cached": 6e-8}
        assert record["cost_usd_total"] == round(0.0035 + 6e-7 + 6e-8, 9)
        assert record["tokens"] == {"text_in": 1, "text_in_cached": 1}

    def test_unpriced_carrier(
        self, registry: CollectorRegistry, metrics: GatewayMetrics, prices: PriceBook
    ) -> None:
        """A carrier with no price adds no telephony cost and is counted as unpriced usage."""
        call = make_call(metrics, prices, carrier="vonage")
        with capture_logs() as logs:
            record = call.finish(90)
        assert record == {"model": "gpt-realtime-2", "tokens": {}, "cost_usd": {}, "cost_usd_total": 0}
        assert sample(registry, "gateway_unpriced_usage_total", model="vonage") == 1
        assert [e["model"] for e in logs if e["event"] == "cost.unpriced_model"] == ["vonage"]
        assert sample(registry, "gateway_call_cost_usd_count", agent=AGENT) == 1
        assert sample(registry, "gateway_call_cost_usd_sum", agent=AGENT) == 0


class TestLatency:
    def test_turn_latency(
        self, registry: CollectorRegistry, metrics: GatewayMetrics, prices: PriceBook
    ) -> None:
        """Caller stops → first agent audio is observed once per turn with the exact difference; more
        audio without a new stop observes nothing, and a repeated stop (commit after speech_stopped)
        does not move the turn's start."""
        clock = FakeClock(100.0)
        call = make_call(metrics, prices, clock=clock)
        labels = {"agent": AGENT, "model": "gpt-realtime-2"}

        clock.now = 101.0
        call.caller_stopped_speaking()
        clock.now = 101.75
        call.agent_audio_sent()
        assert sample(registry, "gateway_turn_latency_seconds_count", **labels) == 1
        assert sample(registry, "gateway_turn_latency_seconds_sum", **labels) == 0.75

        clock.now = 102.0
        call.agent_audio_sent()
        assert sample(registry, "gateway_turn_latency_seconds_count", **labels) == 1

        clock.now = 103.0
        call.caller_stopped_speaking()
        clock.now = 103.25
        call.caller_stopped_speaking()
        clock.now = 103.5
        call.agent_audio_sent()
        assert sample(registry, "gateway_turn_latency_seconds_count", **labels) == 2
        assert sample(registry, "gateway_turn_latency_seconds_sum", **labels) == 0.75 + 0.5
        assert sample(registry, "gateway_turn_latency_seconds_bucket", **labels, le="0.5") == 1
        assert sample(registry, "gateway_turn_latency_seconds_bucket", **labels, le="0.8") == 2

    def test_no_turn_without_a_stop(
        self, registry: CollectorRegistry, metrics: GatewayMetrics, prices: PriceBook
    ) -> None:
        """Agent audio with no caller stop before it (the greeting) is not a turn."""
        clock = FakeClock()
        call = make_call(metrics, prices, clock=clock)
        call.agent_audio_sent()
        assert (
            sample(registry, "gateway_turn_latency_seconds_count", agent=AGENT, model="gpt-realtime-2") == 0
        )

    def test_first_audio(
        self, registry: CollectorRegistry, metrics: GatewayMetrics, prices: PriceBook
    ) -> None:
        """The first agent audio observes gateway_first_audio_seconds once, measured from the call's start."""
        clock = FakeClock(50.0)
        call = make_call(metrics, prices, clock=clock)
        clock.now = 51.5
        call.agent_audio_sent()
        clock.now = 60.0
        call.agent_audio_sent()
        assert sample(registry, "gateway_first_audio_seconds_count", agent=AGENT) == 1
        assert sample(registry, "gateway_first_audio_seconds_sum", agent=AGENT) == 1.5

    def test_barge_ins(self, registry: CollectorRegistry, metrics: GatewayMetrics, prices: PriceBook) -> None:
        """Each barge-in increments gateway_barge_ins_total for the agent."""
        call = make_call(metrics, prices)
        call.barge_in()
        call.barge_in()
        assert sample(registry, "gateway_barge_ins_total", agent=AGENT) == 2

    def test_snapshot(self, metrics: GatewayMetrics, prices: PriceBook) -> None:
        """The live view reports the model, a UTC start time, the elapsed seconds and the cost so far."""
        clock = FakeClock(10.0)
        call = make_call(metrics, prices, clock=clock)
        call.response_done("completed", USAGE_GA)
        clock.now = 22.5
        view = call.snapshot()
        assert view["model"] == "gpt-realtime-2"
        assert view["duration_s"] == 12.5
        assert view["cost_usd"] == 0.021744
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", view["started_at"])
