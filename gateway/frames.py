"""Bad frames and floods: the per-call frame budget, and counting and logging what was not used.

Nothing here raises: a peer that sends garbage gets its garbage counted in `gateway_bad_frames_total`
and, at a bounded rate, logged. Logs name the source, the reason and what was wrong, never the
frame's content (which could carry a phone number, a transcript or anything at all).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import structlog
from aiohttp import WebSocketError, WSCloseCode

from gateway.errors import BadFrameReason
from gateway.metrics import GatewayMetrics

log = structlog.get_logger("gateway.frames")

Side = Literal["carrier", "engine"]
# A flood is frames being dropped with no pause this long between two drops: a burst the bucket
# absorbs (the mark echoes a `clear` releases) drops for milliseconds, a flood for as long as it lasts.
FLOOD_GAP_S = 1.0
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,48}")


def safe_name(name: str) -> str:
    """An event name a peer sent, fit for a log line: short identifiers as they are, else `?`."""
    return name if _SAFE_NAME.fullmatch(name) else "?"


def socket_error_reason(error: object) -> BadFrameReason | None:
    """The bad-frame reason of a WebSocket ERROR message's exception, if a peer's frame caused it.

    aiohttp refuses a message over `max_msg_size` (1009) or a WebSocket-level violation such as
    invalid UTF-8 in a text frame (1007) by closing the socket; other errors are transport trouble.
    """
    if isinstance(error, WebSocketError):
        return "oversize" if error.code == WSCloseCode.MESSAGE_TOO_BIG else "invalid_websocket"
    return None


class FrameBudget:
    """A token bucket over one socket's frames, plus the verdict on a sustained flood.

    `admit()` costs a token; the bucket refills at `rate_per_s` up to `burst`. A frame without a token
    is dropped unread. When drops go on for `flood_timeout_s` (pauses shorter than FLOOD_GAP_S do not
    end a flood), `flooding` turns true and stays true: the caller ends the call, so that one socket
    cannot keep the process busy at the expense of every other call.
    """

    __slots__ = ("_burst", "_clock", "_flood_since", "_flood_timeout_s", "_last", "_last_drop", "_rate",
                 "_tokens", "dropped", "flooding")  # fmt: skip

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        flood_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._flood_timeout_s = flood_timeout_s
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self._flood_since = 0.0
        self._last_drop: float | None = None
        self.dropped = 0
        self.flooding = False

    def admit(self, *, tentative: bool = False) -> bool:
        """True when the frame may be processed; False when it must be dropped.

        `tentative`: a refusal is not counted as a drop (the frame goes on to a full `admit()`).
        """
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        if tentative:
            return False
        self.dropped += 1
        if self._last_drop is None or now - self._last_drop > FLOOD_GAP_S:
            self._flood_since = now  # a new flood (or a burst) begins
        self._last_drop = now
        if now - self._flood_since >= self._flood_timeout_s:
            self.flooding = True
        return False

    def refund(self) -> None:
        """Give back the token of a frame admitted but not processed (it is admitted again later)."""
        self._tokens = min(self._burst, self._tokens + 1.0)


@dataclass(slots=True)
class _Tally:
    total: int = 0
    suppressed: int = 0  # counted since the last log line, not logged
    logged_at: float | None = None


class FrameAudit:
    """One call's bad frames: every one counted, at most one warning per (source, reason) per interval.

    Each warning carries `count` (this call's total for that reason) and `suppressed` (how many were
    not logged since the previous warning), so nothing is hidden, only summarised.
    """

    def __init__(
        self, metrics: GatewayMetrics, interval_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._metrics = metrics
        self._interval_s = interval_s
        self._clock = clock
        self._tallies: dict[tuple[Side, str, BadFrameReason], _Tally] = {}

    def bad(self, side: Side, source: str, reason: BadFrameReason, detail: str = "") -> None:
        """Count one bad frame from `source` (a carrier or engine name); log it unless one was lately."""
        self._metrics.bad_frames_total.labels(source, reason).inc()
        tally = self._tallies.setdefault((side, source, reason), _Tally())
        tally.total += 1
        now = self._clock()
        if tally.logged_at is not None and now - tally.logged_at < self._interval_s:
            tally.suppressed += 1
            return
        fields: dict[str, object] = {"source": source, "reason": reason, "count": tally.total}
        if detail:
            fields["detail"] = detail
        if tally.suppressed:
            fields["suppressed"] = tally.suppressed
        log.warning(f"{side}.bad_frame", **fields)
        tally.logged_at, tally.suppressed = now, 0

    def flush(self) -> None:
        """Log what is still suppressed (once, at the end of a socket's life), so no count is lost."""
        for (side, source, reason), tally in self._tallies.items():
            if tally.suppressed:
                log.warning(
                    f"{side}.bad_frame", source=source, reason=reason, count=tally.total,
                    suppressed=tally.suppressed,
                )  # fmt: skip
                tally.suppressed = 0

    @property
    def total(self) -> int:
        return sum(tally.total for tally in self._tallies.values())
