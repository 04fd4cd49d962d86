"""The registry of calls: admission against `max_concurrent_calls`, draining, cancelling at shutdown.

A call counts against the limit from the moment its webhook is answered (a short-lived reservation)
until its bridge ends, so a burst of webhooks cannot over-admit calls that have not streamed yet. A
drain waits for reserved calls as for live ones: the carrier connects their media a moment later.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Literal, Protocol

import structlog

log = structlog.get_logger("gateway.calls")

RESERVATION_TTL_S = 30.0
Admission = Literal["ok", "busy", "duplicate"]


class LiveCall(Protocol):
    """What the registry needs of a live call: the task that owns it, and a view for `GET /calls`."""

    @property
    def task(self) -> asyncio.Task[object] | None: ...

    def snapshot(self) -> dict[str, object]: ...

    async def shut_down(self) -> None:
        """End the call from our side with a goodbye (its task then tears it down)."""


class CallRegistry:
    def __init__(
        self,
        max_concurrent_calls: int,
        *,
        reservation_ttl_s: float = RESERVATION_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_concurrent_calls = max_concurrent_calls
        self._ttl_s = reservation_ttl_s
        self._clock = clock
        self._live: dict[str, LiveCall] = {}
        self._reserved: dict[str, float] = {}
        self._empty = asyncio.Event()
        self._empty.set()
        self._changed = asyncio.Event()  # a call was added, removed or released (wait_idle)

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._live

    @property
    def reserved(self) -> int:
        """Calls answered whose media has not started yet (unexpired reservations)."""
        self._load()
        return len(self._reserved)

    def live(self) -> list[LiveCall]:
        return list(self._live.values())

    def _load(self) -> int:
        now = self._clock()
        self._reserved = {k: v for k, v in self._reserved.items() if v > now}
        return len(self._live) + len(self._reserved)

    def set_limit(self, max_concurrent_calls: int) -> None:
        """A new `max_concurrent_calls` (config reload). Only admission looks at it: lowering it below
        the calls in progress ends none of them, it refuses new ones until enough have ended."""
        self.max_concurrent_calls = max_concurrent_calls

    @property
    def full(self) -> bool:
        return self._load() >= self.max_concurrent_calls

    def reserve(self, call_id: str, *, new_calls: bool = True) -> bool:
        """Hold a place for a call whose webhook is being answered; False when the gateway is full.

        With `new_calls` False (the gateway is draining) only a call already held keeps its place:
        a retried webhook, or a call this gateway dialed that is now answered.
        """
        if self.holds(call_id):
            return True  # a retried webhook for a call we already hold
        if not new_calls or self.full:
            return False
        self._reserved[call_id] = self._clock() + self._ttl_s
        return True

    def holds(self, call_id: str) -> bool:
        """Whether the call is reserved or live (a repeated webhook for it must not act again)."""
        self._load()
        return call_id in self._reserved or call_id in self._live

    def release(self, call_id: str) -> None:
        """Give back the place of a reserved call that will not stream (rejected, hung up early)."""
        if self._reserved.pop(call_id, None) is not None:
            self._changed.set()

    def add(self, call_id: str, call: LiveCall) -> Admission:
        """Admit a call whose media has started (consuming its reservation, if any)."""
        if call_id in self._live:
            return "duplicate"
        if self._reserved.pop(call_id, None) is None and self.full:
            return "busy"
        self._live[call_id] = call
        self._empty.clear()
        return "ok"

    def remove(self, call_id: str) -> None:
        self._live.pop(call_id, None)
        self._changed.set()
        if not self._live:
            self._empty.set()

    async def wait_empty(self) -> None:
        """Until no call is live (reservations aside)."""
        await self._empty.wait()

    async def wait_idle(self) -> None:
        """Until no call is live or reserved. A reservation ends when its media starts (the call is
        then live), when it is released, or when its TTL passes: a carrier that never connects the
        media holds the drain up for RESERVATION_TTL_S at most."""
        while self._live or self.reserved:
            self._changed.clear()
            expiry_s = min(self._reserved.values(), default=None)
            try:
                async with asyncio.timeout(None if expiry_s is None else expiry_s - self._clock()):
                    await self._changed.wait()
            except TimeoutError:
                pass  # the next reservation expired: look again

    async def shut_down_all(self) -> None:
        """Ask every live call to end with a goodbye; `wait_empty` tells when they have."""
        calls = list(self._live.values())
        if calls:
            log.info("calls.ending", count=len(calls))
        await asyncio.gather(*(call.shut_down() for call in calls), return_exceptions=True)

    async def cancel_all(self) -> None:
        """Cancel every call's owning task and wait for their teardown (sockets closed, logs written)."""
        tasks = [t for call in self._live.values() if (t := call.task) is not None]
        if tasks:
            log.info("calls.cancelling", count=len(tasks))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
