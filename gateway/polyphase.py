"""Fixed-ratio 3:1 resampling (8 kHz ⇄ 24 kHz, the OpenAI `pcm24k` paths) with a polyphase FIR.

libsamplerate converts any ratio, and pays for it: it interpolates its filter's coefficients for every
output sample. A ratio of exactly 3 needs none of that: each output sample is a dot product of a fixed
set of taps with the latest inputs, and there are only three such sets (phases) going up and one going
down. Here those dot products are one small matrix product per chunk (BLAS), so a 20 ms caller frame
costs a handful of numpy calls whatever the filter length (see bench/PROFILE.md).

How a chunk is computed. The input stream is cut into blocks of `block` samples. The outputs of one
block depend on that block and the `history` samples before it, so one row of `window` (a strided view
of history + chunk, built without copying) times a constant matrix (the filter laid out per output
position) gives one block's outputs, and a chunk of m blocks is an (m x window) @ (window x outputs)
product. The last block of a chunk is padded with zeros: a causal FIR's outputs never depend on
later inputs, so only the outputs that depend on padding are discarded, and the real history carries
on. The arithmetic is exact (float64, taps on a 2**-24 grid: see design_taps), so any chunking of a
stream gives the same output, bit for bit, as one call.

Time alignment matches libsamplerate's: the linear-phase filter delays by (taps - 1) / 2 samples at
24 kHz, and that many outputs are skipped at the start of a stream, so the output is aligned with the
input and the filter's look-ahead is held back until `flush` releases it (topping the output up to
exactly round(input * ratio) samples).

Filters: Kaiser-windowed sinc, designed once per quality at import with numpy only; passband to 0.85
x the 8 kHz Nyquist (3.4 kHz) in every case.
  "high"  stopband from the 8 kHz Nyquist (4 kHz), >= 90 dB: going up no image at all (not even of
          µ-law's noise near 4 kHz), going down nothing folds back. 235 taps, look-ahead 4.9 ms.
  "fast"  stopband from 4.6 kHz, >= 75 dB: images of the telephone band start there, and what folds
          back from 4-4.6 kHz lands above 3.4 kHz, outside it. 97 taps, look-ahead 2.0 ms.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

__all__ = ["DESIGNS", "FilterDesign", "PolyphaseResampler", "design_taps"]

FACTOR: Final = 3
_INT16 = np.dtype("<i2")
_HI: Final = 32767.0
_LO: Final = -32768.0


def _clip_ufunc() -> Callable[..., Any]:
    """The `clip` ufunc itself: np.clip is a Python wrapper around it that costs twice as much as
    the clipping of a 480-sample frame. Private location, so looked up defensively (numpy 2, then
    1.x), falling back to np.clip."""
    for module in ("numpy._core.umath", "numpy.core.umath"):
        try:
            clip = getattr(importlib.import_module(module), "clip", None)
        except ImportError:
            continue
        if isinstance(clip, np.ufunc):
            return clip
    return np.clip


_CLIP: Final = _clip_ufunc()
TAP_BITS: Final = 24
# Blocks per matrix product at most: bounds the scratch memory whatever a model sends in one delta.
_MAX_BLOCKS: Final = 64

Direction = Literal["up", "down"]
Quality = Literal["high", "fast"]


@dataclass(frozen=True, slots=True)
class FilterDesign:
    """A lowpass at the 24 kHz rate; edges as fractions of the 8 kHz rate's Nyquist frequency."""

    passband: float
    stopband: float
    attenuation_db: float

    def taps(self) -> int:
        """Kaiser's estimate of the length, rounded up to 6k + 1: odd (an integer delay) and a delay
        that is a multiple of 3 (so the /3 output can be aligned exactly)."""
        width = (self.stopband - self.passband) / (2 * FACTOR)  # cycles per 24 kHz sample
        estimate = (self.attenuation_db - 7.95) / (14.36 * width) + 1
        return 6 * math.ceil((estimate - 1) / 6) + 1


