"""gateway.fastws: FrameTap fed directly (a recording parser behind it, no socket)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import WSMsgType
from structlog.testing import capture_logs

from gateway.fastws import FAST_FRAME_MAX, FrameTap
from tests import fastws_support
from tests.fastws_support import (
    BINARY,
    CONTINUATION,
    MASK_KEY,
    PING,
    TEXT,
    RecordingParser,
    accept_all,
    frame,
    parse_frames,
    text_of,
)

connect = fastws_support.connect  # the fixture


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
