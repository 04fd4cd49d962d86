"""gateway.fastws on real loopback sockets: FrameTap (frames offered as they arrive, everything else
left to aiohttp byte for byte, in order) and DirectWriter (frames written straight to the transport).

The tap is checked from both ends of a connection: on a server socket (masked frames from a client)
and on a client socket (unmasked frames from a server). Raw frames, built here independently of
fastws, craft what aiohttp's own writer never sends (fragments, reserved bits, bad UTF-8, masks the
wrong way round). Where a test needs two frames to reach the parser in separate reads with the
reader still asleep, it feeds them to the socket's protocol itself: the loopback cannot promise
where TCP splits a stream, and the parser and reader behind the protocol are still aiohttp's own.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import pytest
from aiohttp import WSCloseCode, WSMessage, WSMsgType, web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from structlog.testing import capture_logs

from gateway import fastws
from gateway.fastws import FAST_FRAME_MAX, FrameTap
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


# -- FrameTap on real sockets, from both ends -------------------------------------------------------


@pytest.mark.parametrize("side", SIDES)
class TestTap:
    async def test_text_frames_are_taken_while_the_reader_waits(self, connect: Connect, side: Side) -> None:
        """Text frames reach the handler as they arrive, in order, and never come out of receive()."""
        link = await connect(side)
        for text in ("one", "two", '{"event":"media"}'):
            await link.peer.send_str(text)
        assert [await link.reader.taken() for _ in range(3)] == ["one", "two", '{"event":"media"}']
        assert link.reader.tap is not None
        assert link.reader.tap.taken_fast == 3
        assert link.reader.received_texts() == []

    async def test_a_declined_frame_arrives_through_receive_unchanged(
        self, connect: Connect, side: Side
    ) -> None:
        """A frame the handler declines comes out of receive() exactly as sent (non-ASCII too)."""
        link = await connect(side, accept=lambda text: text.startswith("media"))
        declined = 'control {"é": "☎ 電話"}'
        await link.peer.send_str(declined)
        assert await link.reader.text() == declined
        await link.peer.send_str("media 1")
        assert await link.reader.taken() == "media 1"
        assert link.reader.offered == [declined, "media 1"]
        assert link.reader.tap is not None
        assert link.reader.tap.taken_fast == 1

    async def test_a_frame_written_with_the_first_is_not_taken_before_it(
        self, connect: Connect, side: Side
    ) -> None:
        """A declined frame and a takeable one in one write: the second never overtakes the first."""
        link = await connect(side, accept=lambda text: text != "first")
        link.send_raw(link.peer_frame(b"first"), link.peer_frame(b"second"))
        events = [await link.reader.next(), await link.reader.next()]
        texts = [e.text if isinstance(e, Taken) else e.data for e in events]
        assert texts == ["first", "second"]
        assert not isinstance(events[0], Taken)

    async def test_a_frame_behind_one_still_queued_in_aiohttp_is_not_taken(
        self, connect: Connect, side: Side
    ) -> None:
        """Two reads land before the reader wakes: the first (declined) sits in aiohttp's queue, so
        the second, though takeable, must go behind it (`pending`); once the reader has had both,
        frames are taken again."""
        link = await connect(side, accept=lambda text: text != "declined")
        await link.peer.send_str("sync")
        assert await link.reader.taken() == "sync"  # the reader now waits in receive(), nothing queued
        link.inject(link.peer_frame(b"declined"))
        link.inject(link.peer_frame(b"takeable"))
        assert await link.reader.text() == "declined"
        assert await link.reader.text() == "takeable"
        assert link.reader.offered == ["sync", "declined"]
        await link.peer.send_str("after")
        assert await link.reader.taken() == "after"

    @pytest.mark.parametrize("catch_up", [False, True], ids=["back-to-back", "reader-catches-up"])
    async def test_every_split_of_a_stream_gives_the_same_messages_in_order(
        self, connect: Connect, side: Side, catch_up: bool
    ) -> None:
        """Whatever two reads a stream of frames arrives in, the application sees the same messages
        in the same order (binary, ping and fragments in between). Back to back, nothing behind the
        declined frame is taken (it is still in aiohttp's queue); with the reader catching up between
        the reads, every takeable frame is taken at some split."""
        link = await connect(side, accept=lambda text: not text.startswith("no"))
        frames = [  # (frame, ends a data message)
            (link.peer_frame(b"a-taken"), True),
            (link.peer_frame(b"no-declined"), True),
            (link.peer_frame(b"\x00\x01", BINARY), True),
            (link.peer_frame(b"p", PING), False),
            (link.peer_frame(text_of(130).encode()), True),  # 16-bit length
            (link.peer_frame(b"long-form", long_form=True), True),  # 64-bit length
            (link.peer_frame(b"hel", fin=False), False),
            (link.peer_frame(b"lo", CONTINUATION), True),
            (link.peer_frame(b"z-last"), True),
        ]
        stream = b"".join(raw for raw, _ in frames)
        ends, offset = [], 0
        for raw, ends_message in frames:
            offset += len(raw)
            if ends_message:
                ends.append(offset)
        expected = ["a-taken", "no-declined", "\x00\x01", text_of(130), "long-form", "hello", "z-last"]
        for cut in range(len(stream) + 1):
            seen: list[str] = []
            link.inject(stream[:cut])
            if catch_up:  # wait until the reader has had every message the first read completed
                seen += [await self._next_data(link, cut) for end in ends if end <= cut]
            link.inject(stream[cut:])
            seen += [await self._next_data(link, cut) for _ in range(len(expected) - len(seen))]
            assert seen == expected, cut
        taken = {e.text for e in link.reader.log if isinstance(e, Taken)}
        if catch_up:
            assert taken == {"a-taken", text_of(130), "long-form", "z-last"}
        else:
            assert taken == {"a-taken"}
        assert set(link.reader.offered) <= {"a-taken", "no-declined", text_of(130), "long-form", "z-last"}

    @staticmethod
    async def _next_data(link: Link, cut: int) -> str:
        event = await link.reader.next()
        if isinstance(event, Taken):
            return event.text
        assert event.type in (WSMsgType.TEXT, WSMsgType.BINARY), (cut, event)
        return event.data if isinstance(event.data, str) else event.data.decode()

    async def test_binary_frames_pass_through(self, connect: Connect, side: Side) -> None:
        """Binary frames are never offered; receive() returns them byte for byte."""
        link = await connect(side)
        await link.peer.send_bytes(b"\xff\x00binary")
        message = await link.reader.message()
        assert (message.type, message.data) == (WSMsgType.BINARY, b"\xff\x00binary")
        assert link.reader.offered == []

    async def test_a_fragmented_message_is_left_to_aiohttp(self, connect: Connect, side: Side) -> None:
        """Neither fragment of a fragmented text is offered (a ping between them is answered); the
        whole message comes out of receive(), and the next whole frame is taken again."""
        link = await connect(side, client={"autoping": False} if side == "server" else {})
        link.send_raw(
            link.peer_frame(b"hel", fin=False),
            link.peer_frame(b"between", PING),
            link.peer_frame(b"lo ", CONTINUATION, fin=False),
            link.peer_frame("wörld".encode(), CONTINUATION),
        )
        assert await link.reader.text() == "hello wörld"
        assert link.reader.offered == []
        if side == "server":  # the client peer does not answer pings itself: it sees the pong
            pong = await link.peer.receive(timeout=WAIT_S)
            assert (pong.type, pong.data) == (WSMsgType.PONG, b"between")
        await link.peer.send_str("whole")
        assert await link.reader.taken() == "whole"

    async def test_a_text_frame_inside_a_fragmented_message_is_a_protocol_error(
        self, connect: Connect, side: Side
    ) -> None:
        """A complete text frame while a fragmented message is open is not taken, even in a read of
        its own: aiohttp fails the connection with 1002, as without the tap."""
        link = await connect(side)
        link.inject(link.peer_frame(b"open", fin=False))
        link.inject(link.peer_frame(b"complete"))
        await assert_refused(link, WSCloseCode.PROTOCOL_ERROR)

    async def test_a_huge_declared_length_is_refused_before_its_payload(
        self, connect: Connect, side: Side
    ) -> None:
        """A frame header claiming 2 GiB goes to aiohttp at once (the tap does not wait for, or
        buffer, the payload): aiohttp closes the socket with 1009 before any more arrives."""
        link = await connect(side)
        link.send_raw(_huge_header(link) + b"0123456789")
        await assert_refused(link, WSCloseCode.MESSAGE_TOO_BIG)

    async def test_ping_pong_and_close_pass_through(self, connect: Connect, side: Side) -> None:
        """Pings are answered with their payload, pongs and close frames reach receive() (close code
        and reason intact), none of them offered."""
        link = await connect(side, server={"autoping": False}, client={"autoping": False})
        link.send_raw(link.peer_frame(b"are you there", PING))
        ping = await link.reader.message()
        assert (ping.type, ping.data) == (WSMsgType.PING, b"are you there")
        await link.tapped_ws.pong(ping.data)
        pong = await link.peer.receive(timeout=WAIT_S)
        assert (pong.type, pong.data) == (WSMsgType.PONG, b"are you there")
        link.send_raw(link.peer_frame(b"unasked", PONG))
        unasked = await link.reader.message()
        assert (unasked.type, unasked.data) == (WSMsgType.PONG, b"unasked")
        await link.peer.close(code=4001, message=b"bye now")
        close = await link.reader.message()
        assert (close.type, close.data, close.extra) == (WSMsgType.CLOSE, 4001, "bye now")
        assert link.reader.offered == []

    async def test_a_frame_masked_the_wrong_way_is_not_offered(self, connect: Connect, side: Side) -> None:
        """The tap only reads frames masked as its peer's role requires (from a client masked, from
        a server not); the others go to aiohttp, which unmasks by the frame's own bit."""
        link = await connect(side)
        wrong_mask = None if link.peer is link.client else MASK_KEY
        link.send_raw(frame(b"wrong way round", mask=wrong_mask))
        assert await link.reader.text() == "wrong way round"
        assert link.reader.offered == []

    async def test_reserved_bits_are_left_to_aiohttp(self, connect: Connect, side: Side) -> None:
        """A text frame with a reserved bit set (no extension negotiated) is not taken: aiohttp
        fails the connection with 1002."""
        link = await connect(side)
        link.send_raw(link.peer_frame(b"valid utf-8", rsv=RSV2))
        message = await link.reader.message()
        assert message.type is WSMsgType.ERROR
        assert message.data.code == WSCloseCode.PROTOCOL_ERROR
        assert link.reader.offered == []

    async def test_a_compressed_frame_is_left_to_aiohttp(self, connect: Connect, side: Side) -> None:
        """With permessage-deflate negotiated, a compressed frame (RSV1) goes to aiohttp to inflate,
        even when its compressed bytes happen to be valid UTF-8."""
        link = await connect(side, server={"compress": True}, client={"compress": 15})
        deflater = zlib.compressobj(wbits=-15)
        deflated = (deflater.compress(b"a") + deflater.flush(zlib.Z_SYNC_FLUSH))[:-4]  # RFC 7692 §7.2.1
        deflated.decode("utf-8")  # the trap: a tap ignoring RSV1 could offer these bytes as text
        link.send_raw(link.peer_frame(deflated, rsv=RSV1))
        assert await link.reader.text() == "a"
        assert link.reader.offered == []

    @pytest.mark.parametrize("size", [125, 126, 65535, 65536])
    async def test_extended_lengths_are_taken_intact(self, connect: Connect, side: Side, size: int) -> None:
        """7-bit, 16-bit and 64-bit lengths up to FAST_FRAME_MAX are read right: the payload taken is
        the one sent, and the frame after it is read from the right place."""
        link = await connect(side)
        big = text_of(size, "big")
        await link.peer.send_str(big)
        await link.peer.send_str("next")
        assert await link.reader.taken() == big
        assert await link.reader.taken() == "next"

    async def test_non_ascii_text_is_measured_in_bytes(self, connect: Connect, side: Side) -> None:
        """A text of 42 three-byte characters (126 bytes, a 16-bit length) is taken intact."""
        link = await connect(side)
        await link.peer.send_str("☎" * 42)
        assert await link.reader.taken() == "☎" * 42

    @pytest.mark.parametrize("size", [FAST_FRAME_MAX + 1, 1024 * 1024 + 3])
    async def test_a_frame_over_fast_frame_max_goes_to_aiohttp_intact(
        self, connect: Connect, side: Side, size: int
    ) -> None:
        """A text longer than FAST_FRAME_MAX (arriving over several reads) is forwarded byte for byte:
        receive() returns it whole, a frame sent right behind it comes after it, and frames are
        taken again once the reader has it."""
        link = await connect(side)
        big = text_of(size, "big")
        await link.peer.send_str(big)
        await link.peer.send_str("behind")
        assert await link.reader.text() == big
        behind = await link.reader.next()  # taken or not, depending on where TCP split the stream
        assert behind == Taken("behind") or (not isinstance(behind, Taken) and behind.data == "behind")
        await link.peer.send_str("later")
        assert await link.reader.taken() == "later"
        assert big not in link.reader.offered

    async def test_invalid_utf8_closes_the_socket_with_1007(self, connect: Connect, side: Side) -> None:
        """A text frame that is not UTF-8 is declined, and aiohttp closes the socket with 1007."""
        link = await connect(side)
        link.send_raw(link.peer_frame(b"caf\xe9 \xff\xfe"))
        await assert_refused(link, WSCloseCode.INVALID_TEXT)

    @pytest.mark.parametrize("size", [1000, 1001, 1500, FAST_FRAME_MAX])
    async def test_a_frame_over_max_msg_size_is_closed_with_1009(
        self, connect: Connect, side: Side, size: int
    ) -> None:
        """A frame of max_msg_size bytes or more (aiohttp's own rule: ">=") is not taken, though it is
        below FAST_FRAME_MAX: aiohttp closes the socket with 1009 (MESSAGE_TOO_BIG)."""
        options = {"max_msg_size": 1000}
        link = await connect(side, **{side: options})
        await link.peer.send_str(text_of(size))
        await assert_refused(link, WSCloseCode.MESSAGE_TOO_BIG)

    async def test_a_frame_just_under_max_msg_size_is_taken(self, connect: Connect, side: Side) -> None:
        """One byte under max_msg_size, a frame is taken like any other."""
        link = await connect(side, **{side: {"max_msg_size": 1000}})
        await link.peer.send_str(text_of(999))
        assert await link.reader.taken() == text_of(999)

    async def test_max_msg_size_0_means_no_limit_but_fast_frame_max(
        self, connect: Connect, side: Side
    ) -> None:
        """With no size limit, frames up to FAST_FRAME_MAX are taken and longer ones come out of
        receive() whole (not refused)."""
        link = await connect(side, **{side: {"max_msg_size": 0}})
        await link.peer.send_str(text_of(FAST_FRAME_MAX))
        assert await link.reader.taken() == text_of(FAST_FRAME_MAX)
        for size in (FAST_FRAME_MAX + 1, 5 * 1024 * 1024):
            await link.peer.send_str(text_of(size))
            assert await link.reader.text() == text_of(size)

    async def test_a_tap_without_a_handler_takes_nothing(self, connect: Connect, side: Side) -> None:
        """With `handler` set to None (untap), every frame comes out of receive()."""
        link = await connect(side)
        assert link.reader.tap is not None
        link.reader.tap.handler = None
        await link.peer.send_str("for receive")
        assert await link.reader.text() == "for receive"
        assert link.reader.offered == []
        assert link.reader.tap.taken_fast == 0

    async def test_taken_fast_counts_taken_frames_only(self, connect: Connect, side: Side) -> None:
        """taken_fast counts the frames the handler took, not those it declined or never saw."""
        link = await connect(side, accept=lambda text: text.startswith("take"))
        for text in ("take 1", "leave 1", "take 2", "take 3"):
            await link.peer.send_str(text)
            await link.reader.next()  # one at a time: a declined frame holds back the next (pending)
        await link.peer.send_bytes(b"binary")
        await link.reader.next()
        assert [e for e in link.reader.log if isinstance(e, Taken)] == [
            Taken("take 1"),
            Taken("take 2"),
            Taken("take 3"),
        ]
        assert link.reader.tap is not None
        assert link.reader.tap.taken_fast == 3

    async def test_tapping_again_replaces_the_handler(self, connect: Connect, side: Side) -> None:
        """A second tap() gives the same tap a new handler (a new model session, say): frames go to
        the new one, and the socket's parser is still that one tap."""
        link = await connect(side)
        moved: list[str] = []
        second = fastws.tap(link.tapped_ws, lambda text: moved.append(text) is None, DEFAULT_MAX_MSG_SIZE)
        assert second is link.reader.tap
        assert protocol_of(link.tapped_ws)._payload_parser is second
        await link.peer.send_str("to the new handler")
        await link.peer.send_str("and after it")
        await link.peer.close()
        assert (await link.reader.message()).type is WSMsgType.CLOSE
        assert moved == ["to the new handler", "and after it"]
        assert link.reader.offered == []

    async def test_no_handler_after_a_close(self, connect: Connect, side: Side) -> None:
        """Once the peer's close frame has come, tap() gives no handler (returns None)."""
        link = await connect(side)
        await link.peer.close()
        assert (await link.reader.message()).type is WSMsgType.CLOSE
        assert fastws.tap(link.tapped_ws, accept_all, DEFAULT_MAX_MSG_SIZE) is None


