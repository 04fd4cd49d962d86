"""What an agent can do on a call besides talking: tools (and the actions they trigger: hang up,
transfer, hand-off), key presses, silence check-ins, hold audio while a tool runs, transcripts.

Everything here runs in tasks owned by `CallFeatures`, next to the bridge's two audio tasks, so a
slow tool never holds up audio in either direction; `aclose()` cancels and awaits them all.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any, Literal, Protocol

import aiohttp
import structlog

from gateway.audio_path import HOLD_ITEM, AudioPath
from gateway.carriers.base import Carrier
from gateway.config import AnyAgentConfig
from gateway.engines.base import EngineSession, ToolCall
from gateway.hold import HoldClip, loop_slice
from gateway.tools import EndCall, Handoff, ToolRunner, Transfer
from gateway.transcripts import TranscriptWriter

log = structlog.get_logger("gateway.features")

DTMF_GAP_S = 1.2  # digits closer together than this are one entry ("1 2 3 #")
SPOKEN_TIMEOUT_S = 10.0  # how long a goodbye may take to be said and heard before the call ends
HOLD_CHUNK_MS = 200
SUMMARY_TURNS = 12
# How long a call's teardown waits for a transfer request already sent (the carriers' own request
# timeout is 10 s): the carrier may have accepted it, and a hang-up would undo it.
TRANSFER_SETTLE_S = 10.0
IDLE_GOODBYE = "The caller has been silent for a long time. Say a short, polite goodbye; the call is ending."


class Host(Protocol):
    """What the features need of the bridge that owns them."""

    call_id: str
    carrier: Carrier
    audio: AudioPath

    @property
    def session(self) -> EngineSession: ...

    async def end(self, reason: Literal["agent_hangup", "idle_timeout", "transferred"]) -> None:
        """End the call from the gateway's side with `reason` (hang-up unless transferred)."""

    async def handoff(self, agent_name: str, context: str) -> bool:
        """Switch the call to another agent; False if the new session could not be started."""

    async def send_tool_result(self, call_id: str, output: str, is_error: bool) -> None:
        """Answer a ToolCall (as text, if the session that made it was replaced since)."""

    def drop_tool_call(self, call_id: str) -> None:
        """A ToolCall that gets no result: a hand-off answers it by changing the agent."""


