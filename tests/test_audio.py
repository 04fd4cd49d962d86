"""Tests for gateway.audio: G.711 codecs, the stateful resampler and the per-direction converters.

Signal-quality assertions are spectral (numpy FFT / sine fits) rather than sample-exact so they pin
behaviour the caller hears, not libsamplerate's internals.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from itertools import repeat
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import samplerate

from gateway.audio import (
    CallerToModel,
    ModelToCaller,
    ResampleQuality,
    alaw_to_pcm16,
    b64_decoded_len,
    new_resampler,
    pcm16_to_alaw,
    pcm16_to_ulaw,
    ulaw_to_pcm16,
)
from gateway.polyphase import DESIGNS, design_taps

FloatArray = npt.NDArray[np.float64]
Int16Array = npt.NDArray[np.int16]

FULL_SCALE = 32767
ULAW_FRAME = 160  # 20 ms at 8 kHz, one byte per sample
ULAW_NEGATIVE_ZERO = 0x7F  # decodes to 0 like 0xFF; the encoder only ever emits 0xFF for 0


def tone(freq_hz: float, rate_hz: int, seconds: float, amplitude: float = 0.5) -> Int16Array:
    """A sine at `amplitude` x full scale as int16 samples."""
    t = np.arange(round(rate_hz * seconds)) / rate_hz
    return np.rint(amplitude * FULL_SCALE * np.sin(2 * np.pi * freq_hz * t)).astype("<i2")


def pcm(samples: npt.NDArray[np.integer]) -> bytes:
    return np.asarray(samples, dtype="<i2").tobytes()


def samples_of(data: bytes) -> Int16Array:
    return np.frombuffer(data, dtype="<i2")


def sine_amplitude(x: npt.NDArray[np.number], rate_hz: int, freq_hz: float) -> float:
    """Least-squares amplitude of the `freq_hz` component; immune to partial periods and DC."""
    t = np.arange(len(x)) / rate_hz
    basis = np.stack([np.sin(2 * np.pi * freq_hz * t), np.cos(2 * np.pi * freq_hz * t), np.ones_like(t)], 1)
    coef = np.linalg.lstsq(basis, x.astype(np.float64), rcond=None)[0]
    return float(np.hypot(coef[0], coef[1]))


def spurious_db(x: npt.NDArray[np.number], rate_hz: int, f0: float = 1000.0, bw: float = 100.0) -> float:
    """Energy outside +-bw of f0 AND its harmonics, in dB relative to the energy within +-bw of f0.

    Harmonics are excluded because a 1 kHz tone is exactly fs/8 at 8 kHz, so G.711 quantisation
    error repeats every 8 samples and lands entirely on harmonics (about -34 dB at 0.5 FS) -- a
    floor no resampler can beat. Frame-edge clicks repeat every 20 ms, i.e. they spread over every
    50 Hz bin, so they are still fully counted here.
    """
    xf = x.astype(np.float64)
    power = np.abs(np.fft.rfft(xf * np.blackman(len(xf)))) ** 2
    freqs = np.fft.rfftfreq(len(xf), 1 / rate_hz)
    fundamental = np.abs(freqs - f0) <= bw
    near_harmonic = np.zeros_like(fundamental)
    for k in range(1, int(rate_hz / 2 / f0) + 1):
        near_harmonic |= np.abs(freqs - k * f0) <= bw
    spurious, wanted = float(power[~near_harmonic].sum()), float(power[fundamental].sum())
    return 10 * float(np.log10(spurious / wanted))


def chunks(data: bytes, sizes: Iterator[int]) -> Iterator[bytes]:
    pos = 0
    while pos < len(data):
        size = next(sizes)
        yield data[pos : pos + size]
        pos += size


def varying_sizes(seed: int, low: int, high: int) -> Iterator[int]:
    """Endless random chunk sizes in [low, high), odd and even alike."""
    rng = np.random.default_rng(seed)
    while True:
        yield int(rng.integers(low, high))


def direct_upsample(x: FloatArray) -> FloatArray:
    """The "high" x3 filter by definition: zero-stuff, convolve with the taps, drop the group delay."""
    taps = design_taps(DESIGNS["up", "high"], "up")
    stuffed = np.zeros(3 * len(x))
    stuffed[::3] = x
    delay = (len(taps) - 1) // 2
    return np.convolve(stuffed, taps)[delay : delay + len(stuffed)]


def run_stream(convert: Callable[[bytes], bytes], parts: Iterator[bytes]) -> bytes:
    return b"".join(convert(part) for part in parts)


class TestImport:
    def test_audioop_deprecation_warning_is_contained(self) -> None:
        """Importing gateway.audio in a fresh interpreter with DeprecationWarning promoted to an
        error succeeds: stdlib audioop's import-time warning (3.11/3.12) never escapes, whatever
        the import order in the rest of the process."""
        proc = subprocess.run(
            [sys.executable, "-W", "error::DeprecationWarning", "-c", "import gateway.audio"],
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).resolve().parent.parent,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        )
        assert proc.returncode == 0, proc.stderr


class TestG711:
    def test_ulaw_codes_survive_round_trip(self) -> None:
        """Every µ-law code decodes and re-encodes to itself; the one exception is negative zero
        (0x7F), which decodes to 0 and comes back as the canonical 0xFF."""
        codes = bytes(range(256))
        back = pcm16_to_ulaw(ulaw_to_pcm16(codes))
        expected = bytes(0xFF if c == ULAW_NEGATIVE_ZERO else c for c in codes)
        assert back == expected

    def test_alaw_codes_survive_round_trip(self) -> None:
        """Every one of the 256 A-law codes decodes and re-encodes to itself (A-law has no -0)."""
        codes = bytes(range(256))
        assert pcm16_to_alaw(alaw_to_pcm16(codes)) == codes

    @pytest.mark.parametrize(
        ("encode", "decode", "peak"),
        [(pcm16_to_ulaw, ulaw_to_pcm16, 32124), (pcm16_to_alaw, alaw_to_pcm16, 32256)],
    )
    def test_pcm_round_trip_is_close(
        self, encode: Callable[[bytes], bytes], decode: Callable[[bytes], bytes], peak: int
    ) -> None:
        """Every PCM value within the codec's range survives G.711 and back to within its ~3.5 %
        relative step (36 LSB near zero), one byte per sample."""
        x = np.arange(-peak, peak + 1).astype("<i2")
        encoded = encode(pcm(x))
        assert len(encoded) == len(x)
        err = np.abs(samples_of(decode(encoded)).astype(np.int64) - x)
        assert np.all(err <= np.maximum(0.036 * np.abs(x), 36))

    @pytest.mark.parametrize(
        ("encode", "decode", "peak"),
        [(pcm16_to_ulaw, ulaw_to_pcm16, 32124), (pcm16_to_alaw, alaw_to_pcm16, 32256)],
    )
    def test_beyond_codec_peak_saturates(
        self, encode: Callable[[bytes], bytes], decode: Callable[[bytes], bytes], peak: int
    ) -> None:
        """int16 extremes beyond the codec's largest code encode to that code, keeping their sign."""
        x = np.array([32767, -32768, peak + 1, -peak - 1], dtype="<i2")
        assert samples_of(decode(encode(pcm(x)))).tolist() == [peak, -peak, peak, -peak]

    def test_output_is_little_endian_pcm16(self) -> None:
        """Decoded PCM is two bytes per sample, little-endian (µ-law 0x80 is the positive peak)."""
        assert ulaw_to_pcm16(bytes([0x80])) == (32124).to_bytes(2, "little", signed=True)


