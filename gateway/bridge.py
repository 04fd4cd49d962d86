"""CallBridge: one call's whole lifetime, from the carrier's `start` frame to teardown.

The task that runs `CallBridge.run` owns the call. It opens the model session, then runs two child
tasks, uplink (caller → model) and downlink (model → caller), waits for the first to finish (or for
`max_call_duration_s`), and tears everything down in `finally`: child tasks (and the features' tool,
key-press and silence tasks) cancelled and awaited, both sockets closed, the registry entry removed,
one `call.ended` line logged. The two halves are `read_caller` (gateway.uplink) and `ModelReader`
(gateway.downlink); audio handling lives in `AudioPath`, everything else an agent can do in
`CallFeatures`.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from aiohttp import web

from gateway.accounting import CallAccounting
from gateway.audio_path import AudioPath
from gateway.carriers.base import Carrier, StreamStart
from gateway.config import AnyAgentConfig
from gateway.downlink import ModelReader
from gateway.engines.base import EngineSession
from gateway.errors import EngineError, ProtocolError
from gateway.features import CallFeatures
from gateway.frames import FrameAudit
from gateway.reconnect import SessionKeeper
from gateway.services import ANNOUNCED, END_PRIORITY, NO_HANGUP, EndReason, Services, carrier_format
from gateway.transcripts import TranscriptWriter
from gateway.uplink import read_caller

log = structlog.get_logger("gateway.bridge")


class CallBridge:
    def __init__(
        self,
        *,
        carrier: Carrier,
        ws: web.WebSocketResponse,
        start: StreamStart,
        agent_name: str,
        agent: AnyAgentConfig,
        services: Services,
    ) -> None:
        fmt = carrier_format(start.encoding)
        if fmt is None:
            raise ProtocolError(f"unsupported media encoding {start.encoding!r}")
        self.call_id = start.call_id
        self.task: asyncio.Task[object] | None = None
        self.carrier = carrier
        self._ws = ws
        self._agent_name = agent_name
        self._agent = agent
        self._services = services
        self._metrics = services.metrics
        self.audio = AudioPath(ws, carrier.codec(start), fmt, services.metrics)
        limits = services.config.server.limits
        self._bad_frames = FrameAudit(services.metrics, limits.bad_frame_log_interval_s)
        self._session: EngineSession | None = None
        self._accounting: CallAccounting | None = None
        self._features: CallFeatures | None = None
        self._end_reason: EndReason | None = None
        self._keeper = SessionKeeper(self, services.engines, services.config.server.reconnect, self._metrics)
        self._cancelled = False  # torn down by cancellation: hang up at once, no announcement

    @property
    def session(self) -> EngineSession:
        assert self._session is not None
        return self._session

    @session.setter
    def session(self, session: EngineSession) -> None:
        self._session = session

    @property
    def end_reason(self) -> EndReason | None:
        return self._end_reason

    def snapshot(self) -> dict[str, object]:
        """The live view of this call for `GET /calls`: no phone numbers."""
        view: dict[str, object] = {
            "id": self.call_id,
            "carrier": self.carrier.name,
            "agent": self._agent_name,
        }
        if self._accounting is not None:
            view.update(self._accounting.snapshot())
        return view

    # -- lifetime ---------------------------------------------------------------------------------

    async def run(self) -> EndReason:
        labels = {"carrier": self.carrier.name, "engine": self._agent.engine, "agent": self._agent_name}
        with structlog.contextvars.bound_contextvars(
            call_id=self.call_id, agent=self._agent_name, engine=self._agent.engine
        ):
            self.task = asyncio.current_task()
            admission = self._services.registry.add(self.call_id, self)
            if admission != "ok":
                log.warning("call.rejected", reason=admission)
                self._metrics.calls_total.labels(**labels, outcome=f"rejected_{admission}").inc()
                await self._ws.close(code=1013 if admission == "busy" else 1008, message=admission.encode())
                if admission == "busy":
                    # An answered call whose stream is refused would otherwise sit in silence.
                    await self.carrier.hangup(self.call_id)
                return "rejected"
            started = time.monotonic()
            accounting = self._accounting = CallAccounting(
                agent_name=self._agent_name,
                agent=self._agent,
                carrier=self.carrier.name,
                prices=self._services.prices,
                metrics=self._metrics,
            )
            features = self._features = self._open_features()
            self._metrics.calls_active.labels(self.carrier.name, self._agent.engine).inc()
            log.info("call.started", carrier=self.carrier.name, codec=self.audio.carrier_format.encoding)
            features.record("call.started", carrier=self.carrier.name, agent=self._agent_name,
                            engine=self._agent.engine, model=self._agent.resolved_model)  # fmt: skip
            reason: EndReason = "error"
            try:
                reason = await self._bridge()
            except asyncio.CancelledError:
                reason, self._cancelled = "shutdown", True
                raise
            finally:
                try:
                    await features.aclose_tasks()
                    if features.transferred and reason not in NO_HANGUP:
                        # The call ended (shutdown, max_call_duration_s) while the carrier took a
                        # transfer: the caller is on the new line, no announcement or hang-up.
                        reason = "transferred"
                    await self._end_engine_side(reason)
                finally:
                    # Bookkeeping is synchronous and comes first: a second cancellation during the
                    # socket close below cannot leak the call's slot.
                    duration_s = time.monotonic() - started
                    self._services.registry.remove(self.call_id)
                    self._metrics.calls_active.labels(self.carrier.name, self._agent.engine).dec()
                    self._metrics.calls_total.labels(**labels, outcome=reason).inc()
                    self._metrics.call_duration_seconds.labels(**labels).observe(duration_s)
                    record = accounting.finish(duration_s)
                    log.info(
                        "call.ended",
                        reason=reason,
                        duration_s=round(duration_s, 3),
                        bytes_from_caller=self.audio.bytes_from_caller,
                        bytes_to_caller=self.audio.bytes_to_caller,
                        fast_caller_frames=self.audio.fast_caller_frames,
                        fast_model_frames=self.audio.fast_model_frames,
                        **record,
                    )
                    features.record("call.ended", reason=reason, duration_s=round(duration_s, 3), cost=record)
                    features.close_transcript()
                    # Last, so whoever sees the socket close also sees the call counted.
                    await self._ws.close()
            return reason

    def _open_features(self) -> CallFeatures:
        transcripts = self._services.config.transcripts
        writer = TranscriptWriter.open(transcripts.dir, self.call_id) if transcripts is not None else None
        return CallFeatures(
            self,
            self._agent_name,
            self._agent,
            http=self._services.http,
            hold_clips=self._services.hold_clips,
            transcript=writer,
        )

    async def _open_session(self, agent: AnyAgentConfig, context: str | None = None) -> EngineSession:
        """Open and start a session for `agent`; raises EngineError."""
        session = await self._services.engines.open(agent, self.call_id, self.audio.carrier_format)
        try:
            await session.start(context)
        except BaseException:
            await session.aclose()
            raise
        return session

    async def _bridge(self) -> EndReason:
        assert self._features is not None
        try:
            self._session = await self._services.engines.open(
                self._agent, self.call_id, self.audio.carrier_format
            )
        except EngineError as exc:
            log.error("engine.connect_failed", error=str(exc), retryable=exc.retryable)
            self._metrics.engine_errors_total.labels(self._agent.engine, "connect_failed").inc()
            return "engine_connect_failed"
        tasks: set[asyncio.Task[EndReason]] = set()
        try:
            await self._session.start()
            self.audio.negotiate(self._session, self._agent.resample_quality)
            self._keeper.started(self._session, self._agent)
            if self._accounting is not None:
                self._accounting.engine_started()
            self._features.start()
            tasks = {
                asyncio.create_task(self._uplink(), name=f"call:{self.call_id}:uplink"),
                asyncio.create_task(self._downlink(), name=f"call:{self.call_id}:downlink"),
            }
            done, _ = await asyncio.wait(
                tasks, timeout=self._agent.max_call_duration_s, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                log.info("call.max_duration", max_call_duration_s=self._agent.max_call_duration_s)
                return "max_duration"
            return max((self._outcome(task) for task in done), key=lambda r: END_PRIORITY.get(r, 0))
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
            await self._keeper.aclose()

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
            if reason not in NO_HANGUP:
                # The caller is still on the line: end the call at the carrier, not just our stream.
                announcements = self._services.config.server.announcements
                text = getattr(announcements, ANNOUNCED[reason]) if reason in ANNOUNCED else ""
                if text and not self._cancelled:
                    await self.carrier.say_and_hangup(self.call_id, text, announcements.language)
                else:
                    await self.carrier.hangup(self.call_id)

    # -- what the features ask of the bridge ------------------------------------------------------

    async def end(self, reason: EndReason) -> None:
        """End the call from our side: the downlink ends with `reason` once the session closes."""
        if self._end_reason is None:
            self._end_reason = reason
            log.info("call.ending", reason=reason)
            if self._session is not None:
                await self._session.aclose()

    async def shut_down(self) -> None:
        """The gateway is stopping and the drain time is up: the carrier says goodbye and hangs up."""
        await self.end("shutdown")

    async def handoff(self, agent_name: str, context: str) -> bool:
        """Move the call to another agent of this config, keeping the carrier call."""
        agent = self._services.config.agents.get(agent_name)
        if agent is None:
            return False
        try:
            session = await self._open_session(agent, context)
        except EngineError as exc:
            log.error("call.handoff_failed", to_agent=agent_name, error=str(exc))
            return False
        old, self._session = self._session, session
        self.audio.negotiate(session, agent.resample_quality)
        previous, self._agent_name, self._agent = self._agent_name, agent_name, agent
        self._keeper.started(session, agent)
        if self._features is not None:
            self._features.set_agent(agent_name, agent)
        log.info("call.handoff", from_agent=previous, to_agent=agent_name)
        if old is not None:
            await old.aclose()  # its events() end; the downlink carries on with the new session
        return True

    async def send_tool_result(self, call_id: str, output: str, is_error: bool) -> None:
        await self._keeper.send_tool_result(call_id, output, is_error)

    def drop_tool_call(self, call_id: str) -> None:
        self._keeper.drop_tool_call(call_id)

    # -- caller → model ---------------------------------------------------------------------------

    async def _uplink(self) -> EndReason:
        assert self._features is not None
        return await read_caller(
            self._ws,
            self.carrier,
            limits=self._services.config.server.limits,
            bad_frames=self._bad_frames,
            audio=self.audio,
            session=lambda: self.session,
            features=self._features,
        )

    # -- model → caller ---------------------------------------------------------------------------

    def _model_reader(self) -> ModelReader:
        assert self._accounting is not None and self._features is not None
        return ModelReader(
            audio=self.audio,
            keeper=self._keeper,
            accounting=self._accounting,
            features=self._features,
            bad_frames=self._bad_frames,
            metrics=self._metrics,
            current=lambda: self._session,
            engine=lambda: self._agent.engine,
        )

    async def _downlink(self) -> EndReason:
        try:
            # Session after session: hand-offs, reconnects and rollovers replace the one being read.
            return await self._keeper.run(self._model_reader().read)
        except ConnectionResetError:
            # Engine sessions swallow resets of their own socket, so this one is the carrier's.
            log.info("carrier.closed")
            return "caller_hangup"
