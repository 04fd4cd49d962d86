"""The caller → model half of a call: read the carrier's media socket until the call ends.

Every frame is screened first (frame budget, decoding, order: gateway.carriers.inbound); what gets
through is well formed. Caller audio goes to whichever engine session is current (hand-offs and
reconnects replace it), mark echoes advance the playback tracker, key presses go to the features.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from aiohttp import web

from gateway.audio_path import AudioPath
from gateway.carriers.base import Carrier, Dtmf, MarkEcho, Media, StreamStop
from gateway.carriers.inbound import InboundFrames
from gateway.engines.base import EngineSession
from gateway.errors import ProtocolError
from gateway.features import CallFeatures
from gateway.frames import FrameAudit
from gateway.schema import LimitsConfig
from gateway.services import EndReason

log = structlog.get_logger("gateway.bridge")


async def read_caller(
    ws: web.WebSocketResponse,
    carrier: Carrier,
    *,
    limits: LimitsConfig,
    bad_frames: FrameAudit,
    audio: AudioPath,
    session: Callable[[], EngineSession],
    features: CallFeatures,
) -> EndReason:
    """Read caller frames until the carrier stops, closes, goes silent or misbehaves; why it ended."""
    frames = InboundFrames(ws, carrier.name, carrier.decode, limits, bad_frames, started=True)
    # Media is forwarded as it arrives where the sockets allow (gateway.fastws); what is left, and
    # every frame when they do not, is handled below in order.
    frames.tap_media(carrier.media_payload, lambda payload: audio.caller_audio_now(session(), payload))
    try:
        while (event := await frames.next_event()) is not None:
            if isinstance(event, Media):
                try:
                    await audio.caller_audio(session(), event.payload_b64)
                except ProtocolError as exc:  # not base64: dropped, never spliced into a model event
                    frames.bad(exc.reason, str(exc))
            elif isinstance(event, MarkEcho):
                audio.playback.marked(event.name)
                await features.on_progress()
            elif isinstance(event, Dtmf):
                features.on_dtmf(event.digit)
            elif isinstance(event, StreamStop):
                log.info("carrier.stop")
                return "caller_hangup"
    except TimeoutError:
        # Carriers stream audio continuously, silence included: a silent socket is a dead one.
        log.warning("carrier.timeout")
        return "carrier_timeout"
    finally:
        frames.untap()
        bad_frames.flush()
    if frames.ended_by == "heartbeat":
        return "carrier_timeout"
    if frames.ended_by == "flood":
        await frames.close_flooded()  # stop reading the flood now, not after the hang-up
    if frames.ended_by != "closed":
        # Flooded past flood_timeout_s, or a message the socket had to be closed for: the caller
        # may still be on the line, so the call is hung up at the carrier.
        return "protocol_violation"
    log.info("carrier.closed")
    return "caller_hangup"
