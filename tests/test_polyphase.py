"""Tests for gateway.polyphase: the fixed-ratio x3 / /3 FIR resampler of the pcm24k paths.

The reference for "correct" is the textbook definition computed in float64 with np.convolve on the
whole signal at once: zero-stuff (x3) or keep every third sample (/3) around the linear-phase filter,
with its group delay removed. The streaming resampler must match it to within rounding, whatever the
chunking, and its filters must meet the quality bar of the roadmap (flat +-1 dB to 3.4 kHz, images
and aliases <= -70 dB).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import numpy.typing as npt
import pytest

from gateway.polyphase import DESIGNS, Direction, PolyphaseResampler, Quality, design_taps

FloatArray = npt.NDArray[np.float64]
QUALITIES: tuple[Quality, ...] = ("high", "fast")
DIRECTIONS: tuple[Direction, ...] = ("up", "down")
RATE = {"up": (8000, 24000), "down": (24000, 8000)}


def taps_of(direction: Direction, quality: Quality) -> FloatArray:
    return design_taps(DESIGNS[direction, quality], direction)


def reference(x: FloatArray, direction: Direction, quality: Quality) -> FloatArray:
    """The whole signal resampled by definition, aligned, unrounded, length round(len * ratio)."""
    taps = taps_of(direction, quality)
    delay = (len(taps) - 1) // 2
    if direction == "up":
        stuffed = np.zeros(3 * len(x))
        stuffed[::3] = x
        return np.convolve(stuffed, taps)[delay : delay + len(stuffed)]
    full = np.convolve(x, taps)[delay : delay + len(x)]
    return full[::3][: round(len(x) / 3)]


def rounded(y: FloatArray) -> npt.NDArray[np.int16]:
    return np.clip(np.rint(y), -32768, 32767).astype(np.int16)


def stream(r: PolyphaseResampler, data: bytes, sizes: Iterator[int]) -> bytes:
    out, pos = [], 0
    while pos < len(data):
        size = next(sizes)
        out.append(r.process(data[pos : pos + size]))
        pos += size
    return b"".join(out) + r.flush()


def random_sizes(seed: int, low: int, high: int) -> Iterator[int]:
    rng = np.random.default_rng(seed)
    while True:
        yield int(rng.integers(low, high))


def noise(n: int, seed: int = 1, amplitude: float = 12000) -> npt.NDArray[np.int16]:
    rng = np.random.default_rng(seed)
    return np.rint(rng.uniform(-amplitude, amplitude, n)).astype("<i2")


def tone(freq_hz: float, rate_hz: int, seconds: float, amplitude: float = 16384) -> FloatArray:
    t = np.arange(round(rate_hz * seconds)) / rate_hz
    return amplitude * np.sin(2 * np.pi * freq_hz * t)


def levels(x: FloatArray, rate_hz: int, freqs: Sequence[float]) -> list[float]:
    """Least-squares amplitudes of sinusoids (any phase) at `freqs` in x, fitted jointly so that a
    loud tone's leakage is not read as a quiet one."""
    t = np.arange(len(x)) / rate_hz
    basis = np.concatenate([[np.sin(2 * np.pi * f * t), np.cos(2 * np.pi * f * t)] for f in freqs]).T
    coef = np.linalg.lstsq(basis, x, rcond=None)[0]
    return [float(np.hypot(coef[2 * i], coef[2 * i + 1])) for i in range(len(freqs))]


def level(x: FloatArray, rate_hz: int, freq_hz: float) -> float:
    return levels(x, rate_hz, [freq_hz])[0]