# -- tap() and writer() themselves -------------------------------------------------------------------


class TestTapAndWriterSetUp:
    async def test_this_aiohttp_has_what_fastws_needs(self, connect: Connect) -> None:
        """tap() and writer() work on both ends of a real connection with the installed aiohttp (if an
        aiohttp release moves its internals, this fails instead of the fast path silently going)."""
        link = await connect()
        assert fastws._mask is not None
        assert fastws.writer(link.server) is not None
        assert fastws.writer(link.client) is not None
        # The tap was fitted when aiohttp made the parser: it is what the protocol feeds.
        assert isinstance(link.server._fastws_tap, FrameTap)
        assert isinstance(link.client._fastws_tap, FrameTap)
        assert protocol_of(link.server)._payload_parser is link.server._fastws_tap
        assert protocol_of(link.client)._payload_parser is link.client._fastws_tap
        assert fastws.tap(link.server, accept_all) is link.server._fastws_tap
        assert fastws.tap(link.client, accept_all, DEFAULT_MAX_MSG_SIZE) is link.client._fastws_tap

    async def test_a_plain_socket_is_never_tapped(self, connect: Connect) -> None:
        """aiohttp's own socket classes get no tap: tap() returns None and leaves the parser alone
        (fitting one mid-stream could cut a frame in two). They still get a direct writer."""
        link = await connect(plain=True)
        parsers = protocol_of(link.server)._payload_parser, protocol_of(link.client)._payload_parser
        assert fastws.tap(link.server, accept_all) is None
        assert fastws.tap(link.client, accept_all, DEFAULT_MAX_MSG_SIZE) is None
        assert (protocol_of(link.server)._payload_parser, protocol_of(link.client)._payload_parser) == parsers
        assert fastws.writer(link.server) is not None

    async def test_an_unprepared_socket_is_neither_tapped_nor_written(self) -> None:
        """A socket not yet prepared has no writer or parser: tap() and writer() return None."""
        ws = web.WebSocketResponse()
        assert fastws.tap(ws, accept_all) is None
        assert fastws.writer(ws) is None

    async def test_a_client_socket_is_not_tapped_without_its_size_limit(self, connect: Connect) -> None:
        """A client socket does not expose its max_msg_size: tap() without one returns None (and
        leaves the socket's parser alone), and a negative limit is refused too."""
        link = await connect()
        parser = protocol_of(link.client)._payload_parser
        assert fastws.tap(link.client, accept_all) is None
        assert fastws.tap(link.client, accept_all, -1) is None
        assert protocol_of(link.client)._payload_parser is parser
        await link.server.send_str("untouched")
        assert (await link.client.receive(timeout=WAIT_S)).data == "untouched"

    async def test_a_compressed_socket_gets_no_direct_writer(self, connect: Connect) -> None:
        """With permessage-deflate negotiated, writer() returns None on both ends (frames need
        aiohttp's compressor); without it, both ends get one."""
        link = await connect(server={"compress": True}, client={"compress": 15})
        assert fastws.writer(link.server) is None
        assert fastws.writer(link.client) is None
        plain = await connect(server={"compress": True})
        assert fastws.writer(plain.server) is not None
        assert fastws.writer(plain.client) is not None

    async def test_a_tappable_socket_without_a_handler_receives_as_usual(self, connect: Connect) -> None:
        """With no handler, receive() returns what aiohttp's would: text, binary, then the close."""
        link = await connect()
        await link.client.send_str("text")
        await link.client.send_bytes(b"bytes")
        async with asyncio.TaskGroup() as group:  # the client's close waits for the server's reply
            group.create_task(link.client.close(code=4002, message=b"done"))
            messages = [await link.server.receive() for _ in range(3)]
        assert [(m.type, m.data, m.extra) for m in messages] == [
            (WSMsgType.TEXT, "text", ""),
            (WSMsgType.BINARY, b"bytes", ""),
            (WSMsgType.CLOSE, 4002, "done"),
        ]


