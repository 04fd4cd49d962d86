"""The stand-in for a call's model session while the keeper reconnects (gateway.reconnect).

Caller audio is counted and dropped, not queued: replayed seconds later, the model would answer speech
the caller has moved on from. Caller text (key presses) is kept for the new session, since a digit the
caller typed is still meant; agent prompts (check-ins, goodbyes) are dropped, their moment has passed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any

import structlog

from gateway.audio import b64_decoded_len
from gateway.engines.base import AudioDelta, EngineEvent, EngineSession, Turn

log = structlog.get_logger("gateway.reconnect")

MAX_QUEUED_TEXTS = 8


class GapSession:
    """Stands in for the model while a reconnect is under way: caller audio is counted and dropped;
    caller text (key presses) is kept for the new session; anything else is dropped."""

    def __init__(self, dead: EngineSession) -> None:
        self.input_format = dead.input_format
        self.output_format = dead.output_format
        self.dropped_audio_bytes = 0
        self.texts: list[str] = []
        self.closed = asyncio.Event()  # aclose(): the call is ending, stop reconnecting

    @property
    def close_code(self) -> int | None:
        return None

    @property
    def dropped_audio_ms(self) -> int:
        return self.dropped_audio_bytes * 1000 // max(1, self.input_format.bytes_per_second)

    async def start(self, context: str | None = None) -> None:
        """Nothing to start."""

    async def resume(self, turns: Sequence[Turn], instructions: str | None) -> None:
        """Nothing to resume."""

    async def send_audio(self, audio_b64: str) -> None:
        self.dropped_audio_bytes += b64_decoded_len(audio_b64)

    def audio_writer(self) -> Callable[[str], None] | None:
        """None: gap audio takes the ordinary path, so audio read after the new session is installed
        reaches it, however close the two are."""
        return None

    def tap_audio(self, take: Callable[[AudioDelta], bool]) -> bool:
        """No model, no deltas."""
        return False

    async def cancel_response(self) -> None:
        """No response to cancel."""

    async def truncate(self, item_id: str, audio_end_ms: int) -> None:
        """No item to truncate."""

    async def send_tool_result(self, call_id: str, output: str, is_error: bool) -> None:
        """Not reached: results wait for the reconnect (SessionKeeper.send_tool_result)."""

    async def send_user_text(self, text: str) -> None:
        if len(self.texts) < MAX_QUEUED_TEXTS:
            self.texts.append(text)

    async def say(self, instructions: str) -> None:
        log.info("engine.prompt_dropped")  # a check-in or goodbye meant for a moment that has passed

    async def events(self) -> AsyncIterator[EngineEvent]:
        return
        yield  # pragma: no cover - makes this an (empty) async generator

    async def aclose(self) -> None:
        self.closed.set()

    async def wait_closed(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s`; True if the call started ending meanwhile."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.closed.wait()
        except TimeoutError:
            return False
        return True

    async def unless_closed(
        self, opening: Coroutine[Any, Any, EngineSession], call_id: str
    ) -> EngineSession | None:
        """The session `opening` opens, or None if the call starts ending first: the opening is then
        cancelled, and a session it had opened already is closed."""
        task = asyncio.create_task(opening, name=f"call:{call_id}:reconnect")
        ending = asyncio.create_task(self.closed.wait(), name=f"call:{call_id}:reconnect_gap")
        try:
            await asyncio.wait({task, ending}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # the reconnect's budget ran out, or the call's task was cancelled
            await _abandon(task)
            raise
        finally:
            ending.cancel()
            await asyncio.gather(ending, return_exceptions=True)
        if not task.done():
            await _abandon(task)
            return None
        return task.result()


async def _abandon(task: asyncio.Task[EngineSession]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    if not task.cancelled() and task.exception() is None:
        await task.result().aclose()  # it had opened the session already
