"""When a dropped model socket is worth replacing, how long to wait, and when a replacement counts as
having worked (gateway.reconnect applies these)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from gateway.config import ReconnectConfig

# Close codes after which a new socket may well work: the server went away or restarts (1001, 1012;
# OpenAI closes 1001 "Your session hit the maximum duration of 60 minutes.", reported in
# pollen-robotics/reachy_mini_conversation_app#134), failed internally (1011), asks us to come back
# (1013), a proxy in between failed (1014), or the connection died without a close frame (1006, also
# what aiohttp reports for a missed heartbeat). Not retried: 1000 (the server ended the conversation
# on purpose), 1002-1010 (we sent something it refuses; a new socket would get the same) and
# application codes (4000: OpenAI's retired beta protocol).
RETRYABLE_CLOSE_CODES = frozenset({1001, 1006, 1011, 1012, 1013, 1014})
# A replacement has recovered the call once it produced a model event the call uses (audio, a
# response, the caller's speech detected, a transcript, a tool call) or stayed up this long. Until
# then, its drop carries on the same recovery (attempts and budget) instead of starting a fresh one:
# otherwise a provider that accepts every socket and drops it at once is reconnected for the rest of
# the call, a replay paid each time. `session.updated` proves nothing: such a provider acknowledges
# the configuration and then drops.
PROVEN_AFTER_S = 30.0


def retry_cause(close_code: int | None) -> str | None:
    """Why reconnecting could help after a socket closed with `close_code`; None if it could not."""
    if close_code is None:
        return "connection_lost"
    return f"close_{close_code}" if close_code in RETRYABLE_CLOSE_CODES else None


def backoff_delay(attempt: int, config: ReconnectConfig, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before reconnect `attempt` (1-based), jittered so calls dropped together by one
    outage do not all come back in the same instant."""
    base = config.backoff_s[min(attempt, len(config.backoff_s)) - 1]
    return base * (1 + config.jitter * (2 * rand() - 1))


def late_result_text(name: str, output: str) -> str:
    """A tool result whose call the current session never saw (it was made before a reconnect)."""
    return f"[Result of the {name} tool you called just before the line dropped: {output}]"


@dataclass(slots=True)
class Recovery:
    """One outage of a call's model, from the first drop until a replacement has proved itself (see
    PROVEN_AFTER_S) or the attempts or the budget ran out."""

    attempts: int = 0  # connection attempts made so far, over every drop of this outage
    spent_s: float = 0.0  # silence so far: from each drop until its replacement carried the call
    installed: bool = False  # a replacement carries the call and has not proved itself yet