# -- DirectWriter ------------------------------------------------------------------------------------

SIZES = [0, 1, 125, 126, 127, 65535, 65536, 200_000]


class TestDirectWriter:
    async def test_server_frames_arrive_intact(self, connect: Connect) -> None:
        """Unmasked frames of every length form, written one per call, arrive intact at a client."""
        link = await connect()
        direct = fastws.writer(link.server)
        assert direct is not None
        texts = [text_of(n, str(n)) for n in SIZES] + ["é" * 63, "☎" * 22_000]
        for text in texts:
            assert direct.ready()
            direct.write([text])
        for text in texts:
            message = await link.client.receive(timeout=WAIT_S)
            assert (message.type, message.data) == (WSMsgType.TEXT, text)

    async def test_several_texts_in_one_write_arrive_in_order(self, connect: Connect) -> None:
        """write() of several texts sends them all, in order, and they interleave correctly with
        aiohttp's own send_str."""
        link = await connect()
        direct = fastws.writer(link.server)
        assert direct is not None
        batch = [text_of(n, str(n)) for n in SIZES]
        direct.write(batch)
        await link.server.send_str("from aiohttp")
        direct.write(["last"])
        expected = [*batch, "from aiohttp", "last"]
        assert [(await link.client.receive(timeout=WAIT_S)).data for _ in expected] == expected

    async def test_client_frames_are_masked_and_arrive_intact(self, connect: Connect) -> None:
        """A client's direct frames are masked (checked on the bytes the server's parser is fed)
        and arrive intact, one per write or several in one."""
        link = await connect()
        protocol = protocol_of(link.server)
        recorder = RecordingParser(protocol._payload_parser)
        protocol._payload_parser = recorder
        direct = fastws.writer(link.client)
        assert direct is not None
        texts = [text_of(n, str(n)) for n in SIZES] + ["é" * 63]
        direct.write([texts[0]])
        direct.write(texts[1:])
        for text in texts:
            message = await link.server.receive(timeout=WAIT_S)
            assert (message.type, message.data) == (WSMsgType.TEXT, text)
        frames = parse_frames(bytes(recorder.data))
        assert [f.payload.decode() for f in frames] == texts
        assert all(f.masked and f.fin and f.opcode == TEXT and f.rsv == 0 for f in frames)
        assert len({f.key for f in frames}) == len(frames)  # a fresh key per frame (RFC 6455 §5.3)

    async def test_not_ready_once_closed(self, connect: Connect) -> None:
        """ready() is False on both ends once the socket has closed."""
        link = await connect("server", accept=lambda text: False)
        server_direct, client_direct = fastws.writer(link.server), fastws.writer(link.client)
        assert server_direct is not None and client_direct is not None
        assert server_direct.ready() and client_direct.ready()
        await link.client.close()
        assert (await link.reader.message()).type is WSMsgType.CLOSE
        assert not client_direct.ready()
        assert not server_direct.ready()

    async def test_not_ready_while_the_send_buffer_is_past_the_cap(self, connect: Connect) -> None:
        """With the peer not reading, ready() turns False once the transport holds WRITE_BUFFER_CAP
        bytes; when the peer has read everything, it is True again and nothing was lost."""
        link = await connect()
        direct = fastws.writer(link.server)
        assert direct is not None
        sender, reader = transport_of(link.server), transport_of(link.client)
        reader.pause_reading()
        texts: list[str] = []
        while sender.get_write_buffer_size() < fastws.WRITE_BUFFER_CAP:
            assert direct.ready()
            assert len(texts) < 64, "the kernel took 64 MiB without the peer reading"
            texts.append(text_of(1024 * 1024, str(len(texts))))
            direct.write([texts[-1]])
        assert not direct.ready()
        reader.resume_reading()
        for text in texts:
            message = await link.client.receive(timeout=WAIT_S)
            assert message.data == text
        assert sender.get_write_buffer_size() == 0
        assert direct.ready()


