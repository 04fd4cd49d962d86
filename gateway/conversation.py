"""The call's conversation as text, kept so a new model session can be given the context of the old one.

Caller transcriptions arrive late and out of order (OpenAI transcribes a committed turn while the agent
already answers it), so a caller turn takes its place when its audio is committed (`committed`) and
gets its words when the transcription comes (`caller_said` with the same item id). Turns never
transcribed (transcription off, or failed) are left out of the replay.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

from gateway.engines.base import Turn

# A turn longer than this is cut (tool outputs above all); the replay budget is for many turns.
MAX_TURN_CHARS = 1000


@dataclass(slots=True)
class _Entry:
    role: Literal["caller", "agent", "tool"]
    text: str
    item_id: str | None = None


class ConversationLog:
    """The last `max_entries` turns of one call. Not shared between calls."""

    def __init__(self, max_entries: int = 200) -> None:
        self._entries: deque[_Entry] = deque(maxlen=max_entries)

    def __len__(self) -> int:
        return sum(1 for entry in self._entries if entry.text)

    def committed(self, item_id: str) -> None:
        """The caller's turn `item_id` was committed; its words come with its transcription."""
        if item_id and not any(entry.item_id == item_id for entry in self._entries):
            self._entries.append(_Entry("caller", "", item_id))

    def caller_said(self, text: str, item_id: str = "") -> None:
        text = _clip(text)
        if not text:
            return
        for entry in reversed(self._entries):
            if item_id and entry.item_id == item_id:
                entry.text = text
                return
        self._entries.append(_Entry("caller", text, item_id or None))

    def agent_said(self, text: str) -> None:
        if text := _clip(text):
            self._entries.append(_Entry("agent", text))

    def tool_used(self, name: str, arguments: str, output: str) -> None:
        self._entries.append(
            _Entry("tool", _clip(f"The agent called {name}({arguments}); it returned {output}"))
        )

    def turns(self, max_turns: int, max_chars: int) -> list[Turn]:
        """The most recent turns, oldest first: at most `max_turns` of them and `max_chars` of text."""
        picked: list[Turn] = []
        chars = 0
        for entry in reversed(self._entries):
            if not entry.text:
                continue
            if len(picked) >= max_turns or chars + len(entry.text) > max_chars:
                break
            picked.append(Turn(entry.role, entry.text))
            chars += len(entry.text)
        picked.reverse()
        return picked


def _clip(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MAX_TURN_CHARS else text[: MAX_TURN_CHARS - 1] + "…"
