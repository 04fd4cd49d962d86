"""One call's audio in both directions: conversion, playback tracking, barge-in, hold audio.

Formats are settled once the engine session has started (and again after a hand-off to an agent on
another engine): equal formats pass through untouched, base64 and all; others get one stateful
converter per direction for the life of the session.
"""

from __future__ import annotations

import base64
import re
import time

import structlog
from aiohttp import web
from prometheus_client import Counter

from gateway import fastws
from gateway.audio import AudioFormat, Converter, ResampleQuality, b64_decoded_len
from gateway.carriers.base import MediaCodec
from gateway.engines.base import AudioDelta, EngineSession
from gateway.errors import ProtocolError
from gateway.metrics import GatewayMetrics
from gateway.playback import PlaybackTracker

log = structlog.get_logger("gateway.bridge")

# Passthrough splices payloads into JSON frames unparsed, so they must be plain, padded base64.
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def _is_base64(text: str) -> bool:
    return len(text) % 4 == 0 and _BASE64.fullmatch(text) is not None


def _decode_base64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error, or a non-ASCII character (plain ValueError)
        raise ProtocolError(f"{what} is not base64", reason="bad_base64") from None


HOLD_ITEM = "hold"  # playback item id for hold audio (never truncated into the model's context)
# gateway_transcode_cpu_seconds_total is sampled: one conversion in this many is timed, and counted
# this many times. Timing every one took two clock reads (system calls, ~1 µs each on a VM) per 20 ms
# frame, as much as the conversion itself; over a call's thousands of frames the sample is as good.
CPU_SAMPLE_EVERY = 50


class _CpuSampler:
    """Times one conversion in CPU_SAMPLE_EVERY and adds it, scaled, to one direction's counter."""

    __slots__ = ("_counter", "_left")

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._left = 1  # the first conversion of a call is timed: short calls are counted too

    def convert(self, converter: Converter, data: bytes) -> bytes:
        self._left -= 1
        if self._left:
            return converter.convert(data)
        self._left = CPU_SAMPLE_EVERY
        start = time.thread_time()
        out = converter.convert(data)
        self._counter.inc((time.thread_time() - start) * CPU_SAMPLE_EVERY)
        return out


