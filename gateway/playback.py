"""Where the caller's playback is, per assistant item, from carrier `mark` echoes.

Every outbound media frame is followed by a mark; the carrier echoes a mark once all audio queued
before it has played (§C.5). So the bytes played of an item are known exactly, and the truncation
point sent to the model on barge-in is what the caller heard, never more than the model sent: sending
more is the "already shorter than" error that kills peers' calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CARRIER_BYTES_PER_MS = 8  # G.711 at 8 kHz


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
    _seq: int = 0

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

    def sent(self, item_id: str, carrier_bytes: int) -> str:
        """`carrier_bytes` of `item_id` were written to the carrier; returns the mark name to send after."""
        item = self._item(item_id)
        item.sent_bytes += carrier_bytes
        self._seq += 1
        name = str(self._seq)
        self._marks[name] = (item_id, item.sent_bytes)
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
        if item_id is None:
            return None
        item = self._items.pop(item_id)
        if item.done and item.played_bytes >= item.sent_bytes:
            return None
        played_ms = item.played_bytes // CARRIER_BYTES_PER_MS
        return item_id, min(played_ms, item.model_ms)