class TestB64DecodedLen:
    @pytest.mark.parametrize("size", [*range(12), 160, 161, 162, 3840, 4801])
    def test_matches_real_decode(self, size: int) -> None:
        """The length is computed from the text alone and equals len(b64decode(...)) for every
        padding case (0, 1, 2 '=')."""
        text = base64.b64encode((bytes(range(256)) * 20)[:size]).decode()
        assert b64_decoded_len(text) == len(base64.b64decode(text)) == size


class TestResampler:
    def test_odd_byte_counts_lose_nothing(self) -> None:
        """Chunks split mid-sample give bit-identical output to sample-aligned chunks, and the total
        after flush is exactly input/3 samples."""
        data = pcm(tone(1000, 24000, 3.0))

        aligned = new_resampler(24000, 8000)
        out_aligned = run_stream(aligned.process, chunks(data, repeat(4800)))
        out_aligned += aligned.flush()

        ragged = new_resampler(24000, 8000)
        sizes = varying_sizes(seed=7, low=1, high=5001)
        out_ragged = run_stream(ragged.process, chunks(data, sizes))
        out_ragged += ragged.flush()

        assert out_ragged == out_aligned
        assert len(out_ragged) == len(data) // 3

    def test_single_bytes_are_carried(self) -> None:
        """Feeding one byte at a time never raises and still yields every sample."""
        data = pcm(tone(440, 8000, 0.05))
        r = new_resampler(8000, 24000)
        out = run_stream(r.process, (data[i : i + 1] for i in range(len(data))))
        out += r.flush()
        assert len(out) == 3 * len(data)

    @pytest.mark.parametrize(("rate_in", "rate_out"), [(8000, 24000), (24000, 8000), (16000, 24000)])
    def test_flush_tops_output_up_to_exact_length(self, rate_in: int, rate_out: int) -> None:
        """process() holds back the filter look-ahead; flush() emits exactly the remainder so each
        utterance yields round(n * out/in) samples."""
        r = new_resampler(rate_in, rate_out)
        data = pcm(tone(500, rate_in, 0.73))
        body = r.process(data)
        tail = r.flush()
        n_in = len(data) // 2
        assert len(tail) > 0
        assert (len(body) + len(tail)) // 2 == round(n_in * rate_out / rate_in)

    def test_flush_on_fresh_resampler_is_empty(self) -> None:
        """Nothing in, nothing out: flush of an unused (or just-flushed) resampler returns b''."""
        r = new_resampler(24000, 8000)
        assert r.flush() == b""
        r.process(pcm(tone(1000, 24000, 0.1)))
        r.flush()
        assert r.flush() == b""

    @pytest.mark.parametrize("freq", [300, 1000, 2000, 3000, 3400])
    def test_high_passband_is_flat_to_3400_hz(self, freq: int) -> None:
        """Quality "high" (the polyphase /3 filter) 24k->8k keeps 300-3400 Hz within +-1 dB (within
        0.01 dB), so the whole telephone band reaches the caller."""
        r = new_resampler(24000, 8000, "high")
        y = samples_of(r.process(pcm(tone(freq, 24000, 1.0))))[400:]
        gain_db = 20 * np.log10(sine_amplitude(y, 8000, freq) / (0.5 * FULL_SCALE))
        assert abs(gain_db) <= 1.0

    def test_fast_is_audibly_down_at_3400_hz_on_libsamplerate_ratios(self) -> None:
        """Away from a ratio of 3 (here 16 kHz -> 8 kHz, libsamplerate), quality "fast" (sinc_fastest,
        80 % bandwidth) is >= 3 dB down at 3.4 kHz (measured about -8.8 dB) while "high" is not: the
        documented price of the cheaper filter."""
        levels: dict[ResampleQuality, float] = {}
        for quality in ("high", "fast"):
            r = new_resampler(16000, 8000, quality)
            y = samples_of(r.process(pcm(tone(3400, 16000, 1.0))))[400:]
            levels[quality] = 20 * np.log10(sine_amplitude(y, 8000, 3400) / (0.5 * FULL_SCALE))
        assert levels["fast"] <= -3.0
        assert levels["fast"] < levels["high"] - 3.0

    @pytest.mark.parametrize(("rate_in", "rate_out"), [(8000, 24000), (24000, 8000)])
    def test_fast_is_flat_to_3400_hz_at_ratio_3(self, rate_in: int, rate_out: int) -> None:
        """At a ratio of 3 (the polyphase filter) "fast" only shortens the filter: 3.4 kHz still
        comes through within 1 dB."""
        r = new_resampler(rate_in, rate_out, "fast")
        y = samples_of(r.process(pcm(tone(3400, rate_in, 1.0))))[1200:]
        assert abs(20 * np.log10(sine_amplitude(y, rate_out, 3400) / (0.5 * FULL_SCALE))) <= 1.0

    @pytest.mark.parametrize("quality", ["high", "fast"])
    def test_alias_rejection_of_5khz(self, quality: ResampleQuality) -> None:
        """A 5 kHz tone at 24 kHz would alias to 3 kHz at 8 kHz; it must come out >= 60 dB down
        (measured: below one LSB of a 0.99 FS input, i.e. > 90 dB, for both qualities)."""
        amplitude = 0.99 * FULL_SCALE
        r = new_resampler(24000, 8000, quality)
        y = samples_of(r.process(pcm(tone(5000, 24000, 1.0, amplitude=0.99))))[400:]
        residue = max(sine_amplitude(y, 8000, 3000), float(np.abs(y).max()), 1.0)
        assert 20 * np.log10(residue / amplitude) <= -60.0

    @pytest.mark.parametrize(("rate_in", "rate_out"), [(8000, 24000), (24000, 8000)])
    def test_no_gain_on_near_full_scale_sine(self, rate_in: int, rate_out: int) -> None:
        """A 0.99 FS in-band sine comes out no louder than it went in: the steady-state peak is
        within 0.1 % of the input peak (int16 /32768 and *32768 with no gain in between). The
        abrupt onset and the flushed tail may ring up to the rails; that is covered by the
        clipping tests, here they must merely not wrap."""
        x = tone(1000, rate_in, 0.5, amplitude=0.99)
        r = new_resampler(rate_in, rate_out)
        body = samples_of(r.process(pcm(x))).astype(np.int64)
        tail = samples_of(r.flush()).astype(np.int64)
        in_peak = int(np.abs(x).max())
        settle = rate_out // 100  # 10 ms
        steady_peak = int(np.abs(body[settle:]).max())
        assert in_peak * 0.999 <= steady_peak <= in_peak * 1.001
        # A wrapped sample would jump by ~65536 between neighbours; band-limited audio cannot.
        everything = np.concatenate([body, tail])
        assert np.abs(np.diff(everything)).max() < 40000

    @pytest.mark.parametrize("rate_in", [8000, 16000])
    def test_overshoot_clips_instead_of_wrapping(self, rate_in: int) -> None:
        """A full-scale square wave rings ~9 % past full scale after band-limiting; those samples
        must saturate at the int16 rails, never wrap to the opposite sign. The reference is the same
        filter unclipped: the polyphase taps by direct convolution (x3), libsamplerate (x1.5)."""
        period = 40
        square = np.where(np.arange(rate_in) % period < period // 2, 32767, -32768).astype("<i2")
        r = new_resampler(rate_in, 24000)
        y = samples_of(r.process(pcm(square)))[300:]
        if rate_in == 8000:
            reference = direct_upsample(square.astype(np.float64))[300:]
        else:
            reference = samplerate.resample(square.astype(np.float32) / 32768, 1.5, "sinc_medium")[300:]
            reference = reference * 32768
        reference = reference[: len(y)]
        assert reference.max() > 33000  # the test signal really does overshoot
        confident = np.abs(reference) > 8000
        assert np.array_equal(np.sign(y[confident]), np.sign(reference[confident]))
        assert np.all(y[reference > 32767.5] == 32767)
        assert np.all(y[reference < -32768.5] == -32768)

    def test_rejects_nonsense_configuration(self) -> None:
        """Zero/negative rates and unknown quality names fail fast at construction."""
        with pytest.raises(ValueError, match="positive"):
            new_resampler(0, 8000)
        with pytest.raises(ValueError, match="quality"):
            new_resampler(8000, 24000, "best")  # type: ignore[arg-type]


class TestCallerToModel:
    def _ulaw_tone(self, seconds: float = 2.0) -> bytes:
        return pcm16_to_ulaw(pcm(tone(1000, 8000, seconds)))

    def test_tone_in_20ms_frames_has_no_frame_edge_clicks(self) -> None:
        """A 1 kHz µ-law tone fed as 160-byte frames comes out at 24 kHz with everything other than
        the tone and µ-law's own harmonics >= 60 dB down (measured ~ -146 dB)."""
        ulaw = self._ulaw_tone()
        c = CallerToModel()
        out = samples_of(run_stream(c.convert, chunks(ulaw, repeat(ULAW_FRAME))))
        assert 3 * len(ulaw) - 480 < len(out) < 3 * len(ulaw)  # look-ahead still held back
        assert spurious_db(out[1200:], 24000) <= -60.0

    def test_stateless_per_frame_resampling_would_fail(self) -> None:
        """Control for the test above: re-creating the resampler for every frame (or one-shot
        resampling each frame) restarts the filter at every edge and fails the same threshold by
        a wide margin, so the threshold really detects frame-edge discontinuities."""
        ulaw = self._ulaw_tone()
        stateful = samples_of(run_stream(CallerToModel().convert, chunks(ulaw, repeat(ULAW_FRAME))))
        floats = samples_of(ulaw_to_pcm16(ulaw)).astype(np.float32) / 32768
        frames = [floats[i : i + ULAW_FRAME] for i in range(0, len(floats), ULAW_FRAME)]
        new_state_per_frame = np.concatenate(
            [samplerate.Resampler("sinc_medium", channels=1).process(f, 3.0) for f in frames]
        )
        one_shot_per_frame = np.concatenate([samplerate.resample(f, 3.0, "sinc_medium") for f in frames])
        good = spurious_db(stateful[1200:], 24000)
        for bad_output in (new_state_per_frame, one_shot_per_frame):
            bad = spurious_db(np.rint(bad_output * 32768)[1200:], 24000)
            assert bad > -60.0
            assert bad > good + 20.0

    def test_loud_ulaw_square_does_not_wrap(self) -> None:
        """µ-law's loudest square wave (+-32124) overshoots int16 after 3x upsampling; the output
        must clip, not wrap: no sample ever has the opposite sign of the square's plateau."""
        period = 40
        square = np.where(np.arange(8000) % period < period // 2, 32124, -32124)
        ulaw = pcm16_to_ulaw(pcm(square))
        out = samples_of(run_stream(CallerToModel().convert, chunks(ulaw, repeat(ULAW_FRAME))))
        expected_sign = np.where((np.arange(len(out)) // 3) % period < period // 2, 1, -1)
        # Judge only the middle of each plateau, away from the band-limited transitions.
        phase = (np.arange(len(out)) // 3) % (period // 2)
        plateau = (phase >= 4) & (phase < period // 2 - 4)
        assert np.all(np.sign(out[plateau]) == expected_sign[plateau])
        assert int(np.max(out)) == 32767  # it really did overshoot and saturate

    @pytest.mark.parametrize(("quality", "seconds"), [("high", 120), ("fast", 600)])
    def test_no_drift_over_a_long_call(self, quality: ResampleQuality, seconds: int) -> None:
        """After N seconds of 20 ms frames the output is N seconds at 24 kHz within one 20 ms
        frame (the filter look-ahead is the only shortfall; it never accumulates)."""
        c = CallerToModel(quality)
        frame = pcm16_to_ulaw(pcm(tone(1000, 8000, 0.02)))
        total = sum(len(c.convert(frame)) for _ in range(seconds * 50)) // 2
        assert abs(total - seconds * 24000) <= 480


class TestModelToCaller:
    def test_tone_in_ragged_chunks_is_clean(self) -> None:
        """A 24 kHz 1 kHz tone in 40-100 ms chunks with odd byte counts arrives as µ-law whose
        decoded spectrum is the tone plus µ-law harmonics only (>= 60 dB clean elsewhere)."""
        data = pcm(tone(1000, 24000, 3.0))
        m = ModelToCaller()
        ulaw = run_stream(m.convert, chunks(data, varying_sizes(seed=3, low=1920, high=4801))) + m.flush()
        assert len(ulaw) == len(data) // 6
        assert spurious_db(samples_of(ulaw_to_pcm16(ulaw))[400:], 8000) <= -60.0

    def test_stateless_variant_would_fail(self) -> None:
        """Control: resampling each chunk independently fails the same threshold, by >= 20 dB."""
        x = tone(1000, 24000, 3.0).astype(np.float32) / 32768
        sizes = varying_sizes(seed=3, low=960, high=2401)
        pieces: list[npt.NDArray[np.float32]] = []
        pos = 0
        while pos < len(x):
            size = next(sizes)
            pieces.append(samplerate.resample(x[pos : pos + size], 1 / 3, "sinc_medium"))
            pos += size
        stateless = pcm(np.clip(np.rint(np.concatenate(pieces) * 32768), -32768, 32767))
        decoded = samples_of(ulaw_to_pcm16(pcm16_to_ulaw(stateless)))
        assert spurious_db(decoded[400:], 8000) > -40.0

    def test_flush_emits_held_back_tail(self) -> None:
        """A tone that stops abruptly leaves ~39 samples (~5 ms) in the filter; flush returns them
        as µ-law carrying the tone itself, bringing the response to its exact length."""
        data = pcm(tone(1000, 24000, 0.5))
        m = ModelToCaller()
        body = m.convert(data)
        tail = m.flush()
        assert len(body) + len(tail) == 4000
        assert len(tail) >= 20
        decoded_tail = samples_of(ulaw_to_pcm16(tail)).astype(np.float64)
        assert np.sqrt(np.mean(decoded_tail[:20] ** 2)) > 0.25 * 0.5 * FULL_SCALE

    def test_next_utterance_after_flush_starts_clean(self) -> None:
        """After flush, the next response converts bit-identically to a brand-new converter: no
        leftover filter memory from the previous response bleeds into it."""
        used = ModelToCaller()
        used.convert(pcm(tone(700, 24000, 0.37)) + b"\x01")  # ends mid-sample, too
        used.flush()
        second = pcm(tone(1300, 24000, 0.5, amplitude=0.3))
        fresh = ModelToCaller()
        assert used.convert(second) + used.flush() == fresh.convert(second) + fresh.flush()

    def test_loud_square_saturates_without_wrapping(self) -> None:
        """A full-scale 24 kHz square downsampled to 8 kHz overshoots; decoded µ-law keeps the
        plateau's sign everywhere and never exceeds µ-law's own peak."""
        period = 120  # 200 Hz at 24 kHz
        square = np.where(np.arange(24000) % period < period // 2, 32767, -32768)
        m = ModelToCaller()
        decoded = samples_of(ulaw_to_pcm16(m.convert(pcm(square)) + m.flush()))
        phase = (np.arange(len(decoded)) * 3) % period
        plateau_high = (phase >= 12) & (phase < period // 2 - 12)
        plateau_low = (phase >= period // 2 + 12) & (phase < period - 12)
        assert np.all(decoded[plateau_high] > 0)
        assert np.all(decoded[plateau_low] < 0)
        assert np.abs(decoded).max() <= 32124

    @pytest.mark.parametrize(("quality", "seconds"), [("high", 120), ("fast", 600)])
    def test_no_drift_with_flush_per_response(self, quality: ResampleQuality, seconds: int) -> None:
        """N seconds delivered as 3 s responses in 40-100 ms chunks (odd sizes included), flushed
        after each response, yield exactly N seconds at 8 kHz; without the last flush the total
        is still within one 20 ms frame."""
        m = ModelToCaller(quality)
        response = pcm(tone(1000, 24000, 3.0))
        sizes = varying_sizes(seed=11, low=1920, high=4801)
        total = 0
        for _ in range(seconds // 3):
            body = len(run_stream(m.convert, chunks(response, sizes)))
            assert 3 * 8000 - 160 <= body <= 3 * 8000
            total += body + len(m.flush())
        assert total == seconds * 8000
