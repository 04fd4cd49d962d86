"""Keeping one call's model session alive: reconnect after a drop, roll over before the maximum length.

`SessionKeeper.run` is the downlink's loop over sessions. When a session's events end, the keeper
decides why: the bridge ended the call or replaced the session (hand-off, rollover) — carry on or stop;
the server closed it deliberately (1000) — the call ends (`engine_closed`); the socket dropped for a
reason a new socket can cure (`retry_cause`) or the server said the session expired — reconnect.
Reconnecting opens a new session for the same agent with bounded, jittered backoff, configures it
like the first (`resume`), gives it the conversation so far from the `ConversationLog`, and swaps it
in; caller audio during the gap goes to a `GapSession` and is dropped, never queued (the model would
answer stale speech). A replacement that drops again before it has proved itself (reconnect_policy.
PROVEN_AFTER_S) continues the same outage, with the attempts and budget it has left.
Failing that, the call ends as `engine_error`: the carrier apologises and hangs up.

Rollover is the planned variant: shortly before an OpenAI session's maximum length, the next session
is opened while the current one still carries the call, and swapped in once nobody is speaking (or
`rollover_wait_s` has passed), so nothing is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol

import structlog

from gateway.audio_path import AudioPath
from gateway.config import AnyAgentConfig, OpenAIAgentConfig, ReconnectConfig
from gateway.conversation import ConversationLog
from gateway.engines.base import (
    AudioDelta,
    AudioDone,
    BadFrame,
    EngineEvent,
    EngineFactory,
    EngineFailure,
    EngineSession,
    InputCommitted,
    ResponseDone,
    ResponseStarted,
    SpeechStarted,
    SpeechStopped,
    ToolCall,
    Transcript,
    TranscriptionDone,
    Turn,
)
from gateway.engines.replay import RESUME_INSTRUCTIONS
from gateway.errors import EngineError
from gateway.metrics import GatewayMetrics
from gateway.reconnect_policy import (
    PROVEN_AFTER_S,
    Recovery,
    backoff_delay,
    late_result_text,
    retry_cause,
)
from gateway.services import EndReason
from gateway.session_gap import GapSession

log = structlog.get_logger("gateway.reconnect")

DEAD_CLOSE_TIMEOUT_S = 1.0
Result = Literal["ok", "failed", "rollover", "rollover_failed"]


class KeeperHost(Protocol):
    """What the keeper needs of the bridge that owns it."""

    call_id: str
    audio: AudioPath
    session: EngineSession

    @property
    def end_reason(self) -> EndReason | None:
        """Set once the gateway decided to end the call (its session is then closed on purpose)."""


class SessionKeeper:
    """Owns the succession of one call's model sessions. Not shared between calls."""

    def __init__(
        self, host: KeeperHost, engines: EngineFactory, config: ReconnectConfig, metrics: GatewayMetrics
    ) -> None:
        self._host = host
        self._engines = engines
        self._config = config
        self._metrics = metrics
        self.log = ConversationLog()
        self.replayed_turns = 0  # of the last replacement
        self._agent: AnyAgentConfig | None = None
        self._born = 0.0  # loop time the current session started
        # One replacement at a time; tool results wait for it too, so that a result goes to the
        # session that comes out of a reconnect or a rollover, never to the one it replaces.
        self._lock = asyncio.Lock()
        self._recovery: Recovery | None = None  # the outage under way (or not yet over)
        self._activity = asyncio.Event()  # set on every observed event (rollover waits for quiet)
        self._calls: dict[str, tuple[EngineSession, str, str]] = {}  # call_id -> (session, name, args)
        self._agent_speaking = False
        self._caller_speaking = False
        self._answer_owed = False  # the caller (or a tool result) awaits a response not yet begun
        self._rollover: asyncio.Task[None] | None = None

    # -- what the bridge reports ------------------------------------------------------------------

    def started(self, session: EngineSession, agent: AnyAgentConfig) -> None:
        """`session` (for `agent`) now carries the call: its own start, a hand-off, a reconnect."""
        self._agent = agent
        self._born = asyncio.get_running_loop().time()
        self._agent_speaking = self._caller_speaking = False
        if self._rollover is None and self._config.rollover_after_s is not None:
            call_id = self._host.call_id
            self._rollover = asyncio.create_task(self._rollover_loop(), name=f"call:{call_id}:rollover")

    def observe(self, session: EngineSession, event: EngineEvent) -> None:
        """Every event the bridge reads from `session`, before it acts on it."""
        recovery = self._recovery
        if recovery is not None and recovery.installed and not isinstance(event, BadFrame | EngineFailure):
            self._recovered()  # the replacement works: the model answers or hears the caller
        if isinstance(event, ResponseStarted | AudioDelta):
            self._agent_speaking, self._answer_owed = True, False
        elif isinstance(event, ResponseDone | AudioDone):
            self._agent_speaking = False
        elif isinstance(event, SpeechStarted):
            self._caller_speaking = True
        elif isinstance(event, SpeechStopped | InputCommitted):
            self._caller_speaking, self._answer_owed = False, True
            if isinstance(event, InputCommitted):
                self.log.committed(event.item_id)
        elif isinstance(event, TranscriptionDone):
            self.log.caller_said(event.transcript, event.item_id)
        elif isinstance(event, Transcript):
            if event.role == "caller":
                self.log.caller_said(event.text)
            else:
                self.log.agent_said(event.text)
                self._answer_owed = False  # it answered (ElevenLabs says so before its audio)
        elif isinstance(event, ToolCall):
            self._calls[event.call_id] = (session, event.name, event.arguments)
        self._activity.set()

    def drop_tool_call(self, call_id: str) -> None:
        """Forget a ToolCall that gets no result (a hand-off answers it by changing the agent): a
        rollover must not wait for it."""
        if self._calls.pop(call_id, None) is not None:
            self._activity.set()

    async def aclose(self) -> None:
        if self._recovery is not None and self._recovery.installed:
            self._recovered()  # the replacement carried the call until it ended
        if self._rollover is not None:
            self._rollover.cancel()
            await asyncio.gather(self._rollover, return_exceptions=True)

    # -- the session loop -------------------------------------------------------------------------

    async def run(self, read: Callable[[EngineSession], Awaitable[None]]) -> EndReason:
        """Read sessions one after another until the call ends; returns why it ended."""
        while True:
            session = self._host.session
            failure: EngineError | None = None
            try:
                await read(session)
            except EngineError as exc:
                if not exc.retryable:
                    raise
                failure = exc
            if self._host.end_reason is not None:
                return self._host.end_reason
            if self._host.session is not session:
                continue  # handed off or rolled over: carry on with the new session
            cause = retry_cause(session.close_code) if failure is None else (failure.code or "error")
            if cause is not None and await self.recover(session, cause):
                continue
            if self._host.end_reason is not None:
                return self._host.end_reason
            if failure is not None:
                raise failure
            # A drop nothing could mend is the model failing mid-call (the caller hears the carrier's
            # apology); a deliberate close by the server just ends the call.
            return "engine_error" if cause is not None else "engine_closed"

    async def recover(self, dead: EngineSession, cause: str) -> bool:
        """Replace `dead` after it dropped; True once a new session carries the call."""
        if self._config.attempts == 0:
            return False
        async with self._lock:
            if self._host.session is not dead:
                return True  # replaced while we waited for the lock
            loop = asyncio.get_running_loop()
            dropped_at = loop.time()
            recovery = self._recovery
            if recovery is not None and recovery.installed and dropped_at - self._born >= PROVEN_AFTER_S:
                self._recovered()  # it carried the call long enough: this is a new outage
                recovery = None
            if recovery is None:
                recovery = self._recovery = Recovery()
            recovery.installed = False
            gap = GapSession(dead)
            self._host.session = gap
            try:
                # An expired session's socket may still be open; a peer that never answers the close
                # must not hold the reconnect up (aiohttp drops the connection when cancelled).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(DEAD_CLOSE_TIMEOUT_S):
                        await dead.aclose()
                session = await self._reconnect(gap, cause, recovery)
            finally:
                recovery.spent_s += loop.time() - dropped_at
            if session is None:
                if self._host.session is not gap:
                    self._recovery = None  # a hand-off replaced the gap: its session is a fresh start
                return self._host.session is not gap and self._host.end_reason is None
            log.info(
                "engine.reconnected",
                gap_s=round(loop.time() - dropped_at, 3),
                dropped_audio_ms=gap.dropped_audio_ms,
                replayed_turns=self.replayed_turns,
            )
            for text in gap.texts:
                await session.send_user_text(text)
            return True

    async def _reconnect(self, gap: GapSession, cause: str, recovery: Recovery) -> EngineSession | None:
        """Attempts, each after its backoff, within what is left of the outage's attempts and budget;
        the new session, installed, or None."""
        agent = self._agent
        assert agent is not None
        budget_s = self._config.budget_s - recovery.spent_s
        try:
            if budget_s <= 0:
                raise TimeoutError
            async with asyncio.timeout(budget_s):
                while recovery.attempts < self._config.attempts:
                    recovery.attempts += 1
                    attempt = recovery.attempts
                    delay_s = backoff_delay(attempt, self._config)
                    log.warning(
                        "engine.reconnecting", attempt=attempt, delay_s=round(delay_s, 3), reason=cause
                    )
                    if await gap.wait_closed(delay_s):
                        return None  # the call is ending
                    try:
                        # Abandoned (None) as soon as the call starts ending: a handshake may take
                        # 10 s (OpenAI) or 30 s (ElevenLabs), and the caller's goodbye must not wait.
                        session = await gap.unless_closed(self._open_resumed(agent), self._host.call_id)
                    except EngineError as exc:
                        cause = exc.code or "connect_failed"
                        log.warning("engine.reconnect_attempt_failed", attempt=attempt, error=str(exc))
                        if exc.retryable:
                            continue
                        break  # refused for good (401, 403, a 4xx): more attempts would be refused too
                    if session is None or gap.closed.is_set() or self._host.session is not gap:
                        if session is not None:
                            await session.aclose()  # a hand-off replaced the gap meanwhile
                        return None
                    self._install(session, agent)
                    recovery.installed = True  # counted `ok` once it has proved itself
                    return session
        except TimeoutError:
            cause = "budget_exhausted"
        self._recovery = None
        self._count("failed")
        log.error("engine.reconnect_failed", attempts=recovery.attempts, reason=cause)
        return None

    async def _open_resumed(self, agent: AnyAgentConfig) -> EngineSession:
        """A new session for `agent` given the conversation so far; the agent speaks at once only if
        it was cut off or owes an answer."""
        instructions = RESUME_INSTRUCTIONS if self._owes() else None
        host = self._host
        session = await self._engines.open(agent, host.call_id, host.audio.carrier_format)
        try:
            turns = self._turns()
            self.replayed_turns = len(turns)
            await session.resume(turns, instructions)
        except BaseException:
            await session.aclose()
            raise
        return session

    def _turns(self) -> list[Turn]:
        return self.log.turns(self._config.replay_turns, self._config.replay_chars)

    def _owes(self) -> bool:
        """Must the agent speak as soon as the new session is up?"""
        return self._agent_speaking or self._answer_owed

    def _install(self, session: EngineSession, agent: AnyAgentConfig) -> None:
        self._host.session = session
        # Fresh converters: no resampler state from before the gap, and the new session's items are
        # the only ones it can truncate. Tool calls of the old session stay registered: their
        # results become late results (send_tool_result).
        self._host.audio.negotiate(session, agent.resample_quality)
        self.started(session, agent)

    def _recovered(self) -> None:
        self._recovery = None
        self._count("ok")

    def _count(self, result: Result) -> None:
        engine = self._agent.engine if self._agent is not None else "unknown"
        self._metrics.engine_reconnects_total.labels(engine, result).inc()

    # -- tool results -----------------------------------------------------------------------------

    async def send_tool_result(self, call_id: str, output: str, is_error: bool) -> None:
        """Answer a ToolCall; if the session that made it has been replaced since, the new one never
        saw `call_id`, so the result reaches it as text instead."""
        async with self._lock:  # a reconnect or a rollover under way: answer the session it brings
            session = self._host.session
            owner, name, arguments = self._calls.pop(call_id, (session, "tool", ""))
            self.log.tool_used(name, arguments, output)
            self._answer_owed = True
            self._activity.set()  # a tool no longer running may be what a rollover waits for
            if owner is session:
                await session.send_tool_result(call_id, output, is_error)
            else:
                log.info("tool.result_after_reconnect", tool=name)
                await session.send_user_text(late_result_text(name, output))

    # -- rollover ---------------------------------------------------------------------------------

    async def _rollover_loop(self) -> None:
        after_s = self._config.rollover_after_s
        assert after_s is not None
        loop = asyncio.get_running_loop()
        while True:
            wait_s = self._born + after_s - loop.time()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
                continue  # the session may have been replaced meanwhile: recompute
            self._born = loop.time()  # whatever happens next, the next try is a full period away
            if isinstance(self._agent, OpenAIAgentConfig):  # ElevenLabs' own limit is a deliberate end
                await self._roll_over(self._agent)

    def _quiet(self) -> bool:
        pending = any(owner is self._host.session for owner, _, _ in self._calls.values())
        return not (self._agent_speaking or self._caller_speaking or self._answer_owed or pending)

    async def _wait_quiet(self) -> None:
        try:
            async with asyncio.timeout(self._config.rollover_wait_s):
                while not self._quiet():
                    self._activity.clear()
                    await self._activity.wait()
        except TimeoutError:
            log.info("engine.rollover_not_quiet", waited_s=self._config.rollover_wait_s)

    async def _roll_over(self, agent: OpenAIAgentConfig) -> None:
        old = self._host.session
        log.info("engine.rollover", after_s=self._config.rollover_after_s)
        host = self._host
        try:
            new = await self._engines.open(agent, host.call_id, host.audio.carrier_format)
        except EngineError as exc:
            self._count("rollover_failed")
            log.warning("engine.rollover_failed", error=str(exc))
            return
        installed = False
        try:
            await self._wait_quiet()
            async with self._lock:
                if host.session is not old or host.end_reason is not None:
                    return  # dropped, handed off or ending meanwhile: the new session is not needed
                turns = self._turns()
                self.replayed_turns = len(turns)
                await new.resume(turns, RESUME_INSTRUCTIONS if self._owes() else None)
                if host.session is not old:
                    return
                self._install(new, agent)
                installed = True
        except EngineError as exc:
            self._count("rollover_failed")
            log.warning("engine.rollover_failed", error=str(exc))
        finally:
            if not installed:
                await new.aclose()
        if installed:
            self._count("rollover")
            log.info("engine.rolled_over", replayed_turns=self.replayed_turns)
            await old.aclose()  # its events() end; the downlink carries on with the new session


__all__ = [
    "GapSession",
    "KeeperHost",
    "SessionKeeper",
    "backoff_delay",
    "late_result_text",
    "retry_cause",
]