# -- the heartbeat of a tapped socket ---------------------------------------------------------------


class TestHeartbeat:
    @pytest.mark.parametrize("side", SIDES)
    async def test_tapping_lightens_the_heartbeat(self, connect: Connect, side: Side) -> None:
        """A tapped socket with a heartbeat gets the light per-read callback; one without keeps none."""
        link = await connect(server={"heartbeat": 30.0}, client={"heartbeat": 30.0})
        ws = link.server if side == "server" else link.client
        assert fastws.tap(ws, accept_all, DEFAULT_MAX_MSG_SIZE) is not None
        assert isinstance(protocol_of(ws)._data_received_cb, fastws._Heartbeat)
        plain = await connect()
        ws = plain.server if side == "server" else plain.client
        assert fastws.tap(ws, accept_all, DEFAULT_MAX_MSG_SIZE) is not None
        assert protocol_of(ws)._data_received_cb is None

    async def test_a_read_moves_the_heartbeat_deadline(self, connect: Connect) -> None:
        """Each read pushes the next ping a full interval away (what aiohttp's reset does)."""
        link = await connect("server", server={"heartbeat": 2.0})
        loop = asyncio.get_running_loop()
        before = link.server._heartbeat_when
        at_take: list[tuple[float, float]] = []

        def accept(text: str) -> bool:
            at_take.append((link.server._heartbeat_when, loop.time()))
            return True

        link.reader.accept = accept
        await link.client.send_str("traffic")
        assert await link.reader.taken() == "traffic"
        [(when, now)] = at_take
        assert when > before
        assert 0 < when - now <= 2.0

    async def test_a_silent_peer_is_still_closed_after_traffic(self, connect: Connect) -> None:
        """After taken traffic, a peer that stops sending and never answers the ping is dropped by
        the heartbeat."""
        link = await connect("server", server={"heartbeat": 0.2}, client={"autoping": False})
        for n in range(5):
            await link.client.send_str(f"audio {n}")
            assert await link.reader.taken() == f"audio {n}"
        ping = await link.client.receive(timeout=WAIT_S)
        assert ping.type is WSMsgType.PING
        message = await link.reader.message()
        assert message.type is WSMsgType.ERROR
        assert isinstance(message.data, TimeoutError)
        assert link.server.close_code == WSCloseCode.ABNORMAL_CLOSURE

    async def test_traffic_after_a_ping_keeps_the_socket(self, connect: Connect) -> None:
        """Frames arriving while a pong is awaited count as life (the pong wait is cancelled): the
        heartbeat pings again later instead of closing the socket."""
        link = await connect("server", server={"heartbeat": 2.0}, client={"autoping": False})
        for round_ in range(2):
            ping = await link.client.receive(timeout=WAIT_S)
            assert ping.type is WSMsgType.PING, round_
            await link.client.send_str(f"alive {round_}")  # instead of a pong
            assert await link.reader.taken() == f"alive {round_}"
        assert not link.server.closed


