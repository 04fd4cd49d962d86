"""What a call is given and how it can end: the process-wide `Services`, the `EndReason`s, and the carrier
encodings the bridge carries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import aiohttp

from gateway.accounting import PriceBook
from gateway.audio import ALAW_8K, ULAW_8K, AudioFormat
from gateway.calls import CallRegistry
from gateway.config import GatewayConfig
from gateway.engines.base import EngineFactory
from gateway.hold import HoldClip
from gateway.metrics import GatewayMetrics

EndReason = Literal[
    "caller_hangup",
    "carrier_timeout",
    "engine_closed",
    "engine_error",
    "engine_connect_failed",
    "max_duration",
    "agent_hangup",
    "idle_timeout",
    "transferred",
    "shutdown",
    "error",
    "protocol_violation",  # the carrier flooded the socket, or sent a message it had to be closed for
    "rejected",
]
# Endings after which the caller is no longer ours to hang up.
NO_HANGUP = frozenset({"caller_hangup", "transferred"})
# Endings the caller is told about by the carrier itself before the hang-up, and which of
# `server.announcements` says it. The agent cannot say it: its model is gone or being shut down.
ANNOUNCED: dict[str, Literal["shutdown", "engine_failure"]] = {
    "shutdown": "shutdown",
    "engine_error": "engine_failure",
    "engine_connect_failed": "engine_failure",
    "error": "engine_failure",
}
# When both tasks finish together, the more telling reason wins: an engine failure explains the
# caller hang-up that follows it, not the other way round.
END_PRIORITY: dict[str, int] = {
    "engine_error": 4,
    "error": 3,
    "protocol_violation": 3,
    "engine_closed": 2,
    "carrier_timeout": 1,
}
_CARRIER_FORMATS = {"PCMU": ULAW_8K, "AUDIO/X-MULAW": ULAW_8K, "PCMA": ALAW_8K, "AUDIO/X-ALAW": ALAW_8K}


def carrier_format(encoding: str) -> AudioFormat | None:
    """The G.711 law a carrier's `start` frame announces (Twilio `audio/x-mulaw`, Telnyx `PCMU`/`PCMA`);
    None for anything else (G722, OPUS, L16), which the bridge does not carry."""
    return _CARRIER_FORMATS.get(encoding.upper())


@dataclass(frozen=True, slots=True)
class Services:
    """The process-wide things every call uses."""

    config: GatewayConfig
    engines: EngineFactory
    registry: CallRegistry
    metrics: GatewayMetrics
    prices: PriceBook
    http: aiohttp.ClientSession
    hold_clips: dict[str, HoldClip] = field(default_factory=dict)