DESIGNS: Final[dict[tuple[Direction, Quality], FilterDesign]] = {
    ("up", "high"): FilterDesign(0.85, 1.0, 90.0),
    ("up", "fast"): FilterDesign(0.85, 1.15, 75.0),
    ("down", "high"): FilterDesign(0.85, 1.0, 90.0),
    ("down", "fast"): FilterDesign(0.85, 1.15, 75.0),
}


def design_taps(design: FilterDesign, direction: Direction) -> npt.NDArray[np.float64]:
    """Kaiser-windowed sinc taps at 24 kHz. Going up each of the 3 phases passes DC at exactly 1 (a
    DC gain of 3 overall, making up for the zeros stuffed between samples); going down the taps sum
    to exactly 1."""
    n = design.taps()
    a = design.attenuation_db
    beta = 0.1102 * (a - 8.7) if a > 50 else 0.5842 * (a - 21) ** 0.4 + 0.07886 * (a - 21)
    cutoff = (design.passband + design.stopband) / 2 / (2 * FACTOR)  # cycles per 24 kHz sample
    t = np.arange(n) - (n - 1) / 2
    taps: npt.NDArray[np.float64] = 2 * cutoff * np.sinc(2 * cutoff * t) * np.kaiser(n, beta)
    # Phases normalised separately going up: one that passed DC at 0.999 would modulate a constant
    # input at 8 kHz. Taps on a grid of 2**-TAP_BITS: every product with a 16-bit sample and every
    # partial sum is then exact in float64, so the result does not depend on the order BLAS sums in
    # (which varies with the matrix shape, i.e. with the chunking). The grid's error is ~-140 dB.
    step = FACTOR if direction == "up" else 1
    for phase in range(step):
        values = taps[phase::step]
        values = np.rint(values / values.sum() * 2.0**TAP_BITS)
        values[values.size // 2] += 2.0**TAP_BITS - values.sum()  # the rounding residue
        taps[phase::step] = values / 2.0**TAP_BITS
    return taps


def _block_matrix(
    taps: npt.NDArray[np.float64], up: int, down: int, block: int, history: int
) -> npt.NDArray[np.float64]:
    """(history + block) x outputs-per-block: output q of a block from window sample i.

    In 24 kHz sample units output q sits at q * down and window sample i at (i - history) * up; the
    tap joining them is the time between the two.
    """
    outputs = block * up // down
    q = np.arange(outputs)[None, :] * down
    i = (np.arange(history + block)[:, None] - history) * up
    lag = q - i
    valid = (lag >= 0) & (lag < taps.size)
    matrix = np.where(valid, taps[np.clip(lag, 0, taps.size - 1)], 0.0)
    return np.ascontiguousarray(matrix, dtype=np.float64)


class _Kernel:
    """The constants of one (direction, quality): shared by every call's resampler, never mutated."""

    def __init__(self, direction: Direction, quality: Quality) -> None:
        self.up, self.down = (FACTOR, 1) if direction == "up" else (1, FACTOR)
        self.taps = design_taps(DESIGNS[direction, quality], direction)
        n = self.taps.size
        # Inputs per block: a 20 ms frame at 8 kHz is 8 blocks going up; 96 inputs (32 outputs) going down.
        self.block = 20 if direction == "up" else 96
        self.history = (n - 1 + self.up - 1) // self.up
        self.window = self.history + self.block
        self.outputs = self.block * self.up // self.down
        self.matrix = _block_matrix(self.taps, self.up, self.down, self.block, self.history)
        self.skip = (n - 1) // 2 // self.down  # outputs that precede the input's first sample
        self.zeros = bytes(2 * self.block)
        self.history_bytes = 2 * self.history
        self.strides = (2 * self.block, 2)


_KERNELS: Final = {(d, q): _Kernel(d, q) for d in ("up", "down") for q in ("high", "fast")}


class PolyphaseResampler:
    """Stateful PCM16-LE mono x3 or /3 resampling of one continuous stream (one call, one direction)."""

    __slots__ = ("_blocks", "_carry", "_flat", "_history", "_in", "_k", "_out", "_pcm", "_seg", "_skip",
                 "_sums")  # fmt: skip

    def __init__(self, direction: Direction, quality: Quality = "high") -> None:
        self._k = _KERNELS[direction, quality]
        self._set_blocks(1)
        self.reset()

    @property
    def lookahead(self) -> int:
        """Output samples held back by the filter until more input (or `flush`) arrives."""
        return self._k.skip

    def reset(self) -> None:
        """Back to a fresh stream: silent history, nothing carried, nothing counted."""
        self._history = bytes(2 * self._k.history)
        self._carry = b""  # input not yet usable: a half sample, or going down fewer than 3 samples
        self._skip = self._k.skip
        self._in = 0
        self._out = 0

    def process(self, pcm16: bytes) -> bytes:
        """Convert one chunk, keeping filter state for the next; output lags by the look-ahead."""
        k = self._k
        if self._carry:
            pcm16 = self._carry + pcm16
            self._carry = b""
        usable = len(pcm16) >> 1
        if k.down != 1:
            usable -= usable % k.down
        if usable << 1 != len(pcm16):
            self._carry = pcm16[usable << 1 :]
            pcm16 = pcm16[: usable << 1]
        if not usable:
            return b""
        self._in += usable
        out = self._run(pcm16, usable)
        self._out += len(out) >> 1
        return out

    def flush(self) -> bytes:
        """Emit what the look-ahead holds back, topping the output since the last flush up to exactly
        round(input * ratio) samples, then reset. A dangling half sample is dropped."""
        k = self._k
        carried = len(self._carry) // 2
        wanted = ((self._in + carried) * k.up + k.down // 2) // k.down
        missing = wanted - self._out
        tail = b""
        if missing > 0:
            # Silence after the real input pushes the held-back outputs (and any start-up skip) out.
            inputs = -(-(missing + self._skip) * k.down // k.up)
            inputs += -inputs % k.down
            zeros = max(inputs - carried, k.down - carried)
            zeros += -(carried + zeros) % k.down
            stream = self._carry[: 2 * carried] + bytes(2 * zeros)
            tail = self._run(stream, carried + zeros)[: 2 * missing]
        self.reset()
        return tail

    def _run(self, pcm16: bytes, samples: int) -> bytes:
        """Filter `samples` input samples (a multiple of the down factor); returns what is not skipped."""
        limit = _MAX_BLOCKS * self._k.block
        if samples <= limit:
            out = self._filter(pcm16, samples)
        else:  # a long delta: in pieces, so the scratch arrays stay small
            out = b"".join(
                self._filter(pcm16[2 * at : 2 * (at + limit)], min(limit, samples - at))
                for at in range(0, samples, limit)
            )
        if self._skip:
            dropped = min(self._skip, len(out) >> 1)
            self._skip -= dropped
            out = out[dropped << 1 :]
        return out

    def _filter(self, pcm16: bytes, count: int) -> bytes:
        k = self._k
        blocks = -(-count // k.block)
        stream = self._history + pcm16
        # The history for the next chunk: the last `history` real samples (never the padding).
        self._history = stream[len(stream) - k.history_bytes :]
        pad = blocks * k.block - count
        if pad:
            stream += k.zeros[: 2 * pad]
        if blocks != self._blocks:
            self._set_blocks(blocks)
        seg, flat, pcm = self._seg, self._flat, self._pcm
        # Row b is window b: samples b*block .. b*block + window - 1 of history + chunk, overlapping.
        seg[...] = np.ndarray((blocks, k.window), _INT16, stream, 0, k.strides)
        np.matmul(seg, k.matrix, out=self._sums)
        # Band-limiting a loud signal overshoots full scale: saturate rather than let the cast wrap.
        _CLIP(flat, _LO, _HI, out=flat)
        np.rint(flat, out=pcm, casting="unsafe")
        if pad:
            return pcm[: count * k.up // k.down].tobytes()
        return pcm.tobytes()

    def _set_blocks(self, blocks: int) -> None:
        """Scratch arrays sized for `blocks` blocks: a call's frames are mostly of one size, so they
        are reused from one chunk to the next and only reallocated when the size changes."""
        k = self._k
        self._blocks = blocks
        self._seg = np.empty((blocks, k.window), np.float64)
        self._sums = np.empty((blocks, k.outputs), np.float64)
        self._flat = self._sums.reshape(-1)
        self._pcm = np.empty(blocks * k.outputs, np.int16)