# -- FrameTap fed directly (a recording parser behind it, no socket) ----------------------------------


@dataclass
class Bench:
    """A FrameTap whose reader always waits, in front of a parser that records what it is fed."""

    tap: FrameTap
    parser: RecordingParser
    log: list[tuple[str, bytes]] = field(default_factory=list)

    def feed(self, data: bytes) -> None:
        self.tap.feed_data(data)
        self.tap.pending = 0  # the reader has had everything aiohttp queued (unless a test says not)


def bench(masked: bool, accept: Callable[[str], bool] = accept_all, limit: int = FAST_FRAME_MAX) -> Bench:
    log: list[tuple[str, bytes]] = []
    parser = RecordingParser(log=log)

    def handler(text: str) -> bool:
        if not accept(text):
            return False
        log.append(("taken", text.encode()))
        return True

    frame_tap = FrameTap(parser, masked=masked, handler=handler, limit=limit)
    frame_tap.reading = True
    return Bench(frame_tap, parser, log)


def check_split(b: Bench, frames: list[tuple[bytes, bool]], chunks: list[bytes]) -> list[bool]:
    """Feed `chunks`; check every frame was either taken or fed to the parser whole, and that when
    one was taken every frame before it had reached the parser already. Returns which were taken."""
    for chunk in chunks:
        b.feed(chunk)
    taken = [e[1] for e in b.log if e[0] == "taken"]
    was_taken: list[bool] = []
    fed_before: list[int] = []
    fed = 0
    for kind, data in b.log:
        if kind == "parser":
            fed += len(data)
        else:
            fed_before.append(fed)
    expected_fed = 0
    t = 0
    for raw, can_take in frames:
        payload = parse_frames(raw)[0].payload
        hit = t < len(taken) and taken[t] == payload and can_take and fed_before[t] == expected_fed
        if hit:
            t += 1
        else:
            expected_fed += len(raw)
        was_taken.append(hit)
    assert t == len(taken), "a frame was taken that cannot be, or out of order"
    not_taken = b"".join(raw for (raw, _), hit in zip(frames, was_taken, strict=True) if not hit)
    assert bytes(b.parser.data) == not_taken
    return was_taken


