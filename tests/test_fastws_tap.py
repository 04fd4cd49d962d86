"""gateway.fastws: FrameTap on real sockets, from both ends (see tests/fastws_support.py)."""

from __future__ import annotations

import zlib

import pytest
from aiohttp import WSCloseCode, WSMsgType

from gateway import fastws
from gateway.fastws import FAST_FRAME_MAX
from tests import fastws_support
from tests.fastws_support import (
    BINARY,
    CONTINUATION,
    DEFAULT_MAX_MSG_SIZE,
    MASK_KEY,
    PING,
    PONG,
    RSV1,
    RSV2,
    SIDES,
    WAIT_S,
    Connect,
    Link,
    Side,
    Taken,
    _huge_header,
    accept_all,
    assert_refused,
    frame,
    protocol_of,
    text_of,
)

connect = fastws_support.connect  # the fixture


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
