"""Test signals: tones in the wire formats of each leg."""

from __future__ import annotations

import numpy as np

from gateway.audio import pcm16_to_ulaw

MS = 8  # µ-law bytes per millisecond at 8 kHz
PCM24_MS = 48  # PCM16 24 kHz bytes per millisecond


def tone_ulaw(ms: int, hz: float = 440.0) -> bytes:
    t = np.arange(ms * 8) / 8000
    pcm = (0.3 * 32767 * np.sin(2 * np.pi * hz * t)).astype("<i2").tobytes()
    return pcm16_to_ulaw(pcm)


def tone_pcm24(ms: int, hz: float = 440.0) -> bytes:
    t = np.arange(ms * 24) / 24000
    return (0.3 * 32767 * np.sin(2 * np.pi * hz * t)).astype("<i2").tobytes()
