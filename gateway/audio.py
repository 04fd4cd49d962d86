"""Audio transcoding between the telephone leg (G.711, 8 kHz) and the model leg (PCM16 LE, 24 kHz).

Every converter here is stateful: the resampler carries filter history and a fractional read
position from one chunk to the next, which is what keeps frame edges click-free and the sample
count exact over a long call. Consequently a converter belongs to ONE call and ONE direction:
create a ``CallerToModel`` and a ``ModelToCaller`` per call and never share either between calls
or directions (interleaving two streams through one filter would splice them together). None of
the objects are thread-safe; each is meant to be driven from the call's own task.

Two resampling engines behind one ``Resampler``: a ratio of exactly 3 (8 kHz ⇄ 24 kHz, the OpenAI
``pcm24k`` paths) runs the fixed-ratio polyphase FIR of gateway.polyphase; any other ratio
(ElevenLabs' 16 kHz, hold clips) runs libsamplerate. ``resample_quality`` picks the filter of either:

  ratio 3, "high"   x3: flat to 3.4 kHz, images >= 90 dB down from 4.6 kHz; /3: flat to 3.4 kHz,
                    >= 90 dB down from 4 kHz (nothing folds back). Look-ahead 2.4 ms / 4.9 ms.
  ratio 3, "fast"   both ways flat to 3.4 kHz and >= 75 dB down from 4.6 kHz (/3 lets 4-4.6 kHz fold
                    back to 3.4-4 kHz, outside the telephone band). Look-ahead 2.0 ms; a little less CPU.
  other, "high"     libsamplerate sinc_medium: flat within 0.01 dB to 3.4 kHz at 8 kHz.
  other, "fast"     libsamplerate sinc_fastest: about half the CPU, ~9 dB down at 3.4 kHz.

Latency note: either engine's output is time-aligned with its input (no constant offset is inserted),
but the filter's look-ahead is held back until more input arrives (about 6 ms with sinc_medium, 2.5 ms
with sinc_fastest, figures above for ratio 3). ``flush`` releases it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
import samplerate

from gateway.polyphase import PolyphaseResampler

# Stdlib audioop warns on import on 3.11/3.12; with pytest's filterwarnings=error (and for clean
# logs in production) that must not escape. On 3.13+ the name is provided by audioop-lts, silently.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*audioop.*", category=DeprecationWarning)
    import audioop

__all__ = [
    "ALAW_8K",
    "PCM_24K",
    "ULAW_8K",
    "AudioFormat",
    "CallerToModel",
    "Converter",
    "Encoding",
    "ModelToCaller",
    "ResampleQuality",
    "Resampler",
    "SincResampler",
    "alaw_to_pcm16",
    "b64_decoded_len",
    "new_resampler",
    "pcm16_to_alaw",
    "pcm16_to_ulaw",
    "ulaw_to_pcm16",
]

TELEPHONY_RATE_HZ: Final = 8000
MODEL_RATE_HZ: Final = 24000
_SAMPLE_WIDTH: Final = 2  # PCM16

ResampleQuality = Literal["high", "fast"]

# sinc_medium keeps the whole telephone band (flat within 0.01 dB to 3.4 kHz at 8 kHz);
# sinc_fastest costs about half the CPU but is ~9 dB down at 3.4 kHz, audibly dulling sibilants.
_CONVERTER: Final[dict[str, str]] = {"high": "sinc_medium", "fast": "sinc_fastest"}

_INT16_SCALE: Final = 32768.0
_INT16 = np.dtype("<i2")  # wire formats are little-endian regardless of host order


def ulaw_to_pcm16(data: bytes) -> bytes:
    """Decode G.711 µ-law to PCM16 little-endian, one sample per byte."""
    return audioop.ulaw2lin(data, _SAMPLE_WIDTH)


def pcm16_to_ulaw(data: bytes) -> bytes:
    """Encode PCM16 little-endian to G.711 µ-law (saturating, never wrapping)."""
    return audioop.lin2ulaw(data, _SAMPLE_WIDTH)


def alaw_to_pcm16(data: bytes) -> bytes:
    """Decode G.711 A-law to PCM16 little-endian, one sample per byte."""
    return audioop.alaw2lin(data, _SAMPLE_WIDTH)


def pcm16_to_alaw(data: bytes) -> bytes:
    """Encode PCM16 little-endian to G.711 A-law (saturating, never wrapping)."""
    return audioop.lin2alaw(data, _SAMPLE_WIDTH)


def b64_decoded_len(b64: str) -> int:
    """Number of bytes ``b64`` decodes to, computed without decoding.

    Meant for counting passthrough audio on the hot path; assumes canonical base64 without
    embedded whitespace, which is what both Twilio and OpenAI send.
    """
    n = len(b64)
    if n == 0:
        return 0
    padding = 2 if b64.endswith("==") else 1 if b64.endswith("=") else 0
    return n * 3 // 4 - padding


def new_resampler(rate_in_hz: int, rate_out_hz: int, quality: ResampleQuality = "high") -> Resampler:
    """A stateful PCM16-LE mono converter for one continuous stream: the polyphase FIR for a ratio of
    exactly 3, libsamplerate for any other (see the module docstring)."""
    if rate_in_hz <= 0 or rate_out_hz <= 0:
        raise ValueError(f"sample rates must be positive, got {rate_in_hz} -> {rate_out_hz}")
    if quality not in _CONVERTER:
        raise ValueError(f"unknown resample quality {quality!r}")
    if rate_out_hz == 3 * rate_in_hz:
        return PolyphaseResampler("up", quality)
    if rate_in_hz == 3 * rate_out_hz:
        return PolyphaseResampler("down", quality)
    return SincResampler(rate_in_hz, rate_out_hz, quality)


class SincResampler:
    """libsamplerate for one continuous stream, any ratio.

    Wraps a single libsamplerate state for its whole life: re-creating it per chunk restarts the
    filter from silence at every chunk edge, which is heard as a click every frame.
    """

    def __init__(self, rate_in_hz: int, rate_out_hz: int, quality: ResampleQuality = "high") -> None:
        self._rate_in = rate_in_hz
        self._rate_out = rate_out_hz
        self._ratio = rate_out_hz / rate_in_hz
        self._state = samplerate.Resampler(_CONVERTER[quality], channels=1)
        # A chunk may split a sample in half (odd byte count); the spare byte waits for the next one.
        self._pending = b""
        # Counted since the last flush so flush can top the output up to the exact length.
        self._in_samples = 0
        self._out_samples = 0

    def process(self, pcm16: bytes) -> bytes:
        """Convert one chunk, keeping filter state for the next; output lags by the look-ahead."""
        if self._pending:
            pcm16 = self._pending + pcm16
        usable = len(pcm16) & ~1
        self._pending = pcm16[usable:]
        if usable == 0:
            return b""
        samples = np.frombuffer(pcm16, dtype=_INT16, count=usable // 2)
        self._in_samples += samples.size
        out = self._state.process(samples.astype(np.float32) / _INT16_SCALE, self._ratio)
        self._out_samples += len(out)
        return _to_pcm16(out)

    def flush(self) -> bytes:
        """Emit the samples held back by the filter look-ahead, then reset for a fresh stream.

        Brings the total output since the previous flush to round(input * ratio) samples. A dangling
        half sample, if any, is dropped: it cannot be converted without its other byte.
        """
        wanted = (self._in_samples * self._rate_out + self._rate_in // 2) // self._rate_in
        missing = wanted - self._out_samples
        tail = b""
        if missing > 0:
            # The binding sizes its output buffer as ceil(len(input) * ratio), so end_of_input on
            # an empty array yields nothing. Feeding silence gives the filter room to drain; the
            # real tail comes first and anything after it is ring-out into that silence.
            pad = np.zeros(int(missing / self._ratio) + 2, dtype=np.float32)
            out = self._state.process(pad, self._ratio, end_of_input=True)
            tail = _to_pcm16(out[:missing])
        self.reset()
        return tail

    def reset(self) -> None:
        """Drop all history (filter memory, held-back samples, spare byte) without emitting it."""
        self._state.reset()
        self._pending = b""
        self._in_samples = 0
        self._out_samples = 0


def _to_pcm16(samples: npt.NDArray[np.float32]) -> bytes:
    # Rounding (not truncation) keeps the conversion unbiased; clipping is needed because a
    # band-limited reconstruction of a near-full-scale signal overshoots, and a bare astype would
    # wrap those peaks to the opposite sign -- a loud crack rather than mild clipping.
    scaled = np.rint(samples * _INT16_SCALE)
    return np.clip(scaled, -32768, 32767).astype(_INT16).tobytes()


Resampler = PolyphaseResampler | SincResampler

Encoding = Literal["pcm16", "ulaw", "alaw"]


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """One leg's wire audio: PCM16 LE mono, or G.711 µ-law / A-law, at `rate_hz`."""

    encoding: Encoding
    rate_hz: int

    @property
    def bytes_per_second(self) -> int:
        return self.rate_hz * (2 if self.encoding == "pcm16" else 1)