def steady_output(direction: Direction, quality: Quality, x: FloatArray) -> FloatArray:
    """The resampler's output for `x` (rounded to int16 on the way in), with the start-up ramp cut off."""
    r = PolyphaseResampler(direction, quality)
    y = np.frombuffer(r.process(np.rint(x).astype("<i2").tobytes()), dtype="<i2").astype(np.float64)
    return y[len(y) // 10 :]


class TestFilterDesign:
    @pytest.mark.parametrize("key", list(DESIGNS))
    def test_taps_are_linear_phase_with_a_delay_divisible_by_three(
        self, key: tuple[Direction, Quality]
    ) -> None:
        """Every filter is symmetric (linear phase: all frequencies delayed alike) with 6k + 1 taps, so
        its delay is a whole number of samples at both rates and the output can be aligned exactly."""
        taps = taps_of(*key)
        assert len(taps) % 6 == 1
        assert np.allclose(taps, taps[::-1])

    @pytest.mark.parametrize("key", list(DESIGNS))
    def test_dc_gain_is_exactly_unity_per_output_phase(self, key: tuple[Direction, Quality]) -> None:
        """Going up, each of the three phases passes DC at exactly 1 (else a constant input would come
        out with an 8 kHz ripple); going down, the taps sum to 1."""
        taps = taps_of(*key)
        if key[0] == "up":
            for phase in range(3):
                assert taps[phase::3].sum() == pytest.approx(1.0, abs=1e-12)
        else:
            assert taps.sum() == pytest.approx(1.0, abs=1e-12)


class TestMatchesDefinition:
    @pytest.mark.parametrize("direction", DIRECTIONS)
    @pytest.mark.parametrize("quality", QUALITIES)
    def test_one_call_equals_the_textbook_convolution(self, direction: Direction, quality: Quality) -> None:
        """One process() plus flush() gives the definition's output to within one LSB (float32
        accumulation), sample for sample, aligned and of exactly round(n * ratio) samples."""
        x = noise(4001 if direction == "up" else 12001)
        r = PolyphaseResampler(direction, quality)
        got = np.frombuffer(r.process(x.tobytes()) + r.flush(), dtype="<i2").astype(np.int32)
        want = rounded(reference(x.astype(np.float64), direction, quality)).astype(np.int32)
        assert len(got) == len(want)
        assert np.abs(got - want).max() <= 1

    @pytest.mark.parametrize("direction", DIRECTIONS)
    def test_impulse_comes_out_where_it_went_in(self, direction: Direction) -> None:
        """Time alignment: an impulse at input sample 300 peaks at output sample 900 (x3) or 100 (/3);
        the filter's delay is not added to the stream."""
        x = np.zeros(3000, dtype="<i2")
        x[300] = 30000
        r = PolyphaseResampler(direction)
        y = np.frombuffer(r.process(x.tobytes()) + r.flush(), dtype="<i2")
        assert int(np.argmax(y)) == (900 if direction == "up" else 100)


class TestStreaming:
    @pytest.mark.parametrize("direction", DIRECTIONS)
    @pytest.mark.parametrize("quality", QUALITIES)
    def test_any_chunking_gives_the_same_output_as_one_call(
        self, direction: Direction, quality: Quality
    ) -> None:
        """Chunks of random byte counts (odd ones split a sample; some longer than the internal piece
        size, some a single byte) give bit-identical output to one call: the history, the carried
        bytes and the padding of the last block are handled at every boundary."""
        data = noise(60000, seed=5).tobytes()
        whole = PolyphaseResampler(direction, quality)
        expected = whole.process(data) + whole.flush()
        for seed, low, high in ((1, 1, 7), (2, 1, 900), (3, 300, 20000)):
            chunked = stream(PolyphaseResampler(direction, quality), data, random_sizes(seed, low, high))
            assert chunked == expected

    @pytest.mark.parametrize("direction", DIRECTIONS)
    @pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 59, 160, 161, 1001, 7777])
    def test_output_length_after_flush_is_exact(self, direction: Direction, n: int) -> None:
        """Whatever the input length, process + flush yield exactly round(n * ratio) samples."""
        r = PolyphaseResampler(direction)
        out = r.process(noise(n).tobytes()) + r.flush()
        expected = 3 * n if direction == "up" else round(n / 3)
        assert len(out) == 2 * expected

    def test_20ms_frames_give_480_samples_each_once_the_lookahead_is_filled(self) -> None:
        """No drift, frame by frame: after the first frame (which holds back the look-ahead) every
        160-sample frame yields exactly 480 samples, for ten minutes of frames."""
        r = PolyphaseResampler("up")
        frame = noise(160).tobytes()
        first = len(r.process(frame)) // 2
        assert first == 480 - r.lookahead
        lengths = {len(r.process(frame)) for _ in range(30000)}
        assert lengths == {960}

    def test_model_deltas_never_drift(self) -> None:
        """/3 over an hour of 40-100 ms deltas, flushed every 3 s like responses: the output is exactly
        a third of the input at every flush, so nothing accumulates."""
        r = PolyphaseResampler("down")
        sizes = random_sizes(9, 960, 2401)
        delta = noise(2400).tobytes()
        for _ in range(1200):  # 1200 responses of ~3 s
            taken = given = 0
            while given < 72000:
                size = next(sizes)
                taken += len(r.process(delta[: 2 * size])) // 2
                given += size
            taken += len(r.flush()) // 2
            assert taken == round(given / 3)

    def test_flush_resets_to_a_fresh_stream(self) -> None:
        """After flush the next utterance converts exactly as on a new resampler (no leftover history,
        carry or count); a second flush with nothing in between returns nothing."""
        used = PolyphaseResampler("down")
        used.process(noise(1001).tobytes() + b"\x01")
        used.flush()
        assert used.flush() == b""
        second = noise(5000, seed=3).tobytes()
        fresh = PolyphaseResampler("down")
        assert used.process(second) + used.flush() == fresh.process(second) + fresh.flush()


