"""gateway.fastws: DirectWriter, and the heartbeat of a tapped socket."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import WSCloseCode, WSMsgType

from gateway import fastws
from tests import fastws_support
from tests.fastws_support import (
    DEFAULT_MAX_MSG_SIZE,
    SIDES,
    TEXT,
    WAIT_S,
    Connect,
    RecordingParser,
    Side,
    accept_all,
    parse_frames,
    protocol_of,
    text_of,
    transport_of,
)

connect = fastws_support.connect  # the fixture


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
