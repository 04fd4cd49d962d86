"""A short path for the two hot sockets of a call: audio frames handled as they arrive.

aiohttp turns every WebSocket frame into a message on a queue, wakes the task reading it, and
writes every outgoing message through a coroutine. At 50 caller frames a second per call that
machinery costs more CPU than the audio itself. This module keeps aiohttp for everything it is
good at (the handshake, control frames, closing, size limits, protocol errors) and adds two things:

- `FrameTap` sits in front of aiohttp's frame parser. Complete, unfragmented text frames are offered
  to a handler right away, in the socket's `data_received`; the handler takes the ones it knows
  (media frames, audio deltas) and declines the rest. Declined frames, and every other kind of
  frame, go to aiohttp's parser byte for byte, so `receive()` sees them exactly as before.
  Order is kept: the handler is only offered a frame while the socket's reader waits in
  `receive()` with nothing queued before it (see `FrameTap.reading`).
- `DirectWriter` frames text messages and hands them to the transport in one write, without a
  coroutine. It declines (returns None from `ready`) when the socket is closing or its send buffer
  is past `WRITE_BUFFER_CAP`; callers then use aiohttp's `send_str`, which waits for the peer.

A tap must see a socket's bytes from the first one on: put in front of a parser that already
holds part of a frame, it would read payload bytes as frame headers from then on. So the tap is
fitted when aiohttp creates the parser, before any byte reaches it, by the socket classes
`TappedWebSocketResponse` (server) and `TappedClientWebSocketResponse` (client, via the
ClientSession's `ws_response_class`), with no handler: it takes nothing until `tap()` gives it one.
Their `receive()` keeps the tap's bookkeeping (`reading`, `pending`), whoever calls it.

Both rely on aiohttp internals (`ws._parser` set just before the protocol's `set_parser`,
`ws._writer`, its `protocol` and `transport`, the protocol's `_payload_parser`). If an aiohttp
release changes them, `tap`/`writer` return None and the call takes aiohttp's own path: slower,
never wrong. tests/test_fastws_setup.py fails loudly when that happens.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from aiohttp import WSMessage, WSMsgType, web
from aiohttp.client_ws import ClientWebSocketResponse

log = structlog.get_logger("gateway.fastws")

_mask: Callable[[bytes, bytearray], None] | None
try:  # the C implementation aiohttp uses itself
    from aiohttp._websocket.helpers import websocket_mask as _mask
except ImportError:  # pragma: no cover - depends on the aiohttp release
    _mask = None

AnyWebSocket = web.WebSocketResponse | ClientWebSocketResponse

# Bytes queued for a peer beyond which direct writes stop: the caller falls back to aiohttp's
# send_str, which waits for the peer to catch up (about a minute of g711 audio, 7 s of pcm24k).
WRITE_BUFFER_CAP = 1 << 20
# Text frames longer than this, or not shorter than the socket's own max_msg_size, go to aiohttp's
# parser (which applies the size limit and closes the socket with 1009 when it is reached).
FAST_FRAME_MAX = 1 << 16

_TEXT_FIN = 0x81  # FIN, no RSV bits (no compression), opcode 1
_PACK_RANDBITS = struct.Struct("!L").pack
_getrandbits = random.getrandbits


def _unmask(key: bytes, payload: bytes | bytearray) -> bytearray:
    data = bytearray(payload)
    assert _mask is not None  # tap() is not offered without it
    _mask(key, data)
    return data


def _internals(ws: AnyWebSocket) -> tuple[Any, Any] | None:
    """(protocol, transport) of a started socket, or None if aiohttp does not look as expected."""
    writer = getattr(ws, "_writer", None)
    protocol = getattr(writer, "protocol", None)
    transport = getattr(writer, "transport", None)
    if protocol is None or transport is None or not hasattr(protocol, "_payload_parser"):
        return None
    if not hasattr(writer, "_closing"):
        return None
    return protocol, transport


class FrameTap:
    """Replaces a socket's frame parser; offers text frames to `handler` (True: taken)."""

    __slots__ = ("_buf", "_forward", "_fragmented", "_inner", "_limit", "_masked", "closed", "handler",
                 "pending", "reading", "taken_fast")  # fmt: skip

    def __init__(
        self, inner: Any, masked: bool, handler: Callable[[str], bool] | None, limit: int = FAST_FRAME_MAX
    ) -> None:
        self._inner = inner
        self.closed = False  # the peer sent a close frame: nothing more is taken, whatever the handler
        self._limit = limit  # longest payload offered to the handler
        self._masked = masked  # frames from a client are masked (RFC 6455 §5.3), from a server not
        self._buf = b""
        self._forward = 0  # bytes still to come of a big frame already handed to aiohttp's parser
        self._fragmented = False
        self.handler: Callable[[str], bool] | None = handler
        self.reading = False  # the socket's reader waits in receive(): nothing of ours is in flight
        self.pending = 0  # data messages handed to aiohttp that the reader has not taken yet
        self.taken_fast = 0  # frames the handler took (tests read it)

    def taken(self, message_type: WSMsgType) -> None:
        """The reader got a message from aiohttp's queue."""
        if self.pending and message_type in (WSMsgType.TEXT, WSMsgType.BINARY):
            self.pending -= 1

    def feed_eof(self) -> None:
        self._inner.feed_eof()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        passed: list[bytes] = []
        if self._forward:
            if len(data) <= self._forward:
                self._forward -= len(data)
                result: tuple[bool, bytes] = self._inner.feed_data(data)
                return result
            passed.append(data[: self._forward])
            data = data[self._forward :]
            self._forward = 0
        if self._buf:
            data = self._buf + data
            self._buf = b""
        n = len(data)
        pos = 0
        while n - pos >= 2:
            b0 = data[pos]
            b1 = data[pos + 1]
            length = b1 & 0x7F
            header = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                header = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                header = 10
            masked = b1 & 0x80
            if masked:
                header += 4
            end = pos + header + length
            if end > n:
                if length > self._limit:  # a big frame: aiohttp's parser buffers and judges it
                    passed.append(data[pos:])
                    self._note_passed(b0)
                    self._forward = end - n
                    pos = n
                break
            if (
                b0 == _TEXT_FIN
                and not self._fragmented
                and bool(masked) == self._masked
                and length <= self._limit
                and self.reading
                and not self.pending
                and not passed
                and self.handler is not None
                and self._offer(data, pos, header, end)
            ):
                self.taken_fast += 1
            else:
                passed.append(data[pos:end])
                self._note_passed(b0)
            pos = end
        if pos < n:
            self._buf = data[pos:]
        if passed:
            result = self._inner.feed_data(b"".join(passed))
            return result
        return False, b""

    def _offer(self, data: bytes, pos: int, header: int, end: int) -> bool:
        payload: bytes | bytearray = data[pos + header : end]
        if self._masked:
            payload = _unmask(data[pos + header - 4 : pos + header], payload)
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            return False  # aiohttp's parser reports it and closes the socket, as it always has
        assert self.handler is not None
        try:
            return self.handler(text)
        except Exception:
            # A bug, not a bad frame (handlers decline those). Raised here it would surface in the
            # transport's data_received, outside the call's tasks. Instead the tap steps aside and
            # this frame and all after it take the ordinary path, where the same fault ends the call
            # the usual way (logged, counted, hung up).
            log.exception("fastws.handler_failed")
            self.handler = None
            return False

    def _note_passed(self, b0: int) -> None:
        opcode = b0 & 0x0F
        if opcode >= 0x8:  # control frames: the reader's receive() handles them
            if opcode == 0x8:
                self.closed = True  # after a close nothing is taken: it all goes to aiohttp
                self.handler = None
            return
        if b0 & 0x80:  # FIN: the end of a data message
            self._fragmented = False
            self.pending += 1
        else:
            self._fragmented = True