class AudioPath:
    def __init__(
        self,
        ws: web.WebSocketResponse,
        codec: MediaCodec,
        carrier_format: AudioFormat,
        metrics: GatewayMetrics,
    ) -> None:
        self._ws = ws
        self._direct = fastws.writer(ws)
        self._codec = codec
        self.carrier_format = carrier_format
        self._up: Converter | None = None
        self._down: Converter | None = None
        self._down_dirty = False
        self.playback = PlaybackTracker()
        self._interrupted: set[str] = set()
        self.bytes_from_caller = 0
        self.bytes_to_caller = 0
        self.agent_audio_sent_at = 0.0  # monotonic time of the last agent audio written
        self.agent_audio_frames = 0  # agent audio frames written (hold audio not counted)
        # Frames handled as they arrived (gateway.fastws): caller media in, model audio deltas in.
        self.fast_caller_frames = 0
        self.fast_model_frames = 0
        self._slow_writes = 0  # frame lists being written through aiohttp's send_str just now
        self._cpu_up = _CpuSampler(metrics.transcode_cpu_seconds_total.labels("caller_to_model"))
        self._cpu_down = _CpuSampler(metrics.transcode_cpu_seconds_total.labels("model_to_caller"))

    def negotiate(self, session: EngineSession, quality: ResampleQuality) -> None:
        """Set up conversion for the formats the session settled on (passthrough where they match)."""
        carrier = self.carrier_format
        self._up = (
            Converter(carrier, session.input_format, quality) if session.input_format != carrier else None
        )
        self._down = (
            Converter(session.output_format, carrier, quality) if session.output_format != carrier else None
        )
        self._down_dirty = False
        self.playback = PlaybackTracker(model_bytes_per_ms=session.output_format.bytes_per_second / 1000)
        log.info(
            "engine.audio",
            to_model=f"{session.input_format.encoding}/{session.input_format.rate_hz}",
            from_model=f"{session.output_format.encoding}/{session.output_format.rate_hz}",
            transcoding=self._up is not None or self._down is not None,
        )

    # -- caller → model ---------------------------------------------------------------------------

    def caller_payload(self, payload_b64: str) -> str | None:
        """What to send the model for one media payload (None: nothing yet, the converter holds it).

        Raises ProtocolError (`bad_base64`, nothing converted) if it is not base64.
        """
        if self._up is None:
            if not _is_base64(payload_b64):
                raise ProtocolError("media payload is not base64", reason="bad_base64")
            self.bytes_from_caller += b64_decoded_len(payload_b64)
            return payload_b64
        caller_audio = _decode_base64(payload_b64, "media payload")
        self.bytes_from_caller += len(caller_audio)
        model_audio = self._cpu_up.convert(self._up, caller_audio)
        return base64.b64encode(model_audio).decode("ascii") if model_audio else None

    async def caller_audio(self, session: EngineSession, payload_b64: str) -> None:
        """Forward one media payload; ProtocolError (`bad_base64`, nothing sent) if it is not base64."""
        audio = self.caller_payload(payload_b64)
        if audio is not None:
            await session.send_audio(audio)

    def caller_audio_now(self, session: EngineSession, payload_b64: str) -> bool:
        """Forward one media payload without waiting, if the session can take it now and it is
        base64; False: nothing done (the frame takes the ordinary path and is judged there)."""
        write = session.audio_writer()
        if write is None:
            return False
        try:
            audio = self.caller_payload(payload_b64)
        except ProtocolError:
            return False
        if audio is not None:
            write(audio)
        self.fast_caller_frames += 1
        return True

    # -- model → caller ---------------------------------------------------------------------------

    def _model_frames(self, event: AudioDelta) -> list[str] | None:
        """The carrier frames for one model delta; None when the caller interrupted its response.

        Raises ProtocolError (`bad_base64`, nothing changed) for a delta that is not base64.
        """
        if event.item_id in self._interrupted:
            return None  # audio of a response the caller interrupted, still in flight from the model
        if self._down is None:
            if not _is_base64(event.audio_b64):
                raise ProtocolError("audio delta is not base64", reason="bad_base64")
            nbytes = b64_decoded_len(event.audio_b64)
            self.playback.received(event.item_id, nbytes)
            return self._frames(event.item_id, event.audio_b64, nbytes)
        model_audio = _decode_base64(event.audio_b64, "audio delta")
        self.playback.received(event.item_id, len(model_audio))
        caller_audio = self._cpu_down.convert(self._down, model_audio)
        self._down_dirty = True
        if not caller_audio:
            return []
        return self._frames(event.item_id, base64.b64encode(caller_audio).decode("ascii"), len(caller_audio))

    async def model_audio(self, event: AudioDelta) -> bool:
        """Forward one model audio delta; False when it was dropped because the caller interrupted it.

        Raises ProtocolError (`bad_base64`, nothing sent) for a delta that is not base64.
        """
        frames = self._model_frames(event)
        if frames is None:
            return False
        await self._write(frames)
        return True

    def model_audio_now(self, event: AudioDelta) -> bool | None:
        """`model_audio` without waiting: None (nothing done) when the carrier socket cannot take
        frames now; otherwise what `model_audio` returns. Raises ProtocolError like it."""
        direct = self._direct
        if direct is None or self._slow_writes or not direct.ready():
            return None
        frames = self._model_frames(event)
        self.fast_model_frames += 1
        if frames is None:
            return False
        if frames:
            direct.write(frames)
        return True

    def _frames(self, item_id: str, payload_b64: str, nbytes: int, *, mark: bool = False) -> list[str]:
        """A media frame of carrier-format audio, with the marks due around it (see `send`)."""
        playback = self.playback
        frames: list[str] = []
        if playback.unmarked_item not in (None, item_id):
            self._mark_into(frames)
        frames.append(self._codec.media(payload_b64))
        if playback.sent(item_id, nbytes) or mark:
            self._mark_into(frames)
        self.bytes_to_caller += nbytes
        if item_id != HOLD_ITEM:
            self.agent_audio_sent_at = time.monotonic()
            self.agent_audio_frames += 1
        return frames

    def _mark_into(self, frames: list[str]) -> None:
        name = self.playback.mark()
        if name is not None:
            frames.append(self._codec.mark(name))

    async def _write(self, frames: list[str]) -> None:
        # One system call for a media frame and its mark when the socket takes them at once;
        # aiohttp's send_str (which waits for a slow peer) otherwise.
        direct = self._direct
        if direct is not None and direct.ready():
            direct.write(frames)
            return
        # While these wait for the peer, nothing is written directly: a delta arriving meanwhile
        # would land between a media frame and its mark.
        self._slow_writes += 1
        try:
            for frame in frames:
                await self._ws.send_str(frame)
        finally:
            self._slow_writes -= 1

    async def send(self, item_id: str, payload_b64: str, nbytes: int, *, mark: bool = False) -> None:
        """Write carrier-format audio; a mark follows every MARK_EVERY_MS of it, or now if `mark`.

        Audio of another item than the unmarked audio before it gets that audio's mark first, so a
        mark always confirms a single item.
        """
        await self._write(self._frames(item_id, payload_b64, nbytes, mark=mark))

    async def confirm(self) -> None:
        """Mark the audio written since the last mark, if any: its echo says the caller heard it."""
        frames: list[str] = []
        self._mark_into(frames)
        if frames:
            await self._write(frames)

    async def flush(self, item_id: str | None) -> None:
        """At the end of an item: emit what the resampler holds back, and mark all audio written.

        The tail keeps the end of a response from being cut off; the mark is what `wait_spoken`
        (end_call's goodbye, a transfer's "transferring you") and a later barge-in wait for.
        """
        if self._down is not None and self._down_dirty:
            self._down_dirty = False
            tail = self._down.flush()
            if tail and item_id is not None and item_id not in self._interrupted:
                await self.send(item_id, base64.b64encode(tail).decode("ascii"), len(tail))
        await self.confirm()

    async def clear(self) -> None:
        await self._write([self._codec.clear()])

    def interrupt(self) -> tuple[str, int] | None:
        """On barge-in: forget queued playback; returns (item, audio_end_ms) to truncate, if any.

        Called before any await, so mark echoes answering the `clear` cannot count as heard audio.
        """
        cut = self.playback.interrupt()
        if self._down is not None and self._down_dirty:
            self._down.flush()  # discard: the interrupted speech must not leak into the next response
            self._down_dirty = False
        if cut is not None:
            self._interrupted.add(cut[0])
        return cut