ULAW_8K: Final = AudioFormat("ulaw", TELEPHONY_RATE_HZ)
ALAW_8K: Final = AudioFormat("alaw", TELEPHONY_RATE_HZ)
PCM_24K: Final = AudioFormat("pcm16", MODEL_RATE_HZ)
_DECODE: Final = {"ulaw": ulaw_to_pcm16, "alaw": alaw_to_pcm16}
_ENCODE: Final = {"ulaw": pcm16_to_ulaw, "alaw": pcm16_to_alaw}


class Converter:
    """Audio from one format to another, for one direction of one call: decode G.711, resample
    (statefully) when the rates differ, encode G.711. Formats that are equal need no converter:
    callers pass such audio through untouched."""

    def __init__(self, src: AudioFormat, dst: AudioFormat, quality: ResampleQuality = "high") -> None:
        self.src = src
        self.dst = dst
        self._decode = _DECODE.get(src.encoding)
        self._encode = _ENCODE.get(dst.encoding)
        self._resampler = (
            new_resampler(src.rate_hz, dst.rate_hz, quality) if src.rate_hz != dst.rate_hz else None
        )
        self._spare = b""  # half a PCM16 sample, when no resampler is there to carry it

    def convert(self, data: bytes) -> bytes:
        pcm = self._decode(data) if self._decode is not None else data
        if self._resampler is not None:
            pcm = self._resampler.process(pcm)
        elif self._decode is None and self._encode is not None:
            pcm = self._spare + pcm
            usable = len(pcm) & ~1
            pcm, self._spare = pcm[:usable], pcm[usable:]
        if not pcm:
            return b""
        return self._encode(pcm) if self._encode is not None else pcm

    def flush(self) -> bytes:
        """The resampler's held-back tail (empty when no resampling); call at the end of a response.

        Without it the last few ms of each response would be stuck in the filter until the next
        response pushed them out, glued to its start.
        """
        if self._resampler is None:
            self._spare = b""
            return b""
        pcm = self._resampler.flush()
        if not pcm:
            return b""
        return self._encode(pcm) if self._encode is not None else pcm


class CallerToModel(Converter):
    """Caller audio: G.711 µ-law at 8 kHz to PCM16 LE at 24 kHz, for one call."""

    def __init__(self, quality: ResampleQuality = "high") -> None:
        super().__init__(ULAW_8K, PCM_24K, quality)


class ModelToCaller(Converter):
    """Model audio: PCM16 LE at 24 kHz to G.711 µ-law at 8 kHz, for one call."""

    def __init__(self, quality: ResampleQuality = "high") -> None:
        super().__init__(PCM_24K, ULAW_8K, quality)