class _Heartbeat:
    """What aiohttp does on every chunk received on a socket with a heartbeat, for less.

    aiohttp schedules a callback per chunk that moves the heartbeat's deadline. Its heartbeat timer
    already re-arms itself when it fires before the deadline, so moving the deadline is all a chunk
    needs to do; the full reset (which also cancels a pending pong wait, or starts the timer when
    none runs) is kept for when it matters: after a ping was sent.
    """

    __slots__ = ("_interval", "_time", "_ws")

    def __init__(self, ws: Any, interval: float, time: Callable[[], float]) -> None:
        self._ws = ws
        self._interval = interval
        self._time = time

    def __call__(self) -> None:
        ws = self._ws
        if ws._heartbeat_cb is None or ws._pong_response_cb is not None:
            ws._reset_heartbeat()
        else:
            ws._heartbeat_when = self._time() + self._interval


_HEARTBEAT_ATTRS = ("_heartbeat", "_heartbeat_cb", "_pong_response_cb", "_heartbeat_when", "_reset_heartbeat",
                    "_on_data_received", "_loop")  # fmt: skip


def _lighten_heartbeat(ws: AnyWebSocket, protocol: Any) -> None:
    if not all(hasattr(ws, name) for name in _HEARTBEAT_ATTRS) or ws._heartbeat is None:
        return
    if getattr(protocol, "_data_received_cb", None) != ws._on_data_received or ws._loop is None:
        return
    protocol._data_received_cb = _Heartbeat(ws, float(ws._heartbeat), ws._loop.time)


