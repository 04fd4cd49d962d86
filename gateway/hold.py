"""Hold audio: a WAV clip converted once at startup to 8 kHz G.711, looped while a slow tool runs.

Conversion happens at config load, never on a call: a call only slices bytes that are already in
the carrier's encoding (:func:`loop_slice`). The clip is looped exactly as the file has it; a clip
whose end does not join its start smoothly will click once per loop, which is the file's business.
"""

from __future__ import annotations

import os
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from gateway.audio import ALAW_8K, ULAW_8K, AudioFormat, new_resampler, pcm16_to_alaw, pcm16_to_ulaw
from gateway.errors import ConfigError

__all__ = ["MAX_HOLD_CLIP_S", "HoldClip", "load_hold_clip", "loop_slice"]

MAX_HOLD_CLIP_S: Final = 300
_MIN_RATE_HZ: Final = 8000
_MAX_RATE_HZ: Final = 48000
_OUT_RATE_HZ: Final = 8000
_BYTES_PER_MS: Final = _OUT_RATE_HZ // 1000  # one G.711 byte per sample


@dataclass(frozen=True, slots=True)
class HoldClip:
    """One hold clip, pre-encoded in both G.711 laws at 8 kHz; ``duration_ms`` is its length."""

    ulaw: bytes = field(repr=False)
    alaw: bytes = field(repr=False)
    duration_ms: int

    def for_format(self, fmt: AudioFormat) -> bytes:
        """The clip in the carrier leg's format (8 kHz µ-law or A-law)."""
        if fmt == ULAW_8K:
            return self.ulaw
        if fmt == ALAW_8K:
            return self.alaw
        raise ValueError(f"hold audio is 8 kHz G.711 only, not {fmt.encoding} at {fmt.rate_hz} Hz")


def load_hold_clip(path: str | Path) -> HoldClip:
    """Read an integer-PCM WAV (8/16/24/32-bit, mono or stereo, 8-48 kHz) and prepare it for calls.

    Raises ConfigError, naming ``path``, for anything that cannot be played: a missing or
    unreadable file, a file that is not WAV, a compressed or floating-point WAV, an unsupported
    layout, an empty clip or one longer than five minutes.
    """

    def problem(what: str) -> ConfigError:
        return ConfigError([f"{path}: {what}"])

    try:
        # wave.open only treats str as a file name; a Path would be taken for a file object.
        with wave.open(os.fspath(path), "rb") as wav:
            channels = wav.getnchannels()
            width = wav.getsampwidth()
            rate_hz = wav.getframerate()
            nframes = wav.getnframes()
            if channels not in (1, 2):
                raise problem(f"hold audio must be mono or stereo, the file has {channels} channels")
            if width not in (1, 2, 3, 4):
                raise problem(f"unsupported sample width of {width} bytes (use 16-bit PCM)")
            if not _MIN_RATE_HZ <= rate_hz <= _MAX_RATE_HZ:
                raise problem(f"sample rate {rate_hz} Hz is outside {_MIN_RATE_HZ}-{_MAX_RATE_HZ} Hz")
            # Checked on the header before reading, so a huge file is refused without loading it.
            if nframes > MAX_HOLD_CLIP_S * rate_hz:
                raise problem(
                    f"clip is {nframes / rate_hz:.0f} s long; hold audio is limited to {MAX_HOLD_CLIP_S} s"
                )
            data = wav.readframes(nframes)
    except OSError as exc:
        raise problem(f"cannot read hold audio file ({exc.strerror or exc})") from exc
    except wave.Error as exc:
        if str(exc).startswith("unknown format"):
            # The stdlib reader only decodes integer PCM; float (3), A-law (6), ADPCM (2), ... end up
            # here -- and on 3.11 also WAVE_FORMAT_EXTENSIBLE, which the reader learned in 3.12.
            raise problem(f"unsupported WAV encoding ({exc}); re-export the clip as 16-bit PCM") from exc
        raise problem(f"not a WAV file ({exc})") from exc
    except EOFError as exc:
        # wave's way of saying the file ends inside its own headers (an empty file included).
        raise problem("not a WAV file (truncated header)") from exc

    samples = _to_mono_float(data, width, channels)
    if samples.size == 0:
        raise problem("clip is empty")
    pcm = _to_pcm16(samples)
    if rate_hz != _OUT_RATE_HZ:
        resampler = new_resampler(rate_hz, _OUT_RATE_HZ)
        # process + flush on one stream gives exactly round(n * 8000 / rate_hz) samples.
        pcm = resampler.process(pcm) + resampler.flush()
        if not pcm:
            raise problem("clip is too short to play (less than one sample at 8 kHz)")
    nsamples = len(pcm) // 2
    return HoldClip(
        ulaw=pcm16_to_ulaw(pcm),
        alaw=pcm16_to_alaw(pcm),
        duration_ms=(nsamples + _BYTES_PER_MS // 2) // _BYTES_PER_MS,
    )


def loop_slice(clip: bytes, offset: int, nbytes: int) -> tuple[bytes, int]:
    """The next ``nbytes`` of ``clip`` played in a loop from ``offset``, and the offset after them.

    ``nbytes`` may exceed the clip (it repeats); the returned offset is always in ``[0, len(clip))``.
    """
    size = len(clip)
    if size == 0:
        raise ValueError("cannot loop an empty clip")
    if nbytes < 0:
        raise ValueError(f"nbytes must not be negative, got {nbytes}")
    start = offset % size
    end = start + nbytes
    if end <= size:
        return clip[start:end], end % size
    whole, rest = divmod(end - size, size)
    return b"".join((clip[start:], clip * whole, clip[:rest])), rest


def _to_mono_float(data: bytes, width: int, channels: int) -> npt.NDArray[np.float64]:
    """Interleaved little-endian integer PCM to mono samples in [-1, 1), channels averaged."""
    usable = len(data) - len(data) % (width * channels)  # a truncated file may end mid-frame
    raw = np.frombuffer(data, dtype=np.uint8, count=usable)
    if width == 1:
        # 8-bit WAV is the one unsigned format: 128 is silence.
        values = (raw.astype(np.float64) - 128.0) / 128.0
    elif width == 2:
        values = raw.view("<i2").astype(np.float64) / 32768.0
    elif width == 3:
        # Put each 3-byte sample in the top of an int32 (low byte zero): the sign comes for free.
        padded = np.zeros((usable // 3, 4), dtype=np.uint8)
        padded[:, 1:] = raw.reshape(-1, 3)
        values = padded.reshape(-1).view("<i4").astype(np.float64) / 2147483648.0
    else:
        values = raw.view("<i4").astype(np.float64) / 2147483648.0
    mono: npt.NDArray[np.float64] = values.reshape(-1, channels).mean(axis=1)
    return mono


def _to_pcm16(samples: npt.NDArray[np.float64]) -> bytes:
    return np.clip(np.rint(samples * 32768.0), -32768, 32767).astype("<i2").tobytes()
