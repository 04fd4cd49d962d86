"""The frames a carrier sends on one media socket, screened before anything acts on them.

Every message costs a token of the socket's `FrameBudget` before it is even parsed; then binary
messages, undecodable or unknown frames, media before `start` and a second `start` are counted in
`gateway_bad_frames_total` and dropped. Only well-formed events in a sensible order reach the route
(waiting for `start`) or the bridge (carrying the call). Nothing a carrier sends raises out of here;
what ends the socket is reported in `ended_by`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Literal

import structlog
from aiohttp import WSCloseCode, WSMessage, WSMsgType, web

from gateway.carriers.base import CarrierEvent, Dtmf, MarkEcho, Media, StreamStart, Unknown
from gateway.errors import BadFrameReason, ProtocolError
from gateway.frames import FrameAudit, FrameBudget, safe_name, socket_error_reason
from gateway.schema import LimitsConfig

log = structlog.get_logger("gateway.carrier")

# Why `next_event()` returned None: the socket closed (or errored) on its own, a heartbeat went
# unanswered, or the carrier broke the rules badly enough that the socket had to go.
EndedBy = Literal["closed", "heartbeat", "flood", "oversize", "invalid_websocket"]
_CLOSED = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED)
FLOOD_CLOSE_MESSAGE = "frame rate limit exceeded"


def media_socket_response(limits: LimitsConfig) -> web.WebSocketResponse:
    """A carrier media socket with the configured size limit; pings and pongs are InboundFrames'.

    The heartbeat (`limits.heartbeat_s`: ping a socket quiet for that long, and give up on it if
    nothing comes back within half of it; RFC 6455 requires a pong, Twilio and Telnyx do not
    document otherwise) is not aiohttp's `heartbeat=`, which reschedules its timer on every
    received chunk (about 2 % of the gateway's CPU with 50 frames a second per call); InboundFrames'
    idle watchdog does it with one timer per quiet period. So aiohttp's autoping is off too, to let
    pongs through to the watchdog; InboundFrames answers pings itself.
    """
    return web.WebSocketResponse(
        max_msg_size=limits.max_message_bytes,
        autoping=False,
        # permessage-deflate is declined (RFC 7692 lets a server): frames are a few hundred bytes, and
        # inflating every one would cost CPU for nothing.
        compress=False,
    )


class InboundFrames:
    """Reads one carrier media socket. `started=True` once the carrier's `start` has been taken."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        source: str,
        decode: Callable[[str], CarrierEvent],
        limits: LimitsConfig,
        audit: FrameAudit,
        *,
        started: bool = False,
    ) -> None:
        self._ws = ws
        self.source = source
        self._decode = decode
        self._budget = FrameBudget(limits.frames_per_s, limits.frame_burst, limits.flood_timeout_s)
        self._audit = audit
        self._idle_timeout_s = limits.idle_timeout_s
        self._heartbeat_s = limits.heartbeat_s
        self._loop = asyncio.get_running_loop()
        self._last_frame_at = self._loop.time()
        self._last_message_at = self._last_frame_at  # frames, pings and pongs: any sign of life
        self._ping_sent_at: float | None = None  # while a heartbeat ping waits for an answer
        self._pinging: asyncio.Task[None] | None = None
        # The idle watchdog (see _receive): one timer per idle period, not one per frame.
        self._watchdog: asyncio.TimerHandle | None = None
        self._reader: asyncio.Task[object] | None = None  # the task in receive(), while it is there
        self._expired: Literal["idle", "heartbeat"] | None = None
        self.started = started
        self.ended_by: EndedBy = "closed"

    def bad(self, reason: BadFrameReason, detail: str = "") -> None:
        self._audit.bad("carrier", self.source, reason, detail)

    async def next_event(self) -> CarrierEvent | None:
        """The next usable event; None once the socket is gone (see `ended_by`).

        Raises TimeoutError when `idle_timeout_s` passes without a frame (pings and pongs are not
        frames: the deadline is absolute, where aiohttp's receive timeout would restart on each pong).
        The idle check is a watchdog timer, not a timeout per receive: see `_receive`.
        """
        while True:
            message = await self._receive()
            if message is None:
                log.warning("carrier.heartbeat_timeout", source=self.source)
                self.ended_by = "heartbeat"
                self._abort()
                return None
            if message.type == WSMsgType.PING:
                await self._ws.pong(message.data)  # not a frame: no token, no idle reset
                continue
            if message.type == WSMsgType.PONG:
                continue
            if message.type in _CLOSED:
                return None
            if message.type == WSMsgType.ERROR:
                self._socket_error(message.data)
                return None
            if not self._budget.admit():
                self.bad("rate_limited")
                if self._budget.flooding:
                    self._end_flood()
                    return None
                continue
            if message.type == WSMsgType.BINARY:
                self.bad("binary")
                continue
            if message.type != WSMsgType.TEXT:
                continue
            event = self._screen(message.data)
            if event is not None:
                return event

    async def _receive(self) -> WSMessage | None:
        """The next message (pings and pongs included); None once a heartbeat ping went unanswered.

        Raises TimeoutError once `idle_timeout_s` has passed since the last frame.
        `asyncio.timeout_at` around every receive would create, schedule and cancel a timer per frame
        (50 a second per call). Instead a watchdog timer fires at the next deadline (idle timeout,
        heartbeat ping, pong wait); if a message came in since, it moves itself to the new deadline
        (about once per quiet period on a live socket), and if not, it acts: sends the ping, or
        cancels the read, which is turned into TimeoutError (idle) or None (no pong) here. It never
        cancels a task that is not waiting in receive(): a deadline that passes while the task is
        busy elsewhere is caught on the next call.
        """
        loop = self._loop
        if loop.time() >= self._last_frame_at + self._idle_timeout_s:
            raise TimeoutError
        if self._expired == "heartbeat":
            return None
        task = self._reader = asyncio.current_task()
        if self._watchdog is None:
            self._watchdog = loop.call_at(self._next_deadline(), self._check_idle)
        try:
            message = await self._ws.receive()
        except asyncio.CancelledError:
            expired, self._expired = self._expired, None
            if expired is not None and task is not None and task.uncancel() == 0:
                # Ours alone: anyone else's cancellation goes on.
                if expired == "idle":
                    raise TimeoutError from None
                self._expired = "heartbeat"
                return None
            raise
        finally:
            self._reader = None
        now = self._last_message_at = loop.time()
        self._ping_sent_at = None
        if message.type is not WSMsgType.PING and message.type is not WSMsgType.PONG:
            self._last_frame_at = now
        return message

    def _next_deadline(self) -> float:
        idle = self._last_frame_at + self._idle_timeout_s
        if self._heartbeat_s is None:
            return idle
        if self._ping_sent_at is not None:
            return min(idle, self._ping_sent_at + self._heartbeat_s / 2)
        return min(idle, self._last_message_at + self._heartbeat_s)

    def _check_idle(self) -> None:
        self._watchdog = None
        now = self._loop.time()
        if now >= self._last_frame_at + self._idle_timeout_s:
            self._expire("idle")
            return
        heartbeat_s = self._heartbeat_s
        if heartbeat_s is not None:
            if self._ping_sent_at is not None:
                if now >= self._ping_sent_at + heartbeat_s / 2:
                    self._expire("heartbeat")
                    return
            elif now >= self._last_message_at + heartbeat_s and self._reader is not None:
                self._ping_sent_at = now
                self._pinging = self._loop.create_task(self._ping())
        if self._reader is not None:
            self._watchdog = self._loop.call_at(self._next_deadline(), self._check_idle)
        # else not reading: the next _receive re-arms (or times out at once)

    def _expire(self, why: Literal["idle", "heartbeat"]) -> None:
        if self._reader is not None and self._expired is None:
            self._expired = why
            self._reader.cancel()

    async def _ping(self) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):  # a socket going away answers no ping
            await self._ws.ping()

    def _abort(self) -> None:
        """Drop a peer that stopped answering: no close handshake, which it would not answer either."""
        transport = self._ws.get_extra_info("transport")
        if transport is not None:
            transport.abort()

    def _screen(self, text: str) -> CarrierEvent | None:
        try:
            event = self._decode(text)
        except ProtocolError as exc:
            self.bad(exc.reason, str(exc))
            return None
        if isinstance(event, Unknown):
            self.bad("unknown_event", safe_name(event.event))
            return None
        if isinstance(event, StreamStart):
            if self.started:
                self.bad("duplicate_start")
                return None
            self.started = True
        elif not self.started and isinstance(event, Media | MarkEcho | Dtmf):
            self.bad("media_before_start")
            return None
        return event

    def _socket_error(self, error: object) -> None:
        reason = socket_error_reason(error)
        if reason is not None:
            self.bad(reason)  # aiohttp has already closed the socket (1009, or 1007/1002)
            self.ended_by = "oversize" if reason == "oversize" else "invalid_websocket"
        elif isinstance(error, TimeoutError):
            log.warning("carrier.heartbeat_timeout", source=self.source)
            self.ended_by = "heartbeat"
        else:
            log.warning("carrier.socket_error", source=self.source, error=type(error).__name__)

    def _end_flood(self) -> None:
        # The socket is left open for the owner to close after counting the refusal, so whoever
        # sees it close also sees the reason counted.
        log.warning("carrier.flooding", source=self.source, dropped=self._budget.dropped)
        self.ended_by = "flood"

    async def close_flooded(self) -> None:
        """Close a socket that ended by flooding: 1008 (policy violation) with the reason."""
        await self._ws.close(code=WSCloseCode.POLICY_VIOLATION, message=FLOOD_CLOSE_MESSAGE.encode())