def tap(ws: AnyWebSocket, handler: Callable[[str], bool], max_msg_size: int | None = None) -> FrameTap | None:
    """Give the tap fitted to a Tapped* socket its handler; None when the socket has no tap (another
    class, or aiohttp's internals differ) or the peer has closed it. Calling it again replaces the
    handler.

    `max_msg_size` is the limit the socket was opened with (0: none). A server socket knows its
    own; a client socket does not keep it where it can be read, so the caller passes it, and a
    client socket without one is not tapped: a frame the tap takes never reaches aiohttp's size
    check, so the tap must know the limit to leave bigger frames to it.
    """
    fitted = getattr(ws, "_fastws_tap", None)
    found = _internals(ws)
    if not isinstance(fitted, FrameTap) or found is None or fitted.closed:
        return None
    frame_tap = fitted
    protocol, _ = found
    if id(protocol._payload_parser) != id(frame_tap):  # (not `is`: mypy would narrow frame_tap to Any)
        return None  # aiohttp feeds the socket's bytes to a parser of its own
    if max_msg_size is None:
        max_msg_size = getattr(ws, "_max_msg_size", None) if isinstance(ws, web.WebSocketResponse) else None
    if not isinstance(max_msg_size, int) or max_msg_size < 0:
        return None
    # aiohttp refuses a message of max_msg_size bytes or more (">=", "exceeds limit" notwithstanding).
    frame_tap._limit = min(FAST_FRAME_MAX, max_msg_size - 1) if max_msg_size else FAST_FRAME_MAX
    _lighten_heartbeat(ws, protocol)
    frame_tap.handler = handler
    return frame_tap


class _TapFitter:
    """Fits a FrameTap (with no handler) in front of the frame parser aiohttp gives the socket,
    before the parser is handed to the protocol and fed; keeps the tap's bookkeeping in receive()."""

    _fastws_tap: FrameTap | None = None

    @property
    def _parser(self) -> Any:
        return self.__dict__.get("_fastws_parser")

    @_parser.setter
    def _parser(self, parser: Any) -> None:
        fit = self._fastws_tap is None and _mask is not None and hasattr(parser, "feed_data")
        if parser is not None and fit:
            masked = isinstance(self, web.WebSocketResponse)  # frames from a client are masked
            self._fastws_tap = parser = FrameTap(parser, masked=masked, handler=None)
        self.__dict__["_fastws_parser"] = parser

    async def _receive_tapped(self, receive: Awaitable[WSMessage]) -> WSMessage:
        frame_tap = self._fastws_tap
        if frame_tap is None:
            return await receive
        frame_tap.reading = True
        try:
            message = await receive
        finally:
            frame_tap.reading = False
        frame_tap.taken(message.type)
        return message


class TappedWebSocketResponse(_TapFitter, web.WebSocketResponse):
    """A server WebSocket whose frames can be handled as they arrive (see `tap`)."""

    async def receive(self, timeout: float | None = None) -> WSMessage:  # noqa: ASYNC109 - aiohttp's signature
        return await self._receive_tapped(super().receive(timeout))


class TappedClientWebSocketResponse(_TapFitter, ClientWebSocketResponse):
    """A client WebSocket whose frames can be handled as they arrive (see `tap`); give the class to
    the ClientSession as `ws_response_class`."""

    async def receive(self, timeout: float | None = None) -> WSMessage:  # noqa: ASYNC109 - aiohttp's signature
        return await self._receive_tapped(super().receive(timeout))


class DirectWriter:
    """Writes text frames straight to a socket's transport, several in one system call."""

    __slots__ = ("_transport", "_use_mask", "_writer", "_ws")

    def __init__(self, ws: AnyWebSocket, ws_writer: Any, transport: Any) -> None:
        self._ws = ws
        self._writer = ws_writer
        self._transport = transport
        self._use_mask = bool(self._writer.use_mask) and _mask is not None

    def ready(self) -> bool:
        """True when `write` may be called now: open socket, send buffer below the cap."""
        transport = self._transport
        return (
            not transport.is_closing()
            and transport.get_write_buffer_size() < WRITE_BUFFER_CAP
            and not self._writer._closing
            and not self._ws.closed
        )

    def write(self, texts: Sequence[str]) -> None:
        """Frame and write `texts` in one system call (call `ready()` first, no await in between)."""
        if len(texts) == 1:
            self._transport.write(self._frame(texts[0]))
        else:
            self._transport.write(b"".join([self._frame(text) for text in texts]))

    def _frame(self, text: str) -> bytes:
        payload = text.encode("utf-8")
        n = len(payload)
        if self._use_mask:
            if n < 126:
                header = bytes((0x81, 0x80 | n))
            elif n < 65536:
                header = bytes((0x81, 0xFE, n >> 8, n & 0xFF))
            else:
                header = b"\x81\xff" + n.to_bytes(8, "big")
            key = _PACK_RANDBITS(_getrandbits(32))
            masked = bytearray(payload)
            _mask(key, masked)  # type: ignore[misc]  # writer() refuses masked sockets without it
            return header + key + masked
        if n < 126:
            return bytes((0x81, n)) + payload
        if n < 65536:
            return bytes((0x81, 126, n >> 8, n & 0xFF)) + payload
        return b"\x81\x7f" + n.to_bytes(8, "big") + payload


def writer(ws: AnyWebSocket) -> DirectWriter | None:
    """A DirectWriter for a started socket; None when aiohttp's internals differ (or it cannot mask)."""
    found = _internals(ws)
    if found is None:
        return None
    if getattr(getattr(ws, "_writer", None), "use_mask", False) and _mask is None:
        return None
    if getattr(getattr(ws, "_writer", None), "compress", 0):
        return None  # compressed sockets need aiohttp's compressor
    return DirectWriter(ws, getattr(ws, "_writer", None), found[1])
