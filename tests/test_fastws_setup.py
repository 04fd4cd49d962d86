"""gateway.fastws: tap() and writer() themselves, and taps fitted from a socket's first byte."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMessage, WSMsgType, web

from gateway import fastws
from gateway.fastws import FrameTap
from tests import fastws_support
from tests.conftest import GatewayTestServer
from tests.fastws_support import (
    DEFAULT_MAX_MSG_SIZE,
    MASK_KEY,
    WAIT_S,
    Connect,
    accept_all,
    frame,
    protocol_of,
    text_of,
)

connect = fastws_support.connect  # the fixture


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
