"""Prices in USD: realtime models per 1M tokens, transcription per minute or per 1M tokens, telephony
per minute. The defaults below can be overridden and extended from YAML (`pricing:`).

Model resolution is exact name first, then the name without a trailing dated snapshot
(`gpt-realtime-2025-08-28` → `gpt-realtime`), and never a prefix match: a prefix match bills
`gpt-realtime-2025-08-28` as `gpt-realtime-2`, which is a different model at a different price.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

TokenKind = Literal[
    "audio_in",
    "audio_in_cached",
    "text_in",
    "text_in_cached",
    "image_in",
    "image_in_cached",
    "audio_out",
    "text_out",
]
TOKEN_KINDS: tuple[TokenKind, ...] = (
    "audio_in",
    "audio_in_cached",
    "text_in",
    "text_in_cached",
    "image_in",
    "image_in_cached",
    "audio_out",
    "text_out",
)
_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")


class _Price(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelPrice(_Price):
    """USD per 1M tokens of each kind. Cached image input defaults to the image input price."""

    audio_in: float = Field(ge=0)
    audio_out: float = Field(ge=0)
    text_in: float = Field(ge=0)
    text_out: float = Field(ge=0)
    audio_in_cached: float = Field(ge=0)
    text_in_cached: float = Field(ge=0)
    image_in: float = Field(0.0, ge=0)
    image_in_cached: float | None = Field(None, ge=0)

    def per_million(self, kind: TokenKind) -> float:
        if kind == "image_in_cached":
            return self.image_in if self.image_in_cached is None else self.image_in_cached
        price: float = getattr(self, kind)
        return price


class TranscriptionPrice(_Price):
    """Per minute of caller audio, and/or per 1M tokens (for models that report token usage)."""

    per_minute: float | None = Field(None, ge=0)
    input_per_1m: float | None = Field(None, ge=0)
    output_per_1m: float | None = Field(None, ge=0)


class TelephonyPrice(_Price):
    per_minute: float = Field(ge=0)
    round_up_to_minute: bool = False


def _m(*rates: float) -> ModelPrice:
    """Rates in the order audio in/out, text in/out, cached audio/text in, [image in, cached image in]."""
    names = (
        "audio_in",
        "audio_out",
        "text_in",
        "text_out",
        "audio_in_cached",
        "text_in_cached",
        "image_in",
        "image_in_cached",
    )
    return ModelPrice.model_validate(dict(zip(names, rates, strict=False)))


DEFAULT_MODELS: dict[str, ModelPrice] = {
    # developers.openai.com/api/docs/models/gpt-realtime-2 (text 4/0.40/24, audio 32/0.40/64, image 5/0.50)
    "gpt-realtime-2": _m(32, 64, 4, 24, 0.40, 0.40, 5, 0.50),
    # developers.openai.com/api/docs/models/gpt-realtime-1.5 (text 4/0.40/16, audio 32/0.40/64, image 5/0.50)
    "gpt-realtime-1.5": _m(32, 64, 4, 16, 0.40, 0.40, 5, 0.50),
    # openai.com/api/pricing, gpt-realtime (GA 2025-08-28): same rates as gpt-realtime-1.5
    "gpt-realtime": _m(32, 64, 4, 16, 0.40, 0.40, 5, 0.50),
    # developers.openai.com/api/docs/models/gpt-realtime-2.1-mini quotes these as "same as GPT-Realtime
    # Mini" (text 0.60/0.06/2.40, audio 10/0.30/20, image 0.80/0.08)
    "gpt-realtime-mini": _m(10, 20, 0.60, 2.40, 0.30, 0.06, 0.80, 0.08),
    # developers.openai.com/api/docs/models/gpt-realtime-2.1-mini (text 0.60/0.06/2.40, audio
    # 10/0.30/20, image 0.80/0.08)
    "gpt-realtime-2.1-mini": _m(10, 20, 0.60, 2.40, 0.30, 0.06, 0.80, 0.08),
    # openai.com/api/pricing (preview generation, 2024-12 price cut): audio 40/2.50/80, text 5/2.50/20
    "gpt-4o-realtime-preview": _m(40, 80, 5, 20, 2.50, 2.50),
    # openai.com/api/pricing: audio 10/0.30/20, text 0.60/0.30/2.40
    "gpt-4o-mini-realtime-preview": _m(10, 20, 0.60, 2.40, 0.30, 0.30),
}

DEFAULT_TRANSCRIPTION: dict[str, TranscriptionPrice] = {
    # openai.com/api/pricing, "Transcription and speech generation": Whisper $0.006 / minute
    "whisper-1": TranscriptionPrice(per_minute=0.006),
    # openai.com/api/pricing: gpt-4o-transcribe ~$0.006/min; tokens: audio in $6, text out $10 per 1M
    "gpt-4o-transcribe": TranscriptionPrice(per_minute=0.006, input_per_1m=6.0, output_per_1m=10.0),
    # openai.com/api/pricing: gpt-4o-mini-transcribe ~$0.003/min; tokens: audio in $3, text out $5 per 1M
    "gpt-4o-mini-transcribe": TranscriptionPrice(per_minute=0.003, input_per_1m=3.0, output_per_1m=5.0),
    # openai.com/api/pricing: gpt-realtime-whisper $0.017 / minute
    "gpt-realtime-whisper": TranscriptionPrice(per_minute=0.017),
}

DEFAULT_TELEPHONY: dict[str, TelephonyPrice] = {
    # twilio.com/en-us/voice/pricing/us: inbound local calls $0.0085/min, billed per started minute
    "twilio": TelephonyPrice(per_minute=0.0085, round_up_to_minute=True),
    # telnyx.com/pricing/call-control: inbound $0.0035/min (US), billed per minute
    "telnyx": TelephonyPrice(per_minute=0.0035, round_up_to_minute=True),
}


class EnginePrice(_Price):
    """Engines billed by connection time rather than tokens."""

    per_minute: float = Field(ge=0)


DEFAULT_ENGINES: dict[str, EnginePrice] = {
    # help.elevenlabs.io "How much does ElevenLabs Agents cost?": extra agent minutes cost 400 credits
    # on Creator, and credits beyond the plan are $0.30 per 1,000 → $0.12 per minute. LLM usage is
    # passed through separately and not included; Business plans pay less per minute.
    "elevenlabs_convai": EnginePrice(per_minute=0.12),
}


class PricingConfig(_Price):
    """The YAML `pricing:` section: each entry replaces (or adds) the default of that name."""

    models: dict[str, ModelPrice] = Field(default_factory=dict)
    transcription: dict[str, TranscriptionPrice] = Field(default_factory=dict)
    telephony: dict[str, TelephonyPrice] = Field(default_factory=dict)
    engines: dict[str, EnginePrice] = Field(default_factory=dict)


def resolve(name: str, table: Mapping[str, object]) -> str | None:
    """The table key that prices `name`: exact, else without a trailing -YYYY-MM-DD; never a prefix."""
    if name in table:
        return name
    undated = _SNAPSHOT.sub("", name)
    if undated != name and undated in table:
        return undated
    return None


@dataclass(frozen=True, slots=True)
class PriceTable:
    models: dict[str, ModelPrice] = field(default_factory=lambda: dict(DEFAULT_MODELS))
    transcription: dict[str, TranscriptionPrice] = field(default_factory=lambda: dict(DEFAULT_TRANSCRIPTION))
    telephony: dict[str, TelephonyPrice] = field(default_factory=lambda: dict(DEFAULT_TELEPHONY))
    engines: dict[str, EnginePrice] = field(default_factory=lambda: dict(DEFAULT_ENGINES))

    @classmethod
    def from_config(cls, config: PricingConfig | None) -> PriceTable:
        if config is None:
            return cls()
        return cls(
            models={**DEFAULT_MODELS, **config.models},
            transcription={**DEFAULT_TRANSCRIPTION, **config.transcription},
            telephony={**DEFAULT_TELEPHONY, **config.telephony},
            engines={**DEFAULT_ENGINES, **config.engines},
        )

    def model(self, name: str) -> ModelPrice | None:
        key = resolve(name, self.models)
        return None if key is None else self.models[key]

    def transcription_price(self, name: str) -> TranscriptionPrice | None:
        key = resolve(name, self.transcription)
        return None if key is None else self.transcription[key]

    def engine_minutes_cost(self, engine: str, duration_s: float) -> float | None:
        """What a per-minute engine bills for `duration_s` of connection; None if it is not one."""
        price = self.engines.get(engine)
        return None if price is None else duration_s / 60 * price.per_minute

    def telephony_cost(self, carrier: str, duration_s: float) -> float | None:
        """What the carrier bills for a call of `duration_s`; None when the carrier has no price."""
        price = self.telephony.get(carrier)
        if price is None:
            return None
        minutes = duration_s / 60
        if price.round_up_to_minute:
            # Billed per started minute; a call that never connected audio still costs one.
            minutes = max(1, -(-duration_s // 60))
        return minutes * price.per_minute
