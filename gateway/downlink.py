"""The model → caller half of a call: read the model's events, session after session, until the call ends.

Audio deltas go to the carrier (as they arrive where the sockets allow: gateway.fastws); speech
started is a barge-in; the rest feeds the accounting (tokens, latency), the features (tools,
transcripts, silence check-ins) and the session keeper (what a reconnect must replay). A fatal model
error raises EngineError; bad frames are counted and skipped.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from gateway.accounting import CallAccounting
from gateway.audio_path import AudioPath
from gateway.engines.base import (
    AudioDelta,
    AudioDone,
    BadFrame,
    EngineFailure,
    EngineSession,
    InputCommitted,
    ResponseDone,
    SpeechStarted,
    SpeechStopped,
    ToolCall,
    Transcript,
    TranscriptionDone,
)
from gateway.errors import EngineError, ProtocolError
from gateway.features import CallFeatures
from gateway.frames import FrameAudit
from gateway.metrics import GatewayMetrics
from gateway.reconnect import SessionKeeper

log = structlog.get_logger("gateway.bridge")


class ModelReader:
    """Reads one call's model sessions; `read` is what the SessionKeeper runs for each session."""

    def __init__(
        self,
        *,
        audio: AudioPath,
        keeper: SessionKeeper,
        accounting: CallAccounting,
        features: CallFeatures,
        bad_frames: FrameAudit,
        metrics: GatewayMetrics,
        current: Callable[[], EngineSession | None],
        engine: Callable[[], str],
    ) -> None:
        self._audio = audio
        self._keeper = keeper
        self._accounting = accounting
        self._features = features
        self._bad_frames = bad_frames
        self._metrics = metrics
        self._current = current  # the call's session now (hand-offs replace it)
        self._engine = engine  # the current agent's engine, for metric labels

    async def read(self, session: EngineSession) -> None:
        """Handle `session`'s events until it ends or is no longer the call's session."""
        accounting, features, audio = self._accounting, self._features, self._audio
        session.tap_audio(lambda event: self._audio_now(session, event))
        async for event in session.events():
            if session is not self._current():
                break  # a late event of a session already handed off
            self._keeper.observe(session, event)
            if isinstance(event, AudioDelta):
                try:
                    if await audio.model_audio(event):
                        accounting.agent_audio_sent()
                except ProtocolError as exc:  # not base64: dropped, never spliced into a carrier frame
                    self._bad_frames.bad("engine", self._engine(), exc.reason, str(exc))
            elif isinstance(event, SpeechStarted):
                await self._barge_in(session)
            elif isinstance(event, SpeechStopped | InputCommitted):
                accounting.caller_stopped_speaking()
                features.on_caller_activity()
            elif isinstance(event, AudioDone):
                await audio.flush(event.item_id)
                audio.playback.finished(event.item_id)
                await features.on_progress(turn_done=True)
            elif isinstance(event, ResponseDone):
                await audio.flush(audio.playback.current_item)
                accounting.response_done(event.status, event.usage)
                await features.on_progress(turn_done=True)
                log.info("engine.response_done", status=event.status)
            elif isinstance(event, TranscriptionDone):
                accounting.transcription_done(event.usage)
                features.on_transcript("caller", event.transcript)
            elif isinstance(event, Transcript):
                features.on_transcript(event.role, event.text)
            elif isinstance(event, ToolCall):
                features.on_tool_call(event)
            elif isinstance(event, EngineFailure):
                self._metrics.engine_errors_total.labels(self._engine(), event.code[:64]).inc()
                if event.fatal:
                    raise EngineError(event.message, code=event.code, retryable=event.retryable)
                # Non-fatal errors (a rejected truncate, a cancel with nothing in flight) are survived.
                log.warning("engine.error", code=event.code, message=event.message)
            elif isinstance(event, BadFrame):
                # Malformed or unknown model events: counted, logged at a bounded rate, skipped.
                self._bad_frames.bad("engine", self._engine(), event.reason, event.detail)

    def _audio_now(self, session: EngineSession, event: AudioDelta) -> bool:
        """An audio delta handled as it arrives (see EngineSession.tap_audio): what `read` does with
        one, without waiting. False: not now (it comes out of `events()` instead)."""
        if session is not self._current():
            return False
        try:
            sent = self._audio.model_audio_now(event)
        except ProtocolError:
            return False  # counted by read()
        if sent is None:
            return False
        self._keeper.observe(session, event)
        if sent:
            self._accounting.agent_audio_sent()
        return True

    async def _barge_in(self, session: EngineSession) -> None:
        accounting, features, audio = self._accounting, self._features, self._audio
        cut = audio.interrupt()  # before any await: see AudioPath.interrupt
        accounting.caller_started_speaking()
        features.on_caller_activity()
        if cut is not None:
            accounting.barge_in()
        await audio.clear()
        await session.cancel_response()
        if cut is None:
            log.info("call.barge_in", truncated=False)
            return
        item_id, audio_end_ms = cut
        features.record("barge_in", audio_end_ms=audio_end_ms)
        # A truncate the server rejects comes back as a non-fatal error event; the call goes on.
        await session.truncate(item_id, audio_end_ms)
        log.info("call.barge_in", truncated=True, audio_end_ms=audio_end_ms)
