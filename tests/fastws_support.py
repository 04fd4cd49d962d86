"""What the gateway.fastws tests (tests/test_fastws_*.py) share: raw frames, a tapped reader, and the
`connect` fixture that gives both ends of a real loopback WebSocket.

Those tests check FrameTap (frames offered as they arrive, everything else left to aiohttp byte for
byte, in order) and DirectWriter (frames written straight to the transport). The tap is checked
from both ends of a connection: on a server socket (masked frames from a client) and on a client
socket (unmasked frames from a server). Raw frames, built here independently of fastws, craft what
aiohttp's own writer never sends (fragments, reserved bits, bad UTF-8, masks the wrong way round).
Where a test needs two frames to reach the parser in separate reads with the reader still asleep,
it feeds them to the socket's protocol itself: the loopback cannot promise where TCP splits a
stream, and the parser and reader behind the protocol are still aiohttp's own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import pytest
from aiohttp import WSCloseCode, WSMessage, WSMsgType, web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from gateway import fastws
from gateway.fastws import FrameTap
from tests.conftest import GatewayTestServer

WAIT_S = 5.0
MASK_KEY = b"\x37\xfa\x21\x3d"
TEXT, BINARY, CONTINUATION, PING, PONG = 0x1, 0x2, 0x0, 0x9, 0xA
RSV1, RSV2 = 0x40, 0x20
DONE = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR)
DEFAULT_MAX_MSG_SIZE = 4 * 1024 * 1024  # aiohttp's default, on both ends

Side = Literal["server", "client"]
SIDES: list[Side] = ["server", "client"]


# -- raw frames ------------------------------------------------------------------------------------


def xor_mask(key: bytes, payload: bytes) -> bytes:
    n = len(payload)
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def frame(
    payload: bytes,
    opcode: int = TEXT,
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = None,
    long_form: bool = False,
) -> bytes:
    """One RFC 6455 frame. `long_form`: the 8-byte length even for a short payload (legal for the
    parser, which does not insist on the shortest encoding)."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | rsv | opcode
    mask_bit = 0x80 if mask is not None else 0
    if long_form or n >= 65536:
        header = bytes((b0, mask_bit | 127)) + n.to_bytes(8, "big")
    elif n >= 126:
        header = bytes((b0, mask_bit | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((b0, mask_bit | n))
    if mask is None:
        return header + payload
    return header + mask + xor_mask(mask, payload)


@dataclass(frozen=True)
class Frame:
    fin: bool
    rsv: int
    opcode: int
    key: bytes | None
    payload: bytes

    @property
    def masked(self) -> bool:
        return self.key is not None


def parse_frames(data: bytes) -> list[Frame]:
    """A reference parser for complete frames (the whole of `data` must be frames)."""
    frames: list[Frame] = []
    pos = 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        length, pos = b1 & 0x7F, pos + 2
        if length == 126:
            length, pos = int.from_bytes(data[pos : pos + 2], "big"), pos + 2
        elif length == 127:
            length, pos = int.from_bytes(data[pos : pos + 8], "big"), pos + 8
        key = None
        if b1 & 0x80:
            key, pos = data[pos : pos + 4], pos + 4
        payload = data[pos : pos + length]
        assert len(payload) == length, "truncated frame"
        pos += length
        if key is not None:
            payload = xor_mask(key, payload)
        frames.append(Frame(bool(b0 & 0x80), b0 & 0x70, b0 & 0x0F, key, payload))
    return frames


def transport_of(ws: fastws.AnyWebSocket) -> Any:
    """The socket's transport: raw frames are written to it, and reading is paused on it."""
    transport = ws._writer.transport if ws._writer is not None else None
    assert transport is not None
    return transport


def protocol_of(ws: fastws.AnyWebSocket) -> Any:
    """The socket's protocol, whose data_received is where a TCP read lands."""
    protocol = ws._writer.protocol if ws._writer is not None else None
    assert protocol is not None
    return protocol


class RecordingParser:
    """Sits in front of a parser (aiohttp's, or none) and keeps every byte it is fed."""

    def __init__(self, inner: Any = None, log: list[tuple[str, bytes]] | None = None) -> None:
        self.inner = inner
        self.data = bytearray()
        self.log = log
        self.eof = False

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.data += data
        if self.log is not None:
            self.log.append(("parser", bytes(data)))
        if self.inner is None:
            return False, b""
        result: tuple[bool, bytes] = self.inner.feed_data(data)
        return result

    def feed_eof(self) -> None:
        self.eof = True
        if self.inner is not None:
            self.inner.feed_eof()


# -- a tapped reader and a connection --------------------------------------------------------------


@dataclass(frozen=True)
class Taken:
    """The tap's handler took this frame."""

    text: str


Event = Taken | WSMessage


def accept_all(text: str) -> bool:
    return True


class TappedReader:
    """Reads a tapped socket with receive(); what the handler takes and what receive() returns go into
    one ordered stream of events, so a test sees exactly the order the application would."""

    def __init__(self, accept: Callable[[str], bool]) -> None:
        self.accept = accept
        self.tap: FrameTap | None = None
        self.offered: list[str] = []
        self.log: list[Event] = []
        self._events: asyncio.Queue[Event] = asyncio.Queue()

    def offer(self, text: str) -> bool:
        self.offered.append(text)
        if not self.accept(text):
            return False
        self._record(Taken(text))
        return True

    def _record(self, event: Event) -> None:
        self.log.append(event)
        self._events.put_nowait(event)

    async def run(self, ws: fastws.AnyWebSocket) -> None:
        while True:
            message = await ws.receive()
            self._record(message)
            if message.type in DONE:
                return

    async def next(self) -> Event:
        async with asyncio.timeout(WAIT_S):
            return await self._events.get()

    async def taken(self) -> str:
        event = await self.next()
        assert isinstance(event, Taken), event
        return event.text

    async def message(self) -> WSMessage:
        event = await self.next()
        assert not isinstance(event, Taken), event
        return event

    async def text(self) -> str:
        message = await self.message()
        assert message.type is WSMsgType.TEXT, message
        assert isinstance(message.data, str)
        return message.data

    def received_texts(self) -> list[str]:
        return [e.data for e in self.log if not isinstance(e, Taken) and e.type is WSMsgType.TEXT]


@dataclass
class Link:
    """Both ends of one WebSocket connection. With `tapped` set, that end is tapped and read by
    `reader`; the other end (`peer`) is the test's to drive. Untapped ends are read by the test."""

    server: web.WebSocketResponse
    client: aiohttp.ClientWebSocketResponse
    tapped: Side | None
    reader: TappedReader

    @property
    def peer(self) -> fastws.AnyWebSocket:
        return self.client if self.tapped == "server" else self.server

    @property
    def tapped_ws(self) -> fastws.AnyWebSocket:
        return self.server if self.tapped == "server" else self.client

    def peer_frame(self, payload: bytes, opcode: int = TEXT, **options: Any) -> bytes:
        """A frame as the peer must send it: masked from a client, unmasked from a server."""
        return frame(payload, opcode, mask=MASK_KEY if self.peer is self.client else None, **options)

    def send_raw(self, *frames: bytes) -> None:
        """Write frames on the peer's transport in one write."""
        transport_of(self.peer).write(b"".join(frames))

    def inject(self, data: bytes) -> None:
        """Hand `data` to the tapped end as one TCP read, now, without yielding to the loop."""
        if data:
            protocol_of(self.tapped_ws).data_received(data)


Connect = Callable[..., Awaitable[Link]]


@pytest.fixture
async def connect(aiohttp_client: AiohttpClient) -> AsyncIterator[Connect]:
    """`await connect(tapped="server", accept=..., server={...}, client={...})` → a Link.

    `server`/`client`: options of web.WebSocketResponse / ws_connect. Both ends are tappable
    (fastws.Tapped*) unless `plain`; the `tapped` end is given a handler (a client with its
    `max_msg_size`, aiohttp's default unless given, as the gateway does) and read by the reader.
    """
    async with contextlib.AsyncExitStack() as stack:

        async def start(
            tapped: Side | None = None,
            accept: Callable[[str], bool] = accept_all,
            *,
            server: dict[str, Any] | None = None,
            client: dict[str, Any] | None = None,
            plain: bool = False,
        ) -> Link:
            reader = TappedReader(accept)
            started: asyncio.Future[web.WebSocketResponse] = asyncio.get_running_loop().create_future()
            stop = asyncio.Event()

            async def handle(request: web.Request) -> web.WebSocketResponse:
                socket_class = web.WebSocketResponse if plain else fastws.TappedWebSocketResponse
                ws = socket_class(**(server or {}))
                await ws.prepare(request)
                if tapped == "server":
                    reader.tap = fastws.tap(ws, reader.offer)
                    assert reader.tap is not None
                    started.set_result(ws)
                    await reader.run(ws)
                else:
                    started.set_result(ws)
                    await stop.wait()
                    await ws.close()
                return ws

            app = web.Application()
            app.router.add_get("/ws", handle)
            # As production runs it: a handler is not cancelled when its connection is lost, so a
            # tapped server's reader sees how its socket ended.
            session_options: dict[str, Any] = {}
            if not plain:  # as the gateway's ClientSession: every ws_connect socket is tappable
                session_options["ws_response_class"] = fastws.TappedClientWebSocketResponse
            test_client: TestClient[web.Request, None] = await aiohttp_client(
                GatewayTestServer(app), **session_options
            )
            client_options = client or {}
            client_ws = await test_client.ws_connect("/ws", **client_options)
            async with asyncio.timeout(WAIT_S):
                server_ws = await started
            link = Link(server_ws, client_ws, tapped, reader)
            stack.push_async_callback(client_ws.close)
            if tapped == "client":
                limit = client_options.get("max_msg_size", DEFAULT_MAX_MSG_SIZE)
                reader.tap = fastws.tap(client_ws, reader.offer, limit)
                assert reader.tap is not None
                task = asyncio.create_task(reader.run(client_ws), name="test:tapped-client")
                stack.push_async_callback(_finish, task)
            stack.callback(stop.set)  # first: an untapped server closes, a tapped client sees it
            return link

        yield start


async def _finish(task: asyncio.Task[None]) -> None:
    """Let a tapped client's reader see the close out (the server closes first), else cancel it."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(WAIT_S):
            await asyncio.shield(task)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def assert_refused(link: Link, code: WSCloseCode) -> None:
    """aiohttp failed the connection with `code`: the reader gets the error, the peer the close, and
    the handler was offered nothing."""
    message = await link.reader.message()
    assert message.type is WSMsgType.ERROR
    assert message.data.code == code
    closed = await link.peer.receive(timeout=WAIT_S)
    assert (closed.type, closed.data) == (WSMsgType.CLOSE, code)
    assert link.reader.offered == []


def _huge_header(link: Link) -> bytes:
    """The header of a 2 GiB text frame as the peer would send it (no payload)."""
    masked = link.peer is link.client
    header = bytes((0x81, (0x80 if masked else 0) | 127)) + (1 << 31).to_bytes(8, "big")
    return header + MASK_KEY if masked else header


def text_of(n: int, seed: str = "x") -> str:
    """An ASCII text of exactly `n` bytes that is not one repeated character (so a shifted or
    truncated payload cannot pass for the right one)."""
    unit = seed + "0123456789abcdefghijklmnopqrstuvwxyz"
    return (unit * (n // len(unit) + 1))[:n]