@pytest.mark.parametrize("masked", [True, False], ids=["server", "client"])
class TestFrameTapFeed:
    def mk(self, masked: bool, payload: bytes, opcode: int = TEXT, **options: Any) -> bytes:
        return frame(payload, opcode, mask=MASK_KEY if masked else None, **options)

    def stream(self, masked: bool) -> list[tuple[bytes, bool]]:
        """(frame, takeable): a mix of every kind, with a tap limit of 200."""
        mk = self.mk
        return [
            (mk(masked, b"first"), True),
            (mk(masked, b"no thanks"), False),
            (mk(masked, b"\x01\x02", BINARY), False),
            (mk(masked, b"ping", PING), False),
            (mk(masked, text_of(150).encode()), True),  # 16-bit length, under the limit
            (mk(masked, b"long form", long_form=True), True),  # 64-bit length
            (mk(masked, text_of(300).encode()), False),  # over the limit: forwarded
            (mk(masked, b"frag", fin=False), False),
            (mk(masked, b"ment", CONTINUATION), False),
            (mk(masked, b"\xff\xfe"), False),  # not UTF-8
            (mk(not masked, b"wrong mask"), False),
            (mk(masked, b"last"), True),
        ]

    def test_every_split_into_two_reads(self, masked: bool) -> None:
        """At every byte offset, each frame is taken or reaches the parser byte for byte, in order."""
        frames = self.stream(masked)
        stream = b"".join(raw for raw, _ in frames)
        for cut in range(len(stream) + 1):
            b = bench(masked, lambda text: text != "no thanks", limit=200)
            check_split(b, frames, [stream[:cut], stream[cut:]])
            assert b.tap._buf == b"" and b.tap._forward == 0, cut

    def test_one_byte_at_a_time_takes_every_takeable_frame(self, masked: bool) -> None:
        """Fed a byte per read, every takeable frame is taken and the rest reach the parser whole."""
        frames = self.stream(masked)
        stream = b"".join(raw for raw, _ in frames)
        b = bench(masked, lambda text: text != "no thanks", limit=200)
        was_taken = check_split(b, frames, [stream[i : i + 1] for i in range(len(stream))])
        assert was_taken == [takeable for _, takeable in frames]
        assert b.tap.taken_fast == 4

    def test_one_read_takes_only_what_comes_before_the_first_forwarded_frame(self, masked: bool) -> None:
        """In a single read, frames after one handed to aiohttp are handed on too (never overtake)."""
        frames = self.stream(masked)
        b = bench(masked, lambda text: text != "no thanks", limit=200)
        was_taken = check_split(b, frames, [b"".join(raw for raw, _ in frames)])
        assert was_taken == [True] + [False] * (len(frames) - 1)

    def test_nothing_is_taken_while_the_reader_is_away(self, masked: bool) -> None:
        """With the reader not waiting in receive(), frames go to the parser."""
        b = bench(masked)
        b.tap.reading = False
        data = self.mk(masked, b"one") + self.mk(masked, b"two")
        b.feed(data)
        assert bytes(b.parser.data) == data
        assert b.tap.taken_fast == 0

    def test_pending_messages_hold_back_the_tap_until_read(self, masked: bool) -> None:
        """Frames passed to aiohttp and not yet read block taking; taken() of a data message (not of
        a ping) releases one."""
        b = bench(masked, lambda text: text != "no")
        first, second, third = self.mk(masked, b"no"), self.mk(masked, b"yes"), self.mk(masked, b"yes again")
        b.tap.feed_data(first)
        assert b.tap.pending == 1
        b.tap.feed_data(second)
        assert b.tap.pending == 2
        b.tap.taken(WSMsgType.PING)
        assert b.tap.pending == 2
        b.tap.taken(WSMsgType.TEXT)
        b.tap.taken(WSMsgType.TEXT)
        assert b.tap.pending == 0
        b.tap.feed_data(third)
        assert bytes(b.parser.data) == first + second
        assert b.tap.taken_fast == 1

    def test_nothing_is_taken_after_a_close_frame(self, masked: bool) -> None:
        """A text frame behind the peer's close (a protocol violation) is not taken before the reader
        has seen the close: it goes to aiohttp, which drops what follows a close."""
        b = bench(masked)
        close = self.mk(masked, b"\x03\xe8", 0x8)
        after = self.mk(masked, b"after the close")
        b.feed(close)
        b.feed(after)
        assert bytes(b.parser.data) == close + after
        assert b.tap.taken_fast == 0

    def test_a_handler_that_raises_steps_the_tap_aside(self, masked: bool) -> None:
        """A handler bug does not escape into data_received: the frame goes to aiohttp, the failure
        is logged once, and later frames take the ordinary path too."""

        def broken(text: str) -> bool:
            raise KeyError(text)

        b = bench(masked, broken)
        first, second = self.mk(masked, b"one"), self.mk(masked, b"two")
        with capture_logs() as logs:
            b.feed(first)
            b.feed(second)
        assert bytes(b.parser.data) == first + second
        assert b.tap.handler is None and b.tap.taken_fast == 0
        assert [entry["event"] for entry in logs] == ["fastws.handler_failed"]

    @pytest.mark.parametrize("cut", [1, 2, 3, 9, 10, 14, 15, 1000, FAST_FRAME_MAX, FAST_FRAME_MAX + 9])
    def test_a_big_frame_is_forwarded_byte_for_byte(self, masked: bool, cut: int) -> None:
        """A frame over FAST_FRAME_MAX, split anywhere, is handed on as it arrives (`_forward`),
        exactly; a frame in the same read as its tail is handed on behind it, and the next is taken."""
        big = self.mk(masked, text_of(FAST_FRAME_MAX + 1).encode())
        behind, next_ = self.mk(masked, b"behind"), self.mk(masked, b"next")
        b = bench(masked)
        b.feed(big[:cut])
        length_known = 10  # 2 + an 8-byte length: from there on it is handed on, not held back
        assert bytes(b.parser.data) == (big[:cut] if cut >= length_known else b"")
        b.feed(big[cut:] + behind + next_[:3])
        b.feed(next_[3:])
        assert bytes(b.parser.data) == big + behind
        assert b.log[-1] == ("taken", b"next")
        assert b.tap.taken_fast == 1
        assert b.tap._forward == 0 and b.tap._buf == b""

    def test_a_big_frame_ending_a_read_leaves_the_next_read_free(self, masked: bool) -> None:
        """When a read ends exactly at a big frame's end, frames in the next read are taken."""
        big = self.mk(masked, text_of(FAST_FRAME_MAX + 1).encode())
        b = bench(masked)
        b.feed(big[:100])
        b.feed(big[100:])
        b.feed(self.mk(masked, b"one") + self.mk(masked, b"two"))
        assert bytes(b.parser.data) == big
        assert b.tap.taken_fast == 2

    def test_a_frame_over_the_limit_is_never_offered(self, masked: bool) -> None:
        """limit is the longest payload offered: one byte more goes to the parser."""
        b = bench(masked, limit=10)
        at, over = self.mk(masked, text_of(10).encode()), self.mk(masked, text_of(11).encode())
        b.feed(at)
        b.feed(over)
        assert b.tap.taken_fast == 1
        assert bytes(b.parser.data) == over

    def test_eof_reaches_the_parser(self, masked: bool) -> None:
        """feed_eof is passed on."""
        b = bench(masked)
        b.tap.feed_eof()
        assert b.parser.eof


