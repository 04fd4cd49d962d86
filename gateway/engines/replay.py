"""The conversation so far, in the shapes a new model session accepts after a reconnect.

OpenAI (§A.3, §B.3): one `conversation.item.create` per turn. Caller turns are user messages with
`input_text`; agent turns are assistant messages, whose text part is `text` in the beta dialect and
`output_text` in GA (the GA assistant content union has no `text`); tool use is a system message
(`input_text`, the only system content type in either dialect). Replaying a tool call as a
`function_call` item would need its call_id to mean something to the new session; as text it
cannot be answered by mistake.

ElevenLabs (§E.2) has no way to add items to a conversation: the turns go in one `contextual_update`,
which the agent takes as background without answering it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.engines.base import Turn

# What the agent is told when it must speak at once after a reconnect: it was cut off mid-sentence,
# or the caller (or a tool) is waiting for an answer the dropped session never gave.
RESUME_INSTRUCTIONS = (
    "The phone line dropped for a moment and is back now. Carry on from where the conversation was: "
    "if you were speaking, briefly finish your point; if the caller was waiting for an answer, give "
    "it. Do not greet the caller again."
)
_LABELS = {"caller": "Caller", "agent": "Agent", "tool": "Tool"}


def openai_items(turns: Sequence[Turn], assistant_text: str) -> list[dict[str, Any]]:
    """`conversation.item.create` items for `turns`; `assistant_text` is the dialect's part type."""
    items: list[dict[str, Any]] = []
    for turn in turns:
        if turn.role == "caller":
            role, part = "user", "input_text"
        elif turn.role == "agent":
            role, part = "assistant", assistant_text
        else:
            role, part = "system", "input_text"
        items.append({"type": "message", "role": role, "content": [{"type": part, "text": turn.text}]})
    return items


def context_text(turns: Sequence[Turn]) -> str:
    """The turns as one block of text (ElevenLabs' `contextual_update`)."""
    lines = "\n".join(f"{_LABELS[turn.role]}: {turn.text}" for turn in turns)
    return (
        "This call was reconnected after a brief line drop; you are continuing it, so do not greet "
        f"the caller again. The conversation so far:\n{lines}"
    )
