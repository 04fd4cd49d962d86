"""Where the caller's playback is, per assistant item, from carrier `mark` echoes.

The carrier echoes a mark once all audio queued before it has played (§C.5). A mark follows every
MARK_EVERY_MS of agent audio written (and the end of each item, and every hold chunk: see
AudioPath), not every media frame: each mark is two WebSocket messages (the mark and its echo), and
on a loopback socket in a VM a message costs about as much as the audio it confirms. So the played
position of an item is known up to the last echo, and the truncation point sent to the model on
barge-in is what the caller is confirmed to have heard: up to MARK_EVERY_MS (plus the echo's trip)
short of what they actually heard, never more, and never more than the model sent: sending more is
the "already shorter than" error that kills peers' calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CARRIER_BYTES_PER_MS = 8  # G.711 at 8 kHz
# Agent audio written between two marks. Shorter costs two messages per mark; longer makes the
# truncation point on barge-in lag what the caller heard by up to this much.
MARK_EVERY_MS = 200


@dataclass(slots=True)
class _Item:
    sent_bytes: int = 0  # carrier-side (8 kHz G.711) bytes written to the media socket
    played_bytes: int = 0  # of those, confirmed played by a mark echo
    model_bytes: int = 0  # bytes the model sent for this item, in its own format
    model_bytes_per_ms: float = CARRIER_BYTES_PER_MS
    done: bool = False  # the model finished this item's audio

    @property
    def model_ms(self) -> int:
        return int(self.model_bytes // self.model_bytes_per_ms)


@dataclass(slots=True)
class PlaybackTracker:
    model_bytes_per_ms: float = CARRIER_BYTES_PER_MS
    current_item: str | None = None
    _items: dict[str, _Item] = field(default_factory=dict)
    _marks: dict[str, tuple[str, int]] = field(default_factory=dict)
    mark_every_bytes: int = MARK_EVERY_MS * CARRIER_BYTES_PER_MS
    _seq: int = 0
    _unmarked_item: str | None = None  # the item of the audio written since the last mark, if any
    _unmarked_upto: int = 0  # that item's sent_bytes after it
    _unmarked_bytes: int = 0  # carrier bytes written since the last mark

    def _item(self, item_id: str) -> _Item:
        item = self._items.get(item_id)
        if item is None:
            # Only the item being played matters for barge-in; older ones are forgotten.
            self._items = {k: v for k, v in self._items.items() if k == self.current_item}
            item = self._items[item_id] = _Item(model_bytes_per_ms=self.model_bytes_per_ms)
        return item

    def received(self, item_id: str, model_bytes: int) -> None:
        """The model sent `model_bytes` more audio for `item_id`."""
        self._item(item_id).model_bytes += model_bytes
        self.current_item = item_id

    def sent(self, item_id: str, carrier_bytes: int) -> bool:
        """`carrier_bytes` of `item_id` were written to the carrier; True when a mark is due after them.

        The caller must send `mark()` before writing audio of another item (see `unmarked_item`), so
        that one mark never has to cover two items.
        """
        item = self._item(item_id)
        item.sent_bytes += carrier_bytes
        self._unmarked_item = item_id
        self._unmarked_upto = item.sent_bytes
        self._unmarked_bytes += carrier_bytes
        return self._unmarked_bytes >= self.mark_every_bytes

    @property
    def unmarked_item(self) -> str | None:
        """The item whose audio was written since the last mark (None if every byte is marked)."""
        return self._unmarked_item

    def mark(self) -> str | None:
        """A mark name covering all audio written so far, to send now; None if nothing is unmarked."""
        item_id = self._unmarked_item
        if item_id is None:
            return None
        self._seq += 1
        name = str(self._seq)
        self._marks[name] = (item_id, self._unmarked_upto)
        self._unmarked_item, self._unmarked_bytes = None, 0
        return name

    def finished(self, item_id: str) -> None:
        """The model sent the last audio of `item_id`."""
        item = self._items.get(item_id)
        if item is not None:
            item.done = True

    def marked(self, name: str) -> None:
        """The carrier echoed mark `name`: everything before it has played."""
        entry = self._marks.pop(name, None)
        if entry is None:
            return
        item = self._items.get(entry[0])
        if item is not None and entry[1] > item.played_bytes:
            item.played_bytes = entry[1]

    def pending_marks(self) -> int:
        return len(self._marks)

    def interrupt(self) -> tuple[str, int] | None:
        """On barge-in: (item, audio_end_ms) to truncate, or None if the caller heard everything sent.

        The marks still queued at the carrier are discarded: after a `clear` their echoes mean nothing.
        """
        item_id, self.current_item = self.current_item, None
        self._marks.clear()
        self._unmarked_item, self._unmarked_bytes = None, 0  # the `clear` drops that audio unplayed
        if item_id is None:
            return None
        item = self._items.pop(item_id)
        if item.done and item.played_bytes >= item.sent_bytes:
            return None
        played_ms = item.played_bytes // CARRIER_BYTES_PER_MS
        return item_id, min(played_ms, item.model_ms)
