"""Test signals shared by the benchmarks (numpy only)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import numpy.typing as npt


def speech_like(rate_hz: int, seconds: float, peak: int = 9000) -> npt.NDArray[np.int16]:
    """PCM16 with a voice-like spectrum: a 220 Hz fundamental, harmonics up to 2.6 kHz, a 3 Hz
    syllable envelope. Content does not change a resampler's cost, but a plausible level keeps the
    G.711 and clipping paths honest."""
    t = np.arange(int(rate_hz * seconds)) / rate_hz
    envelope = 0.55 + 0.45 * np.sin(2 * math.pi * 3 * t)
    harmonics = ((220, 1.0), (440, 0.5), (660, 0.33), (1320, 0.25), (2640, 0.2))
    tone = sum(gain * np.sin(2 * math.pi * f * t) for f, gain in harmonics)
    scaled = peak * envelope * tone / sum(g for _, g in harmonics)
    return np.asarray(np.rint(scaled), dtype="<i2")


def ulaw_encode(pcm16: bytes) -> bytes:
    """G.711 µ-law of PCM16 LE (stdlib audioop on 3.11/3.12, audioop-lts on 3.13+)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop  # noqa: PLC0415

    return audioop.lin2ulaw(pcm16, 2)