# -- fitted from the first byte --------------------------------------------------------------------

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
HANDSHAKE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
BIG = text_of(3000, "session.created")


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()  # noqa: S324 - RFC 6455


def deltas_only(text: str) -> bool:
    return text.startswith("delta")


class TestFittedFromTheFirstByte:
    """Bytes that come with the handshake (the first frame of a model that speaks at once, cut
    anywhere by TCP) reach the parser before any code of ours runs: a tap fitted later would start
    reading in the middle of that frame. These send the handshake and part of a frame in one write."""

    @pytest.mark.parametrize("cut", [1, 2, 4, 5, 100, 2999])
    async def test_a_frame_cut_in_the_handshake_reply_reaches_a_client_intact(self, cut: int) -> None:
        first = frame(BIG.encode())
        rest = [frame(b"delta one"), frame(b'{"type":"response.done"}'), frame(b"delta two")]
        sent_rest = asyncio.Event()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            request = (await reader.readuntil(b"\r\n\r\n")).decode()
            [key] = [line.split(":", 1)[1].strip() for line in request.split("\r\n") if ":" in line and
                     line.split(":", 1)[0].lower() == "sec-websocket-key"]  # fmt: skip
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                + f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n".encode()
                + first[: cut + 4]  # the 4-byte header (16-bit length) and `cut` payload bytes
            )
            await writer.drain()
            await sent_rest.wait()
            writer.write(first[cut + 4 :] + b"".join(rest))
            await writer.drain()
            await reader.read()  # until the client closes
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with (
            server,
            aiohttp.ClientSession(ws_response_class=fastws.TappedClientWebSocketResponse) as http,
        ):
            ws = await http.ws_connect(f"http://127.0.0.1:{port}/")
            taken: list[str] = []
            assert fastws.tap(ws, lambda text: deltas_only(text) and taken.append(text) is None, 1 << 20)
            sent_rest.set()
            received: list[Any] = []
            while len(received) + len(taken) < 4:
                received.append((await ws.receive(timeout=WAIT_S)).data)
        # The frame cut in two arrives whole and first; the rest in order, the deltas taken or not.
        assert received[:1] == [BIG]
        assert [text for text in received if text != BIG] + taken in (
            ['{"type":"response.done"}', "delta one", "delta two"],
            ["delta one", '{"type":"response.done"}', "delta two"],
            ['{"type":"response.done"}', "delta two", "delta one"],
        )
        assert received.index('{"type":"response.done"}') < len(received)  # never taken

    @pytest.mark.parametrize("cut", [1, 2, 8, 9, 100, 2999])
    async def test_a_frame_sent_with_the_upgrade_request_reaches_a_server_intact(self, cut: int) -> None:
        first = frame(BIG.encode(), mask=MASK_KEY)
        rest = [frame(b"delta one", mask=MASK_KEY), frame(b"delta two", mask=MASK_KEY)]
        taken: list[str] = []
        received: list[WSMessage] = []
        done = asyncio.Event()

        async def handle(request: web.Request) -> web.WebSocketResponse:
            ws = fastws.TappedWebSocketResponse()
            await ws.prepare(request)
            assert fastws.tap(ws, lambda text: deltas_only(text) and taken.append(text) is None)
            while len(received) + len(taken) < 3:
                received.append(await ws.receive(timeout=WAIT_S))
            done.set()
            return ws

        app = web.Application()
        app.router.add_get("/ws", handle)
        async with GatewayTestServer(app) as test_server:
            reader, writer = await asyncio.open_connection("127.0.0.1", test_server.port)
            writer.write(
                b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                + f"Sec-WebSocket-Key: {HANDSHAKE_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
                + first[:cut]
            )
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")  # the 101
            writer.write(first[cut:] + b"".join(rest))
            await writer.drain()
            async with asyncio.timeout(WAIT_S):
                await done.wait()
            writer.close()
        assert [(m.type, m.data) for m in received[:1]] == [(WSMsgType.TEXT, BIG)]
        texts = [m.data for m in received[1:]] + taken
        assert sorted(texts) == ["delta one", "delta two"]
