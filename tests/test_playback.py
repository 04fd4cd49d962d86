"""Tests for gateway.playback.PlaybackTracker: what the caller actually heard, from Twilio mark echoes.

The tracker's answer becomes `conversation.item.truncate.audio_end_ms` on barge-in, so the two
properties pinned hardest are: it is exactly the confirmed-played audio (8 carrier bytes per ms of
8 kHz G.711), and it never exceeds the audio the model sent for that item.
"""

from __future__ import annotations

import pytest

from gateway.playback import CARRIER_BYTES_PER_MS, MARK_EVERY_MS, PlaybackTracker

PCM24K_BYTES_PER_MS = 48  # PCM16 mono at 24 kHz
ULAW_BYTES_PER_MS = 8
FRAME = 160  # 20 ms of 8 kHz µ-law


def sent_marked(tracker: PlaybackTracker, item_id: str, carrier_bytes: int) -> str:
    """Write a chunk and mark it at once (the gateway marks less often; the tracker allows any spacing)."""
    tracker.sent(item_id, carrier_bytes)
    name = tracker.mark()
    assert name is not None
    return name


def stream(tracker: PlaybackTracker, item_id: str, frames: int, model_bytes_per_frame: int) -> list[str]:
    """Each 20 ms model chunk is received, sent to the carrier and marked."""
    marks = []
    for _ in range(frames):
        tracker.received(item_id, model_bytes_per_frame)
        marks.append(sent_marked(tracker, item_id, FRAME))
    return marks


class TestMarkBookkeeping:
    def test_carrier_rate(self) -> None:
        """Carrier audio is G.711 at 8 kHz: 8 bytes per millisecond."""
        assert CARRIER_BYTES_PER_MS == 8

    def test_each_send_gets_a_fresh_mark(self) -> None:
        """Every sent chunk gets its own mark name, never reused, and is pending until echoed."""
        tracker = PlaybackTracker()
        names = stream(tracker, "item_a", 5, FRAME)
        assert len(set(names)) == 5
        assert tracker.pending_marks() == 5
        tracker.marked(names[0])
        tracker.marked(names[1])
        assert tracker.pending_marks() == 3

    def test_names_unique_across_items_and_interrupts(self) -> None:
        """Mark names stay unique across items and interrupts, so a stale echo can never match a new mark."""
        tracker = PlaybackTracker()
        first = stream(tracker, "item_a", 3, FRAME)
        tracker.interrupt()
        second = stream(tracker, "item_b", 3, FRAME)
        assert not set(first) & set(second)

    def test_unknown_mark_ignored(self) -> None:
        """An echo of a mark we never sent changes nothing."""
        tracker = PlaybackTracker()
        names = stream(tracker, "item_a", 4, FRAME)
        tracker.marked("no-such-mark")
        tracker.marked(names[0])
        assert tracker.pending_marks() == 3
        assert tracker.interrupt() == ("item_a", 20)

    def test_duplicate_echo_ignored(self) -> None:
        """A mark echoed twice counts once and leaves other pending marks alone."""
        tracker = PlaybackTracker()
        names = stream(tracker, "item_a", 4, FRAME)
        tracker.marked(names[1])
        tracker.marked(names[1])
        assert tracker.pending_marks() == 3
        assert tracker.interrupt() == ("item_a", 40)

    def test_out_of_order_echo_never_moves_back(self) -> None:
        """An older mark echoed after a newer one does not reduce the played position."""
        tracker = PlaybackTracker()
        names = stream(tracker, "item_a", 4, FRAME)
        tracker.marked(names[2])
        tracker.marked(names[0])
        assert tracker.interrupt() == ("item_a", 60)

    def test_mark_covers_everything_before_it(self) -> None:
        """One echo confirms all audio sent before its mark, even chunks whose marks are not echoed yet."""
        tracker = PlaybackTracker()
        names = stream(tracker, "item_a", 10, FRAME)
        tracker.marked(names[6])
        assert tracker.interrupt() == ("item_a", 140)

    def test_uneven_chunks(self) -> None:
        """Played bytes are summed exactly over chunks of any size (e.g. a resampler flush tail)."""
        tracker = PlaybackTracker(model_bytes_per_ms=ULAW_BYTES_PER_MS)
        tracker.received("item_a", 2000)
        tracker.marked(sent_marked(tracker, "item_a", 800))
        tracker.marked(sent_marked(tracker, "item_a", 328))
        tracker.sent("item_a", 872)
        assert tracker.interrupt() == ("item_a", 141)  # 1128 bytes played = 141 ms


