"""The objects built from one config file, held so that a reload can replace them in one step.

aiohttp freezes an application's state once it has started (setting a key afterwards is deprecated),
so what a reload must change cannot be separate app keys. It is one frozen `Runtime` (the config,
the carriers and the `Services` calls start with) behind the `RUNTIME` key's `RuntimeRef`, whose
`current` a reload replaces with a single assignment. A handler that takes `current` once sees one
consistent config for its whole run, awaits included; a call keeps the `Services` it started with.

What outlives a reload is process-wide and stays under its own key: the call registry (its limit is
changed in place), the media tokens (re-keyed in place, see gateway.tokens), metrics, the HTTP session.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from gateway.accounting import PriceBook
from gateway.calls import CallRegistry
from gateway.carriers.telnyx import TelnyxCarrier
from gateway.carriers.twilio import TwilioCarrier
from gateway.config import GatewayConfig
from gateway.engines.factory import Engines
from gateway.hold import HoldClip
from gateway.metrics import GatewayMetrics
from gateway.pricing import PriceTable
from gateway.services import Services


@dataclass(frozen=True, slots=True)
class Runtime:
    services: Services
    twilio_carrier: TwilioCarrier | None = None
    telnyx_carrier: TelnyxCarrier | None = None

    @property
    def config(self) -> GatewayConfig:
        return self.services.config

    @property
    def twilio(self) -> TwilioCarrier:
        """The Twilio carrier. Only Twilio's routes and outbound calls through Twilio ask for it, and
        those exist only when it is configured (a reload cannot add or remove a carrier)."""
        if self.twilio_carrier is None:
            raise LookupError("carriers.twilio is not configured")
        return self.twilio_carrier

    @property
    def telnyx(self) -> TelnyxCarrier:
        """The Telnyx carrier (see `twilio`)."""
        if self.telnyx_carrier is None:
            raise LookupError("carriers.telnyx is not configured")
        return self.telnyx_carrier


class RuntimeRef:
    """The one mutable cell under the `RUNTIME` app key."""

    __slots__ = ("current",)

    def __init__(self, current: Runtime) -> None:
        self.current = current


def build_runtime(
    config: GatewayConfig,
    hold_clips: dict[str, HoldClip],
    *,
    http: aiohttp.ClientSession,
    registry: CallRegistry,
    metrics: GatewayMetrics,
    previous: Runtime | None = None,
) -> Runtime:
    """Everything new calls and webhooks need from `config`. With `previous` (a reload), a carrier
    whose section did not change is kept as it is, and a changed Telnyx carrier takes over the
    outbound calls still ringing and the announcements still being spoken, so a reload never forgets
    a call it dialed nor leaves a caller waiting for a hang-up."""
    twilio: TwilioCarrier | None = None
    if config.carriers.twilio is not None:
        old_twilio = previous.twilio_carrier if previous is not None else None
        if old_twilio is not None and old_twilio.config == config.carriers.twilio:
            twilio = old_twilio
        else:
            twilio = TwilioCarrier(config.carriers.twilio, http)
    telnyx: TelnyxCarrier | None = None
    if config.carriers.telnyx is not None:
        old_telnyx = previous.telnyx_carrier if previous is not None else None
        if old_telnyx is not None and old_telnyx.config == config.carriers.telnyx:
            telnyx = old_telnyx
        else:
            telnyx = TelnyxCarrier(config.carriers.telnyx, http)
            if old_telnyx is not None:
                telnyx.take_over(old_telnyx)
    services = Services(
        config=config,
        engines=Engines(config.providers, http),
        registry=registry,
        metrics=metrics,
        prices=PriceBook(PriceTable.from_config(config.pricing), metrics),
        http=http,
        hold_clips=hold_clips,
    )
    return Runtime(services, twilio, telnyx)