class TestQuality:
    @pytest.mark.parametrize("direction", DIRECTIONS)
    @pytest.mark.parametrize("quality", QUALITIES)
    @pytest.mark.parametrize("freq", [100, 300, 1000, 2000, 3000, 3400])
    def test_flat_to_3400_hz(self, direction: Direction, quality: Quality, freq: int) -> None:
        """The telephone band passes within 0.1 dB in both directions and qualities (the bar is 1 dB)."""
        rate_in, rate_out = RATE[direction]
        y = steady_output(direction, quality, tone(freq, rate_in, 0.5))
        assert abs(20 * np.log10(level(y, rate_out, freq) / 16384)) <= 0.1

    @pytest.mark.parametrize(
        ("quality", "freqs"), [("high", (1000, 3400, 3700, 3950)), ("fast", (1000, 2500, 3400))]
    )
    def test_images_are_70_db_down(self, quality: Quality, freqs: tuple[int, ...]) -> None:
        """x3 leaves images of an 8 kHz tone f at 8000 - f, 8000 + f, 16000 +- f: "high" removes them
        all, even for tones up to 3.95 kHz (images from 4.05 kHz); "fast" does for the telephone band,
        whose images start at 4.6 kHz. Every image is >= 70 dB below the input tone."""
        for f in freqs:
            y = steady_output("up", quality, tone(f, 8000, 0.5))
            found = levels(y, 24000, [f, 8000 - f, 8000 + f, 16000 - f, 16000 + f])
            for image_level in found[1:]:
                assert 20 * np.log10(max(image_level, 1e-3) / 16384) <= -70.0

    @pytest.mark.parametrize(
        ("quality", "freqs"),
        [("high", (4000, 4500, 6000, 10000, 11900)), ("fast", (4600, 5000, 7000, 11000))],
    )
    def test_aliases_are_70_db_down(self, quality: Quality, freqs: tuple[int, ...]) -> None:
        """/3 folds a 24 kHz tone above 4 kHz onto 8 kHz's band: "high" removes everything from
        4 kHz, "fast" everything from 4.6 kHz (what could fold onto the telephone band), to at least
        70 dB below the input tone (here below one LSB of the output)."""
        for f in freqs:
            y = steady_output("down", quality, tone(f, 24000, 0.5))
            folded = abs(f - 8000 * round(f / 8000))
            residue = max(level(y, 8000, folded), float(np.abs(y).max()), 0.5)
            assert 20 * np.log10(residue / 16384) <= -70.0

    def test_loud_input_saturates_instead_of_wrapping(self) -> None:
        """A full-scale square overshoots after band-limiting; where the unrounded definition exceeds
        int16 the output sits at the rail, everywhere else it matches within one LSB."""
        square = np.where(np.arange(8000) % 40 < 20, 32767, -32768).astype("<i2")
        r = PolyphaseResampler("up")
        got = np.frombuffer(r.process(square.tobytes()) + r.flush(), dtype="<i2").astype(np.int32)
        want = reference(square.astype(np.float64), "up", "high")
        assert want.max() > 33000
        assert np.abs(got - rounded(want).astype(np.int32)).max() <= 1
        assert np.all(got[want > 32768] == 32767)
