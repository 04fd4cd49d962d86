"""The frames a carrier sends on one media socket, screened before anything acts on them.

Every message costs a token of the socket's `FrameBudget` before it is even parsed; then binary
messages, undecodable or unknown frames, media before `start` and a second `start` are counted in
`gateway_bad_frames_total` and dropped. Only well-formed events in a sensible order reach the route
(waiting for `start`) or the bridge (carrying the call). Nothing a carrier sends raises out of here;
what ends the socket is reported in `ended_by`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Literal

import structlog
from aiohttp import WSCloseCode, WSMessage, WSMsgType, web

from gateway import fastws
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
    """A carrier media socket with the configured size limit and heartbeat.

    aiohttp resets the heartbeat on every frame received, so a streaming carrier (50 frames a
    second) is never pinged; a quiet one is, and must answer within half the interval (RFC 6455
    requires a pong; Twilio and Telnyx do not document otherwise). The idle timeout is not aiohttp's
    `receive_timeout`, which every pong restarts: InboundFrames keeps it from the last real frame.
    """
    return fastws.TappedWebSocketResponse(
        max_msg_size=limits.max_message_bytes,
        heartbeat=limits.heartbeat_s,
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
        self._loop = asyncio.get_running_loop()
        self._last_frame_at = self._loop.time()
        # The idle watchdog (see _receive): one timer per idle period, not one per frame.
        self._watchdog: asyncio.TimerHandle | None = None
        self._reader: asyncio.Task[object] | None = None  # the task in receive(), while it is there
        self._expired = False
        self.started = started
        self.ended_by: EndedBy = "closed"
        self.tap: fastws.FrameTap | None = None

    def tap_media(self, payload_of: Callable[[str], str | None], take: Callable[[str], bool]) -> bool:
        """Hand media payloads to `take` as frames arrive (see gateway.fastws), when it returns True;
        `payload_of` picks them out (the carrier's `media_payload`). Every other frame, and media
        `take` declines, comes out of `next_event()`.

        Media taken this way has paid its token and counts as a frame for the idle timeout. False
        when aiohttp's internals do not allow it: everything then comes out of `next_event()`.
        """
        budget, loop = self._budget, self._loop

        def offer(text: str) -> bool:
            payload = payload_of(text)
            if payload is None or not self.started or not budget.admit(tentative=True):
                return False
            if not take(payload):
                budget.refund()  # next_event() charges it
                return False
            self._last_frame_at = loop.time()
            return True

        self.tap = fastws.tap(self._ws, offer)
        return self.tap is not None

    def untap(self) -> None:
        """Stop offering frames (the owner's state is going away); they all reach next_event()."""
        if self.tap is not None:
            self.tap.handler = None

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

    async def _receive(self) -> WSMessage:
        """The next message; TimeoutError once `idle_timeout_s` has passed since the last one.

        `asyncio.timeout_at` around every receive would create, schedule and cancel a timer per frame
        (50 a second per call). Instead a watchdog timer fires at the deadline; if a frame came in
        since, it moves itself to the new deadline (once per idle period on a live socket), and if
        not, it cancels the read, which is turned into TimeoutError here. It never cancels a task
        that is not waiting in receive(): a deadline that passes while the task is busy elsewhere
        is caught on the next call.
        """
        loop = self._loop
        if loop.time() >= self._last_frame_at + self._idle_timeout_s:
            raise TimeoutError
        task = self._reader = asyncio.current_task()
        if self._watchdog is None:
            self._watchdog = loop.call_at(self._last_frame_at + self._idle_timeout_s, self._check_idle)
        try:
            message = await self._ws.receive()
        except asyncio.CancelledError:
            if self._expired and task is not None:
                self._expired = False
                if task.uncancel() == 0:  # ours alone: anyone else's cancellation goes on
                    raise TimeoutError from None
            raise
        finally:
            self._reader = None
        self._last_frame_at = loop.time()
        return message

    def _check_idle(self) -> None:
        self._watchdog = None
        deadline = self._last_frame_at + self._idle_timeout_s
        if self._loop.time() < deadline:
            if self._reader is not None:
                self._watchdog = self._loop.call_at(deadline, self._check_idle)
            return  # not reading: the next _receive re-arms (or times out at once)
        if self._reader is not None and not self._expired:
            self._expired = True
            self._reader.cancel()

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