class TestInterrupt:
    def test_nothing_playing(self) -> None:
        """Barge-in before any model audio truncates nothing."""
        assert PlaybackTracker().interrupt() is None

    def test_pcm24k_partial_playback(self) -> None:
        """pcm24k: 10 chunks of 20 ms (960 model bytes each) sent, 3 confirmed → truncate at 60 ms."""
        tracker = PlaybackTracker(model_bytes_per_ms=PCM24K_BYTES_PER_MS)
        names = stream(tracker, "item_a", 10, 20 * PCM24K_BYTES_PER_MS)
        tracker.marked(names[2])
        assert tracker.interrupt() == ("item_a", 60)

    def test_ulaw_partial_playback(self) -> None:
        """g711 passthrough: model bytes are carrier bytes; 7 of 10 chunks confirmed → 140 ms."""
        tracker = PlaybackTracker(model_bytes_per_ms=ULAW_BYTES_PER_MS)
        names = stream(tracker, "item_a", 10, FRAME)
        tracker.marked(names[6])
        assert tracker.interrupt() == ("item_a", 140)

    def test_nothing_played_yet(self) -> None:
        """Audio sent but no echo yet: the caller heard nothing, so truncate at 0 ms."""
        tracker = PlaybackTracker(model_bytes_per_ms=PCM24K_BYTES_PER_MS)
        stream(tracker, "item_a", 3, 20 * PCM24K_BYTES_PER_MS)
        assert tracker.interrupt() == ("item_a", 0)

    def test_model_audio_not_yet_sent(self) -> None:
        """Audio received but not yet forwarded to the carrier is not counted as played."""
        tracker = PlaybackTracker(model_bytes_per_ms=PCM24K_BYTES_PER_MS)
        tracker.received("item_a", 1000 * PCM24K_BYTES_PER_MS)
        tracker.marked(sent_marked(tracker, "item_a", 400))
        assert tracker.interrupt() == ("item_a", 50)

    def test_rounds_down(self) -> None:
        """A partial millisecond played is not counted: never claim more than was heard."""
        tracker = PlaybackTracker(model_bytes_per_ms=ULAW_BYTES_PER_MS)
        tracker.received("item_a", 1000)
        tracker.marked(sent_marked(tracker, "item_a", 167))
        assert tracker.interrupt() == ("item_a", 20)

    @pytest.mark.parametrize(
        ("model_bytes_per_ms", "model_bytes", "model_ms"),
        [
            (PCM24K_BYTES_PER_MS, 4800, 100),
            (PCM24K_BYTES_PER_MS, 4847, 100),  # 100.98 ms of model audio is 100 whole ms
            (ULAW_BYTES_PER_MS, 800, 100),
            (ULAW_BYTES_PER_MS, 807, 100),
        ],
    )
    def test_never_more_than_the_model_sent(
        self, model_bytes_per_ms: int, model_bytes: int, model_ms: int
    ) -> None:
        """Even when more carrier audio played than the model sent (resampler rounding, a flush tail),
        audio_end_ms is capped at the model's own whole milliseconds for the item."""
        tracker = PlaybackTracker(model_bytes_per_ms=model_bytes_per_ms)
        tracker.received("item_a", model_bytes)
        tracker.marked(sent_marked(tracker, "item_a", 8 * 120))  # 120 ms played
        assert tracker.interrupt() == ("item_a", model_ms)

    def test_cap_accumulates_model_bytes(self) -> None:
        """The cap is over all audio the model sent for the item, across every delta."""
        tracker = PlaybackTracker(model_bytes_per_ms=PCM24K_BYTES_PER_MS)
        for _ in range(5):
            tracker.received("item_a", 10 * PCM24K_BYTES_PER_MS)
        tracker.marked(sent_marked(tracker, "item_a", 8 * 70))
        assert tracker.interrupt() == ("item_a", 50)

    def test_finished_and_fully_played(self) -> None:
        """An item the model finished and whose every sent byte was confirmed needs no truncate."""
        tracker = PlaybackTracker(model_bytes_per_ms=PCM24K_BYTES_PER_MS)
        names = stream(tracker, "item_a", 5, 20 * PCM24K_BYTES_PER_MS)
        tracker.finished("item_a")
        tracker.marked(names[-1])
        assert tracker.interrupt() is None

    def test_finished_but_still_playing(self) -> None:
        """A finished item whose tail is still queued at the carrier is truncated at what played."""
        tracker = PlaybackTracker(model_bytes_per_ms=PCM24K_BYTES_PER_MS)
        names = stream(tracker, "item_a", 5, 20 * PCM24K_BYTES_PER_MS)
        tracker.finished("item_a")
        tracker.marked(names[3])
        assert tracker.interrupt() == ("item_a", 80)

    def test_fully_played_but_not_finished(self) -> None:
        """All sent audio played but the model is still producing the item: truncate at the played point."""
        tracker = PlaybackTracker(model_bytes_per_ms=PCM24K_BYTES_PER_MS)
        names = stream(tracker, "item_a", 5, 20 * PCM24K_BYTES_PER_MS)
        tracker.marked(names[-1])
        assert tracker.interrupt() == ("item_a", 100)

    def test_finished_unknown_item_ignored(self) -> None:
        """finished() for an item never seen changes nothing."""
        tracker = PlaybackTracker()
        names = stream(tracker, "item_a", 2, FRAME)
        tracker.finished("item_zzz")
        tracker.marked(names[-1])
        assert tracker.interrupt() == ("item_a", 40)

    def test_interrupt_resets(self) -> None:
        """After an interrupt no item is current, no mark is pending, and a second interrupt is a no-op."""
        tracker = PlaybackTracker()
        stream(tracker, "item_a", 3, FRAME)
        assert tracker.interrupt() == ("item_a", 0)
        assert tracker.current_item is None
        assert tracker.pending_marks() == 0
        assert tracker.interrupt() is None

    def test_marks_from_before_interrupt_ignored(self) -> None:
        """Echoes of marks sent before a `clear` mean nothing afterwards, even for the same item id
        (late deltas of the interrupted item), so they cannot inflate the next truncation point."""
        tracker = PlaybackTracker(model_bytes_per_ms=PCM24K_BYTES_PER_MS)
        old = stream(tracker, "item_a", 10, 20 * PCM24K_BYTES_PER_MS)
        assert tracker.interrupt() == ("item_a", 0)
        stream(tracker, "item_a", 2, 20 * PCM24K_BYTES_PER_MS)
        for name in old:
            tracker.marked(name)
        assert tracker.pending_marks() == 2
        assert tracker.interrupt() == ("item_a", 0)

    def test_old_marks_do_not_count_for_a_new_item(self) -> None:
        """After an interrupt, a new item's position comes only from its own marks."""
        tracker = PlaybackTracker(model_bytes_per_ms=ULAW_BYTES_PER_MS)
        old = stream(tracker, "item_a", 5, FRAME)
        tracker.interrupt()
        new = stream(tracker, "item_b", 5, FRAME)
        for name in old:
            tracker.marked(name)
        tracker.marked(new[1])
        assert tracker.interrupt() == ("item_b", 40)


