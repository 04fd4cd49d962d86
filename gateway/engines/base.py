"""What every model engine offers the bridge: a factory that opens one session per call.

Engines translate their wire dialect into the small event set below at the edge, so the bridge speaks
one language whatever the model (beta and GA OpenAI spellings become the same `AudioDelta`).
Audio crosses this boundary base64-encoded in the session's negotiated format, so G.711 passthrough
never decodes a payload.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from gateway.audio import AudioFormat
from gateway.config import AnyAgentConfig
from gateway.errors import BadFrameReason

# The size limit of a model socket's messages (aiohttp's max_msg_size; a larger one closes the socket
# with 1009 before it is buffered). Neither OpenAI nor ElevenLabs documents a maximum, and the big
# messages are legitimate: audio deltas (PCM16 at 24 kHz is 64 KB of base64 a second) and the
# session echoes carrying the whole prompt and tool schemas. 16 MiB is over four minutes of 24 kHz
# audio in one delta, far beyond anything observed, and still bounds what one call can make us hold.
MODEL_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class AudioDelta:
    response_id: str
    item_id: str
    audio_b64: str


@dataclass(frozen=True, slots=True)
class AudioDone:
    """The model finished the audio of one output item (time to flush the outbound resampler)."""

    response_id: str
    item_id: str


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """The caller started talking (the barge-in trigger)."""

    item_id: str
    audio_start_ms: int


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    item_id: str
    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class InputCommitted:
    """The model committed the caller's audio buffer as a user turn."""

    item_id: str


@dataclass(frozen=True, slots=True)
class TranscriptionDone:
    """Caller speech was transcribed; `usage` is what the transcription model billed."""

    item_id: str
    usage: dict[str, object] | None
    transcript: str = ""


@dataclass(frozen=True, slots=True)
class Transcript:
    """A finished turn in words: the caller's (when the engine reports it) or the agent's."""

    role: Literal["caller", "agent"]
    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The model called a function, with complete arguments (a JSON object as text)."""

    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ResponseStarted:
    response_id: str


@dataclass(frozen=True, slots=True)
class ResponseDone:
    response_id: str
    status: str
    usage: dict[str, object] | None


@dataclass(frozen=True, slots=True)
class EngineFailure:
    """An error the model reported. `fatal` ones end the session; the rest are logged and survived.
    A fatal one that is `retryable` (the session expired) ends only the session: the bridge reconnects."""

    code: str
    message: str
    fatal: bool
    retryable: bool = False


@dataclass(frozen=True, slots=True)
class Turn:
    """One finished turn of the conversation, replayed into a new session after a reconnect.
    `tool` turns say which tool the agent used and what it returned."""

    role: Literal["caller", "agent", "tool"]
    text: str


@dataclass(frozen=True, slots=True)
class BadFrame:
    """A model frame the session could not use; the bridge counts it and the call goes on.

    `detail` says what was wrong (a field, an event name), never the frame's content.
    """

    reason: BadFrameReason
    detail: str = ""


EngineEvent = (
    AudioDelta
    | AudioDone
    | SpeechStarted
    | SpeechStopped
    | InputCommitted
    | TranscriptionDone
    | Transcript
    | ToolCall
    | ResponseStarted
    | ResponseDone
    | EngineFailure
    | BadFrame
)


class EngineSession(Protocol):
    """One call's conversation with a model. `events()` ends when the model socket closes.

    `input_format` (what `send_audio` takes) and `output_format` (what `AudioDelta` carries) are
    known once `start()` has returned: some engines learn them from the server.
    """

    input_format: AudioFormat
    output_format: AudioFormat

    @property
    def close_code(self) -> int | None:
        """The model socket's close code once `events()` has ended (None: no code was received)."""

    async def start(self, context: str | None = None) -> None:
        """Configure the session and have the agent speak first (its first message, if any).

        `context` is what a previous agent hands over (a summary of the call so far): the new agent
        knows it and greets the caller as the one taking over.
        """

    async def resume(self, turns: Sequence[Turn], instructions: str | None) -> None:
        """Configure the session like `start()`, but to carry on a conversation another session began
        (after a reconnect): `turns` become its context and nobody is greeted. With `instructions`,
        the agent speaks at once, following them."""

    async def send_audio(self, audio_b64: str) -> None: ...

    def audio_writer(self) -> Callable[[str], None] | None:
        """A function that sends one audio chunk at once, like `send_audio` without waiting; None
        when the socket cannot take it now (closing, or the model is behind): use `send_audio`."""

    def tap_audio(self, take: Callable[[AudioDelta], bool]) -> bool:
        """Offer audio deltas to `take` as they arrive, ahead of `events()` (which yields those it
        declines, in order). False when this session cannot (its deltas all come from `events()`)."""

    async def cancel_response(self) -> None:
        """Stop the response in progress (barge-in)."""

    async def truncate(self, item_id: str, audio_end_ms: int) -> None:
        """Tell the model the caller heard only the first `audio_end_ms` of an assistant item."""

    async def send_tool_result(self, call_id: str, output: str, is_error: bool) -> None:
        """Answer a ToolCall; the model then carries on talking."""

    async def send_user_text(self, text: str) -> None:
        """A caller turn in text (e.g. key presses); the model answers it."""

    async def say(self, instructions: str) -> None:
        """Have the agent speak now, following `instructions` (check-ins, goodbyes) on top of its own
        prompt, which stays in force."""

    def events(self) -> AsyncIterator[EngineEvent]: ...

    async def aclose(self) -> None: ...


class EngineFactory(Protocol):
    async def open(self, agent: AnyAgentConfig, call_id: str, carrier_format: AudioFormat) -> EngineSession:
        """Connect to the model for one call whose caller audio is `carrier_format`.

        Raises EngineError when the model cannot be reached.
        """
