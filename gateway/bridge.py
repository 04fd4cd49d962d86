"""CallBridge: one call's whole lifetime, from the carrier's `start` frame to teardown.

The task that runs `CallBridge.run` owns the call. It opens the model session, then runs exactly two
child tasks, uplink (caller → model) and downlink (model → caller), waits for the first to finish (or
for `max_call_duration_s`), and tears everything down in `finally`: both tasks cancelled and awaited,
both sockets closed, the registry entry removed, one `call.ended` line logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import time
from typing import Literal

import structlog
from aiohttp import WSMsgType, web

from gateway.accounting import CallAccounting, PriceBook
from gateway.audio import ALAW_8K, ULAW_8K, AudioFormat, Converter, b64_decoded_len
from gateway.calls import CallRegistry
from gateway.carriers.base import Carrier, MarkEcho, Media, StreamStart, StreamStop
from gateway.config import AnyAgentConfig
from gateway.engines.base import (
    AudioDelta,
    AudioDone,
    EngineFactory,
    EngineFailure,
    EngineSession,
    InputCommitted,
    ResponseDone,
    SpeechStarted,
    SpeechStopped,
    TranscriptionDone,
)
from gateway.errors import EngineError, ProtocolError
from gateway.metrics import GatewayMetrics
from gateway.playback import PlaybackTracker

log = structlog.get_logger("gateway.bridge")

EndReason = Literal[
    "caller_hangup",
    "carrier_timeout",
    "engine_closed",
    "engine_error",
    "engine_connect_failed",
    "max_duration",
    "shutdown",
    "error",
    "rejected",
]
# When both tasks finish together, the more telling reason wins: an engine failure explains the
# caller hang-up that follows it, not the other way round.
_PRIORITY: dict[str, int] = {"engine_error": 4, "error": 3, "engine_closed": 2, "carrier_timeout": 1}
# Passthrough splices payloads into JSON frames unparsed, so they must be plain base64.
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


_CARRIER_FORMATS = {"PCMU": ULAW_8K, "AUDIO/X-MULAW": ULAW_8K, "PCMA": ALAW_8K, "AUDIO/X-ALAW": ALAW_8K}


def carrier_format(encoding: str) -> AudioFormat | None:
    """The G.711 law a carrier's `start` frame announces (Twilio `audio/x-mulaw`, Telnyx `PCMU`/`PCMA`);
    None for anything else (G722, OPUS, L16), which the bridge does not carry."""
    return _CARRIER_FORMATS.get(encoding.upper())


class CallBridge:
    def __init__(
        self,
        *,
        carrier: Carrier,
        ws: web.WebSocketResponse,
        start: StreamStart,
        agent_name: str,
        agent: AnyAgentConfig,
        engines: EngineFactory,
        registry: CallRegistry,
        metrics: GatewayMetrics,
        prices: PriceBook,
    ) -> None:
        self.call_id = start.call_id
        self.task: asyncio.Task[object] | None = None
        self._carrier = carrier
        self._ws = ws
        self._codec = carrier.codec(start)
        self._agent_name = agent_name
        self._agent = agent
        self._engines = engines
        self._registry = registry
        self._metrics = metrics
        self._prices = prices
        self._accounting: CallAccounting | None = None
        self._session: EngineSession | None = None
        fmt = carrier_format(start.encoding)
        if fmt is None:
            raise ProtocolError(f"unsupported media encoding {start.encoding!r}")
        self._carrier_format = fmt
        # Built once the engine session knows its formats; None means passthrough. One converter per
        # direction per call, stateful for the call's whole life (STYLE rule 4).
        self._up: Converter | None = None
        self._down: Converter | None = None
        self._down_dirty = False
        self._playback = PlaybackTracker()
        self._interrupted: set[str] = set()
        self.bytes_from_caller = 0
        self.bytes_to_caller = 0
        self._cpu_up = metrics.transcode_cpu_seconds_total.labels("caller_to_model")
        self._cpu_down = metrics.transcode_cpu_seconds_total.labels("model_to_caller")

    def snapshot(self) -> dict[str, object]:
        """The live view of this call for `GET /calls`: no phone numbers."""
        view: dict[str, object] = {
            "id": self.call_id,
            "carrier": self._carrier.name,
            "agent": self._agent_name,
        }
        if self._accounting is not None:
            view.update(self._accounting.snapshot())
        return view

    # -- lifetime ---------------------------------------------------------------------------------

    async def run(self) -> EndReason:
        labels = {"carrier": self._carrier.name, "engine": self._agent.engine}
        with structlog.contextvars.bound_contextvars(
            call_id=self.call_id, agent=self._agent_name, engine=self._agent.engine
        ):
            self.task = asyncio.current_task()
            admission = self._registry.add(self.call_id, self)
            if admission != "ok":
                log.warning("call.rejected", reason=admission)
                outcome = f"rejected_{admission}"
                self._metrics.calls_total.labels(**labels, agent=self._agent_name, outcome=outcome).inc()
                await self._ws.close(code=1013 if admission == "busy" else 1008, message=admission.encode())
                if admission == "busy":
                    # An answered call whose stream is refused would otherwise sit in silence.
                    await self._carrier.hangup(self.call_id)
                return "rejected"
            started = time.monotonic()
            accounting = self._accounting = CallAccounting(
                agent_name=self._agent_name,
                agent=self._agent,
                carrier=self._carrier.name,
                prices=self._prices,
                metrics=self._metrics,
            )
            self._metrics.calls_active.labels(**labels).inc()
            log.info("call.started", carrier=self._carrier.name, codec=self._carrier_format.encoding)
            reason: EndReason = "error"
            try:
                reason = await self._bridge()
            except asyncio.CancelledError:
                reason = "shutdown"
                raise
            finally:
                try:
                    await self._end_engine_side(reason)
                finally:
                    # Bookkeeping is synchronous and comes first: a second cancellation during the
                    # socket close below cannot leak the call's slot.
                    duration_s = time.monotonic() - started
                    self._registry.remove(self.call_id)
                    self._metrics.calls_active.labels(**labels).dec()
                    self._metrics.calls_total.labels(**labels, agent=self._agent_name, outcome=reason).inc()
                    self._metrics.call_duration_seconds.labels(**labels, agent=self._agent_name).observe(
                        duration_s
                    )
                    log.info(
                        "call.ended",
                        reason=reason,
                        duration_s=round(duration_s, 3),
                        bytes_from_caller=self.bytes_from_caller,
                        bytes_to_caller=self.bytes_to_caller,
                        **accounting.finish(duration_s),
                    )
                    # Last, so whoever sees the socket close also sees the call counted.
                    await self._ws.close()
            return reason

    async def _bridge(self) -> EndReason:
        try:
            self._session = await self._engines.open(self._agent, self.call_id, self._carrier_format)
        except EngineError as exc:
            log.error("engine.connect_failed", error=str(exc), retryable=exc.retryable)
            self._metrics.engine_errors_total.labels(self._agent.engine, "connect_failed").inc()
            return "engine_connect_failed"
        tasks: set[asyncio.Task[EndReason]] = set()
        try:
            await self._session.start()
            self._negotiate(self._session)
            if self._accounting is not None:
                self._accounting.engine_started()
            tasks = {
                asyncio.create_task(self._uplink(self._session), name=f"call:{self.call_id}:uplink"),
                asyncio.create_task(self._downlink(self._session), name=f"call:{self.call_id}:downlink"),
            }
            done, _ = await asyncio.wait(
                tasks, timeout=self._agent.max_call_duration_s, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                log.info("call.max_duration", max_call_duration_s=self._agent.max_call_duration_s)
                return "max_duration"
            return max((self._outcome(task) for task in done), key=lambda r: _PRIORITY.get(r, 0))
        except EngineError as exc:
            # From start(): the model refused the session or declared audio the bridge cannot carry.
            log.error("engine.failed", error=str(exc), code=exc.code, retryable=exc.retryable)
            self._metrics.engine_errors_total.labels(self._agent.engine, "start_failed").inc()
            return "engine_error"
        except Exception:
            log.exception("call.failed")
            return "error"
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _negotiate(self, session: EngineSession) -> None:
        """Set up conversion for the formats the session settled on (passthrough where they match)."""
        quality = self._agent.resample_quality
        carrier = self._carrier_format
        if session.input_format != carrier:
            self._up = Converter(carrier, session.input_format, quality)
        if session.output_format != carrier:
            self._down = Converter(session.output_format, carrier, quality)
        self._playback = PlaybackTracker(model_bytes_per_ms=session.output_format.bytes_per_second / 1000)
        log.info(
            "engine.audio",
            to_model=f"{session.input_format.encoding}/{session.input_format.rate_hz}",
            from_model=f"{session.output_format.encoding}/{session.output_format.rate_hz}",
            transcoding=self._up is not None or self._down is not None,
        )

    @staticmethod
    def _outcome(task: asyncio.Task[EndReason]) -> EndReason:
        try:
            return task.result()
        except EngineError as exc:
            log.error("engine.failed", error=str(exc), code=exc.code)
            return "engine_error"
        except Exception:
            log.exception("call.failed", task=task.get_name())
            return "error"

    async def _end_engine_side(self, reason: EndReason) -> None:
        try:
            if self._session is not None:
                await self._session.aclose()
        finally:
            if reason != "caller_hangup":
                # The caller is still on the line: end the call at the carrier, not just our stream.
                await self._carrier.hangup(self.call_id)

    # -- caller → model ---------------------------------------------------------------------------

    async def _uplink(self, session: EngineSession) -> EndReason:
        try:
            return await self._read_caller(session)
        except TimeoutError:
            # Carriers stream audio continuously, silence included: a silent socket is a dead one.
            log.warning("carrier.timeout")
            return "carrier_timeout"

    async def _read_caller(self, session: EngineSession) -> EndReason:
        async for message in self._ws:
            if message.type != WSMsgType.TEXT:
                continue
            try:
                event = self._carrier.decode(message.data)
            except ProtocolError as exc:
                log.warning("carrier.bad_frame", error=str(exc))
                continue
            if isinstance(event, Media):
                await self._caller_audio(session, event.payload_b64)
            elif isinstance(event, MarkEcho):
                self._playback.marked(event.name)
            elif isinstance(event, StreamStop):
                log.info("carrier.stop")
                return "caller_hangup"
        log.info("carrier.closed")
        return "caller_hangup"

    async def _caller_audio(self, session: EngineSession, payload_b64: str) -> None:
        if self._up is None:
            if not _BASE64.fullmatch(payload_b64):
                log.warning("carrier.bad_frame", error="media payload is not base64")
                return
            self.bytes_from_caller += b64_decoded_len(payload_b64)
            await session.send_audio(payload_b64)
            return
        try:
            caller_audio = base64.b64decode(payload_b64, validate=True)
        except binascii.Error:
            log.warning("carrier.bad_frame", error="media payload is not base64")
            return
        self.bytes_from_caller += len(caller_audio)
        cpu = time.thread_time()
        model_audio = self._up.convert(caller_audio)
        self._cpu_up.inc(time.thread_time() - cpu)
        if model_audio:
            await session.send_audio(base64.b64encode(model_audio).decode("ascii"))

    # -- model → caller ---------------------------------------------------------------------------

    async def _downlink(self, session: EngineSession) -> EndReason:
        try:
            return await self._read_model(session)
        except ConnectionResetError:
            # Engine sessions swallow resets of their own socket, so this one is the carrier's.
            log.info("carrier.closed")
            return "caller_hangup"

    async def _read_model(self, session: EngineSession) -> EndReason:
        accounting = self._accounting
        assert accounting is not None
        async for event in session.events():
            if isinstance(event, AudioDelta):
                await self._model_audio(event)
            elif isinstance(event, SpeechStarted):
                await self._barge_in(session)
            elif isinstance(event, AudioDone):
                await self._flush(event.item_id)
                self._playback.finished(event.item_id)
            elif isinstance(event, SpeechStopped | InputCommitted):
                accounting.caller_stopped_speaking()
            elif isinstance(event, ResponseDone):
                await self._flush(self._playback.current_item)
                accounting.response_done(event.status, event.usage)
                log.info("engine.response_done", status=event.status)
            elif isinstance(event, TranscriptionDone):
                accounting.transcription_done(event.usage)
            elif isinstance(event, EngineFailure):
                self._metrics.engine_errors_total.labels(self._agent.engine, event.code[:64]).inc()
                if event.fatal:
                    raise EngineError(event.message, code=event.code)
                # Non-fatal errors (a rejected truncate, a cancel with nothing in flight) are survived.
                log.warning("engine.error", code=event.code, message=event.message)
        return "engine_closed"

    async def _model_audio(self, event: AudioDelta) -> None:
        if event.item_id in self._interrupted:
            return  # audio of a response the caller interrupted, still in flight from the model
        if self._down is None:
            if not _BASE64.fullmatch(event.audio_b64):
                log.warning("engine.bad_frame", error="audio delta is not base64")
                return
            nbytes = b64_decoded_len(event.audio_b64)
            self._playback.received(event.item_id, nbytes)
            await self._send_audio(event.item_id, event.audio_b64, nbytes)
            return
        try:
            model_audio = base64.b64decode(event.audio_b64, validate=True)
        except binascii.Error:
            log.warning("engine.bad_frame", error="audio delta is not base64")
            return
        self._playback.received(event.item_id, len(model_audio))
        cpu = time.thread_time()
        caller_audio = self._down.convert(model_audio)
        self._cpu_down.inc(time.thread_time() - cpu)
        self._down_dirty = True
        if caller_audio:
            await self._send_audio(
                event.item_id, base64.b64encode(caller_audio).decode("ascii"), len(caller_audio)
            )

    async def _send_audio(self, item_id: str, payload_b64: str, nbytes: int) -> None:
        await self._ws.send_str(self._codec.media(payload_b64))
        await self._ws.send_str(self._codec.mark(self._playback.sent(item_id, nbytes)))
        self.bytes_to_caller += nbytes
        if self._accounting is not None:
            self._accounting.agent_audio_sent()

    async def _flush(self, item_id: str | None) -> None:
        """Emit what the outbound resampler holds back, so the end of a response is not cut off."""
        if self._down is None or not self._down_dirty:
            return
        self._down_dirty = False
        tail = self._down.flush()
        if tail and item_id is not None and item_id not in self._interrupted:
            await self._send_audio(item_id, base64.b64encode(tail).decode("ascii"), len(tail))

    async def _barge_in(self, session: EngineSession) -> None:
        # Snapshot playback before any await: mark echoes that answer the `clear` below must not
        # count as audio the caller heard.
        cut = self._playback.interrupt()
        if self._accounting is not None:
            self._accounting.caller_started_speaking()
            if cut is not None:
                self._accounting.barge_in()
        if self._down is not None and self._down_dirty:
            self._down.flush()  # discard: the interrupted speech must not leak into the next response
            self._down_dirty = False
        if cut is not None:
            self._interrupted.add(cut[0])
        await self._ws.send_str(self._codec.clear())
        await session.cancel_response()
        if cut is None:
            log.info("call.barge_in", truncated=False)
            return
        item_id, audio_end_ms = cut
        # A truncate the server rejects comes back as a non-fatal error event; the call goes on.
        await session.truncate(item_id, audio_end_ms)
        log.info("call.barge_in", truncated=True, audio_end_ms=audio_end_ms)