class TestSuccessiveItems:
    def test_current_item_follows_the_model(self) -> None:
        """current_item is the item the model most recently sent audio for."""
        tracker = PlaybackTracker()
        assert tracker.current_item is None
        tracker.received("item_a", 160)
        assert tracker.current_item == "item_a"
        tracker.received("item_b", 160)
        assert tracker.current_item == "item_b"

    def test_new_item_after_a_finished_one(self) -> None:
        """A new item starts its own accounting; barge-in truncates it, not the finished one."""
        tracker = PlaybackTracker(model_bytes_per_ms=PCM24K_BYTES_PER_MS)
        a = stream(tracker, "item_a", 10, 20 * PCM24K_BYTES_PER_MS)
        tracker.finished("item_a")
        tracker.marked(a[-1])
        b = stream(tracker, "item_b", 4, 20 * PCM24K_BYTES_PER_MS)
        tracker.marked(b[0])
        assert tracker.interrupt() == ("item_b", 20)

    def test_late_echoes_of_the_previous_item(self) -> None:
        """Echoes for the previous item arriving after the next began do not move the new item."""
        tracker = PlaybackTracker(model_bytes_per_ms=ULAW_BYTES_PER_MS)
        a = stream(tracker, "item_a", 10, FRAME)
        tracker.finished("item_a")
        b = stream(tracker, "item_b", 10, FRAME)
        for name in a:
            tracker.marked(name)
        tracker.marked(b[2])
        assert tracker.pending_marks() == 9
        assert tracker.interrupt() == ("item_b", 60)

    def test_third_item_forgets_the_first(self) -> None:
        """Only the item being played is kept, so a long call does not accumulate per-item state;
        echoes for a forgotten item are dropped harmlessly."""
        tracker = PlaybackTracker(model_bytes_per_ms=ULAW_BYTES_PER_MS)
        a = stream(tracker, "item_a", 3, FRAME)
        stream(tracker, "item_b", 3, FRAME)
        c = stream(tracker, "item_c", 3, FRAME)
        assert len(tracker._items) <= 2
        for name in a:
            tracker.marked(name)
        tracker.marked(c[0])
        assert tracker.interrupt() == ("item_c", 20)

    def test_many_items_bounded_state(self) -> None:
        """Over hundreds of responses, per-item state stays bounded and only unechoed marks remain."""
        tracker = PlaybackTracker(model_bytes_per_ms=PCM24K_BYTES_PER_MS)
        for n in range(300):
            names = stream(tracker, f"item_{n}", 5, 20 * PCM24K_BYTES_PER_MS)
            tracker.finished(f"item_{n}")
            for name in names:
                tracker.marked(name)
        assert len(tracker._items) <= 2
        assert tracker.pending_marks() == 0
        assert tracker.interrupt() is None