class CallFeatures:
    def __init__(
        self,
        host: Host,
        agent_name: str,
        agent: AnyAgentConfig,
        *,
        http: aiohttp.ClientSession,
        hold_clips: dict[str, HoldClip],
        transcript: TranscriptWriter | None,
    ) -> None:
        self._host = host
        self._http = http
        self._hold_clips = hold_clips
        self.transcript = transcript
        self._tasks: set[asyncio.Task[Any]] = set()
        self._dtmf: list[str] = []
        self._dtmf_task: asyncio.Task[Any] | None = None
        self._turns: deque[str] = deque(maxlen=SUMMARY_TURNS)
        self._progress = asyncio.Condition()
        self._turns_done = 0  # agent turns that carried audio
        self._frames_at_turn_end = 0
        self._last_caller_activity = time.monotonic()
        self._idle_prompts_used = 0
        self._ending = False
        self._transfer_request: asyncio.Task[bool] | None = None
        self.transferred = False  # the carrier took a transfer: the caller is not ours to hang up
        self.set_agent(agent_name, agent)

    def set_agent(self, agent_name: str, agent: AnyAgentConfig) -> None:
        self.agent_name = agent_name
        self.agent = agent
        self._runner = ToolRunner(agent.tools, self._http, call_id=self._host.call_id, agent=agent_name)

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"call:{self._host.call_id}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def start(self) -> None:
        if self.agent.idle_timeout_s is not None:
            self._spawn(self._idle_watch(), "idle")

    async def aclose_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        request = self._transfer_request
        if request is not None:
            # Not cancelled with the rest: let a transfer the carrier may have accepted finish, so
            # that the teardown (a shutdown, max_call_duration_s) does not hang up over it.
            if not request.done():
                log.info("call.transfer_settling", timeout_s=TRANSFER_SETTLE_S)
                await asyncio.wait({request}, timeout=TRANSFER_SETTLE_S)
                request.cancel()
                await asyncio.gather(request, return_exceptions=True)
            if not request.cancelled() and request.exception() is None and request.result():
                self.transferred = True

    def close_transcript(self) -> None:
        if self.transcript is not None:
            self.transcript.close()

    def record(self, event: str, **fields: object) -> None:
        if self.transcript is not None:
            self.transcript.write(event, **fields)

    # -- what the bridge reports ------------------------------------------------------------------

    def on_caller_activity(self) -> None:
        self._last_caller_activity = time.monotonic()
        self._idle_prompts_used = 0

    def on_transcript(self, role: str, text: str) -> None:
        if not text:
            return
        self._turns.append(f"{role}: {text}")
        self.record(role, text=text)
        if role == "caller":
            self.on_caller_activity()

    async def on_progress(self, turn_done: bool = False) -> None:
        """A mark echo or the end of an agent turn: wakes whoever waits for speech to be heard."""
        async with self._progress:
            frames = self._host.audio.agent_audio_frames
            # A turn without audio is not one the caller hears: above all the end of the response
            # that called a tool, which may come after the tool answered and must not pass for the
            # goodbye (or "transferring you") that answers the tool's output.
            if turn_done and frames > self._frames_at_turn_end:
                self._turns_done += 1
                self._frames_at_turn_end = frames
            self._progress.notify_all()

    def on_tool_call(self, call: ToolCall) -> None:
        self._spawn(self._run_tool(call), f"tool:{call.name}")

    def on_dtmf(self, digit: str) -> None:
        self.on_caller_activity()
        if self.agent.dtmf != "forward":
            return
        self._dtmf.append(digit)
        if self._dtmf_task is not None:
            self._dtmf_task.cancel()
        self._dtmf_task = self._spawn(self._flush_dtmf(), "dtmf")

    # -- the pieces -------------------------------------------------------------------------------

    def summary(self) -> str:
        return " | ".join(self._turns) or "(nothing said yet)"

    async def wait_spoken(self, timeout_s: float | None = None) -> None:
        """Wait until the agent has finished a turn after now and the caller has heard all of it."""
        # Read at call time, not bound as a default when the module loads.
        timeout_s = SPOKEN_TIMEOUT_S if timeout_s is None else timeout_s
        start = self._turns_done
        playback = self._host.audio

        def heard() -> bool:
            return self._turns_done > start and playback.playback.pending_marks() == 0

        try:
            async with asyncio.timeout(timeout_s), self._progress:
                await self._progress.wait_for(heard)
        except TimeoutError:
            log.info("call.goodbye_timeout", timeout_s=timeout_s)

    async def _flush_dtmf(self) -> None:
        await asyncio.sleep(DTMF_GAP_S)
        digits, self._dtmf = self._dtmf, []
        self._dtmf_task = None
        if digits:
            log.info("call.dtmf", digits=len(digits))  # the count only: digits can be PINs
            self.record("dtmf", digits=" ".join(digits))
            await self._host.session.send_user_text(f"The caller pressed {' '.join(digits)}")

    async def _run_tool(self, call: ToolCall) -> None:
        self.record("tool.call", name=call.name, arguments=call.arguments)
        hold, holding = None, asyncio.Event()
        if self._runner.is_slow(call.name) and self.agent.hold_audio is not None:
            hold_audio = self.agent.hold_audio
            hold = self._spawn(self._play_hold(hold_audio.file, hold_audio.after_ms, holding), "hold")
        try:
            outcome = await self._runner.run(call.name, call.arguments)
        finally:
            if hold is not None:
                hold.cancel()
                await asyncio.gather(hold, return_exceptions=True)
                if holding.is_set():
                    await self._host.audio.clear()  # stop the music the moment the result is in
        log.info("tool.done", tool=call.name, is_error=outcome.is_error)
        self.record("tool.result", name=call.name, output=outcome.output, is_error=outcome.is_error)
        action = outcome.action
        if isinstance(action, Handoff):
            try:
                await self._handoff(action.agent)
            finally:
                self._host.drop_tool_call(call.call_id)
            return
        await self._host.send_tool_result(call.call_id, outcome.output, outcome.is_error)
        if isinstance(action, EndCall):
            await self._end_after_goodbye("agent_hangup")
        elif isinstance(action, Transfer):
            await self._transfer(action)

    async def _play_hold(self, path: str, after_ms: int, holding: asyncio.Event) -> None:
        await asyncio.sleep(after_ms / 1000)
        clip = self._hold_clips[path].for_format(self._host.audio.carrier_format)
        holding.set()
        log.info("call.hold_started")
        offset, nbytes = 0, HOLD_CHUNK_MS * 8
        while True:
            chunk, offset = loop_slice(clip, offset, nbytes)
            await self._host.audio.send(
                HOLD_ITEM, base64.b64encode(chunk).decode("ascii"), len(chunk), mark=True
            )
            # Paced at real time: the carrier plays what it gets, and `clear` must not have much to drop.
            await asyncio.sleep(HOLD_CHUNK_MS / 1000)

    async def _end_after_goodbye(
        self, reason: Literal["agent_hangup", "idle_timeout"], goodbye: str | None = None
    ) -> None:
        if self._ending:
            return
        self._ending = True
        if goodbye is not None:
            await self._host.session.say(goodbye)
        await self.wait_spoken()
        await self._host.end(reason)

    async def _transfer(self, transfer: Transfer) -> None:
        await self.wait_spoken()  # let "transferring you now" be heard
        log.info("call.transfer", destination=transfer.name)  # the name, never the number
        self.record("transfer", destination_name=transfer.name)
        request = self._transfer_request = asyncio.create_task(
            self._host.carrier.transfer(self._host.call_id, transfer.destination),
            name=f"call:{self._host.call_id}:transfer",
        )
        if await asyncio.shield(request):  # a teardown now waits for it (aclose_tasks)
            self.transferred = True
            await self._host.end("transferred")
        else:
            await self._host.session.say(
                "The transfer did not go through. Apologise briefly and offer to help."
            )

    async def _handoff(self, agent_name: str) -> None:
        previous = self.agent_name
        if await self._host.handoff(agent_name, self.summary()):
            self.record("handoff", from_agent=previous, to_agent=agent_name)
        else:
            await self._host.session.say(
                f"Handing over to {agent_name} failed. Apologise and carry on helping."
            )

    async def _idle_watch(self) -> None:
        timeout_s = self.agent.idle_timeout_s
        assert timeout_s is not None
        while True:
            last = max(self._last_caller_activity, self._host.audio.agent_audio_sent_at)
            wait_s = last + timeout_s - time.monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
                continue
            prompts = self.agent.idle_prompts
            if self._idle_prompts_used < len(prompts):
                log.info("call.idle_prompt", number=self._idle_prompts_used + 1)
                await self._host.session.say(prompts[self._idle_prompts_used])
                self._idle_prompts_used += 1
                self._last_caller_activity = time.monotonic()
                continue
            log.info("call.idle_timeout")
            await self._end_after_goodbye("idle_timeout", IDLE_GOODBYE)
            return


__all__ = ["CallFeatures", "Host"]