class TestMarkSpacing:
    def test_a_mark_is_due_every_mark_every_ms(self) -> None:
        """sent() asks for a mark only once MARK_EVERY_MS of audio is unmarked: every 10th 20 ms frame."""
        tracker = PlaybackTracker()
        due = []
        for _ in range(30):
            if tracker.sent("item_a", FRAME):
                due.append(tracker.mark())
        assert MARK_EVERY_MS == 200
        assert len(due) == 3
        assert tracker.pending_marks() == 3

    def test_mark_covers_all_unmarked_audio(self) -> None:
        """One mark confirms every byte written before it, however many sends that was."""
        tracker = PlaybackTracker(model_bytes_per_ms=ULAW_BYTES_PER_MS)
        tracker.received("item_a", 7 * FRAME)
        for _ in range(7):
            tracker.sent("item_a", FRAME)
        name = tracker.mark()
        assert name is not None
        tracker.marked(name)
        assert tracker.interrupt() == ("item_a", 140)

    def test_nothing_to_mark(self) -> None:
        """With no audio written since the last mark there is no mark to send."""
        tracker = PlaybackTracker()
        assert tracker.mark() is None
        tracker.sent("item_a", FRAME)
        assert tracker.unmarked_item == "item_a"
        assert tracker.mark() is not None
        assert tracker.unmarked_item is None
        assert tracker.mark() is None

    def test_truncation_never_passes_the_last_echo(self) -> None:
        """Between marks, barge-in truncates at the last confirmed mark, however much more was sent:
        the caller may have heard more, but the model is never told they heard what they did not."""
        tracker = PlaybackTracker(model_bytes_per_ms=ULAW_BYTES_PER_MS)
        names = []
        for _ in range(25):  # 500 ms in 20 ms frames: marks at 200 and 400 ms
            tracker.received("item_a", FRAME)
            if tracker.sent("item_a", FRAME):
                names.append(tracker.mark())
        assert len(names) == 2
        assert names[0] is not None
        tracker.marked(names[0])
        assert tracker.interrupt() == ("item_a", 200)

    def test_interrupt_forgets_unmarked_audio(self) -> None:
        """Audio written but not yet marked when the caller interrupts is dropped by the `clear`:
        no mark is owed for it afterwards."""
        tracker = PlaybackTracker()
        tracker.sent("item_a", FRAME)
        tracker.interrupt()
        assert tracker.unmarked_item is None
        assert tracker.mark() is None
