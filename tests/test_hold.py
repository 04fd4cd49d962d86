"""Tests for gateway.hold: WAV hold clips converted once to 8 kHz G.711, and sliced in a loop.

Pinned: any common integer-PCM WAV (8/16/24/32-bit, mono/stereo, 8-48 kHz) comes out at exactly
its own length at 8 kHz with its content intact (a tone stays at its frequency and level), and every
file that cannot be played is a ConfigError that names the file.
"""

from __future__ import annotations

import math
import struct
import sys
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from gateway.audio import ALAW_8K, PCM_24K, ULAW_8K, AudioFormat, alaw_to_pcm16, ulaw_to_pcm16
from gateway.errors import ConfigError
from gateway.hold import MAX_HOLD_CLIP_S, HoldClip, load_hold_clip, loop_slice

RATES_HZ = [8000, 16000, 44100, 48000]


def encode(samples: npt.NDArray[np.float64], width: int) -> bytes:
    """Float samples in [-1, 1) as little-endian WAV integer PCM of `width` bytes (8-bit unsigned)."""
    if width == 1:
        return np.clip(np.rint(samples * 128 + 128), 0, 255).astype(np.uint8).tobytes()
    if width == 2:
        return np.clip(np.rint(samples * 32768), -32768, 32767).astype("<i2").tobytes()
    full = np.clip(np.rint(samples * 2**31), -(2**31), 2**31 - 1).astype("<i4")
    if width == 4:
        return full.tobytes()
    # 24-bit: the top three bytes of each little-endian int32.
    return full.view(np.uint8).reshape(-1, 4)[:, 1:].tobytes()


def tone(freq_hz: float, rate_hz: int, duration_ms: int, amplitude: float = 0.5) -> npt.NDArray[np.float64]:
    n = rate_hz * duration_ms // 1000
    return amplitude * np.sin(2 * np.pi * freq_hz * np.arange(n) / rate_hz)


def write_wav(path: Path, channels_data: list[npt.NDArray[np.float64]], rate_hz: int, width: int = 2) -> Path:
    """A WAV written by the stdlib writer, one array per channel (interleaved here)."""
    interleaved = np.stack(channels_data, axis=1).reshape(-1)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(len(channels_data))
        wav.setsampwidth(width)
        wav.setframerate(rate_hz)
        wav.writeframes(encode(interleaved, width))
    return path


def raw_wav(path: Path, format_tag: int, width_bits: int, data: bytes, rate_hz: int = 8000) -> Path:
    """A hand-built RIFF/WAVE file, for encodings the stdlib writer refuses to produce."""
    block_align = width_bits // 8
    fmt = struct.pack("<HHIIHH", format_tag, 1, rate_hz, rate_hz * block_align, block_align, width_bits)
    body = (
        b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    )
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def peak_hz(pcm16: bytes, rate_hz: int = 8000) -> float:
    samples = np.frombuffer(pcm16, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.argmax(spectrum)) * rate_hz / samples.size


def rms(pcm16: bytes) -> float:
    samples = np.frombuffer(pcm16, dtype="<i2").astype(np.float64) / 32768
    return float(np.sqrt(np.mean(samples**2)))


def assert_config_error(path: Path, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_hold_clip(path)
    [problem] = caught.value.problems
    assert problem.startswith(f"{path}: ")
    assert fragment in problem


class TestConversion:
    @pytest.mark.parametrize("rate_hz", RATES_HZ)
    @pytest.mark.parametrize("channels", [1, 2])
    @pytest.mark.parametrize("width", [1, 2, 3])
    def test_length_is_exact(self, tmp_path: Path, rate_hz: int, channels: int, width: int) -> None:
        """Whatever the source layout, the clip lasts exactly as long at 8 kHz: 8 bytes per ms."""
        data = [tone(440, rate_hz, 1250)] * channels
        clip = load_hold_clip(write_wav(tmp_path / "hold.wav", data, rate_hz, width))
        assert clip.duration_ms == 1250
        assert abs(len(clip.ulaw) - clip.duration_ms * 8) <= 1
        assert len(clip.alaw) == len(clip.ulaw)

    @pytest.mark.parametrize("rate_hz", [*RATES_HZ, 11025, 22050, 32000])
    def test_odd_lengths_round_to_the_nearest_sample(self, tmp_path: Path, rate_hz: int) -> None:
        """A length that is not a whole number of 8 kHz samples rounds to the nearest one."""
        nframes = 12347
        path = write_wav(tmp_path / "hold.wav", [np.zeros(nframes)], rate_hz)
        clip = load_hold_clip(path)
        assert len(clip.ulaw) == math.floor(nframes * 8000 / rate_hz + 0.5)
        assert clip.duration_ms == round(nframes * 1000 / rate_hz)

    @pytest.mark.parametrize("rate_hz", RATES_HZ)
    @pytest.mark.parametrize("width", [1, 2, 3, 4])
    def test_1khz_tone_survives(self, tmp_path: Path, rate_hz: int, width: int) -> None:
        """A 1 kHz tone at -6 dBFS is still a 1 kHz tone at the same level after resampling and µ-law."""
        clip = load_hold_clip(write_wav(tmp_path / "hold.wav", [tone(1000, rate_hz, 1000)], rate_hz, width))
        pcm = ulaw_to_pcm16(clip.ulaw)
        assert peak_hz(pcm) == pytest.approx(1000, abs=2)
        assert rms(pcm[800:-800]) == pytest.approx(0.5 / math.sqrt(2), rel=0.05)

    def test_both_laws_carry_the_same_audio(self, tmp_path: Path) -> None:
        """µ-law and A-law are encodings of the same 8 kHz signal, not two different conversions."""
        clip = load_hold_clip(write_wav(tmp_path / "hold.wav", [tone(1000, 44100, 500)], 44100))
        ulaw = np.frombuffer(ulaw_to_pcm16(clip.ulaw), dtype="<i2").astype(np.float64)
        alaw = np.frombuffer(alaw_to_pcm16(clip.alaw), dtype="<i2").astype(np.float64)
        assert clip.ulaw != clip.alaw
        assert peak_hz(alaw_to_pcm16(clip.alaw)) == pytest.approx(1000, abs=4)
        # Both are within their quantisation step of each other: a few percent of a -6 dBFS sine.
        assert np.max(np.abs(ulaw - alaw)) < 0.04 * 32768

    def test_stereo_is_averaged(self, tmp_path: Path) -> None:
        """Stereo downmixes by averaging: opposite-phase channels cancel, a one-sided tone halves."""
        left = tone(1000, 16000, 500, amplitude=0.8)
        cancelled = load_hold_clip(write_wav(tmp_path / "a.wav", [left, -left], 16000))
        assert rms(ulaw_to_pcm16(cancelled.ulaw)) < 0.001
        one_sided = load_hold_clip(write_wav(tmp_path / "b.wav", [left, np.zeros_like(left)], 16000))
        assert rms(ulaw_to_pcm16(one_sided.ulaw)[800:-800]) == pytest.approx(0.4 / math.sqrt(2), rel=0.05)

    @pytest.mark.parametrize("width", [1, 2, 3, 4])
    def test_sign_and_offset_per_width(self, tmp_path: Path, width: int) -> None:
        """Each width decodes with the right sign and zero point (8-bit is unsigned, centred at 128)."""
        level = np.full(800, 0.25)
        positive = load_hold_clip(write_wav(tmp_path / "p.wav", [level], 8000, width))
        negative = load_hold_clip(write_wav(tmp_path / "n.wav", [-level], 8000, width))
        silent = load_hold_clip(write_wav(tmp_path / "z.wav", [np.zeros(800)], 8000, width))
        assert np.frombuffer(ulaw_to_pcm16(positive.ulaw), dtype="<i2").mean() == pytest.approx(
            8192, rel=0.03
        )
        assert np.frombuffer(ulaw_to_pcm16(negative.ulaw), dtype="<i2").mean() == pytest.approx(
            -8192, rel=0.03
        )
        assert np.abs(np.frombuffer(ulaw_to_pcm16(silent.ulaw), dtype="<i2")).max() <= 8

    def test_8khz_16bit_mono_is_plain_encoding(self, tmp_path: Path) -> None:
        """A clip already at 8 kHz is not resampled: the µ-law bytes are a direct encoding of it."""
        samples = tone(1000, 8000, 100)
        clip = load_hold_clip(write_wav(tmp_path / "hold.wav", [samples], 8000))
        decoded = np.frombuffer(ulaw_to_pcm16(clip.ulaw), dtype="<i2").astype(np.float64) / 32768
        assert np.max(np.abs(decoded - samples)) < 0.02

    @pytest.mark.skipif(sys.version_info < (3, 12), reason="wave reads WAVE_FORMAT_EXTENSIBLE from 3.12")
    def test_extensible_pcm_header(self, tmp_path: Path) -> None:
        """WAVE_FORMAT_EXTENSIBLE with a PCM sub-format (what many editors write for 24-bit) loads."""
        samples = tone(1000, 48000, 200)
        data = encode(samples, 3)
        guid = struct.pack("<IHH", 1, 0, 0x10) + bytes([0x80, 0, 0, 0xAA, 0, 0x38, 0x9B, 0x71])
        fmt = struct.pack("<HHIIHHHHI", 0xFFFE, 1, 48000, 48000 * 3, 3, 24, 22, 24, 4) + guid
        body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
        body += b"data" + struct.pack("<I", len(data)) + data
        path = tmp_path / "ext.wav"
        path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
        clip = load_hold_clip(path)
        assert clip.duration_ms == 200
        assert peak_hz(ulaw_to_pcm16(clip.ulaw)) == pytest.approx(1000, abs=5)

    def test_five_minutes_is_allowed(self, tmp_path: Path) -> None:
        """Exactly the limit is accepted."""
        path = write_wav(tmp_path / "hold.wav", [np.zeros(MAX_HOLD_CLIP_S * 8000)], 8000, 1)
        assert load_hold_clip(path).duration_ms == MAX_HOLD_CLIP_S * 1000

    def test_str_path_accepted(self, tmp_path: Path) -> None:
        """The path may be a str (as it comes from YAML) or a Path."""
        path = write_wav(tmp_path / "hold.wav", [tone(1000, 8000, 100)], 8000)
        assert load_hold_clip(str(path)) == load_hold_clip(path)


class TestForFormat:
    def test_each_law(self) -> None:
        """ULAW_8K gets the µ-law bytes and ALAW_8K the A-law bytes."""
        clip = HoldClip(ulaw=b"u" * 8, alaw=b"a" * 8, duration_ms=1)
        assert clip.for_format(ULAW_8K) == b"u" * 8
        assert clip.for_format(ALAW_8K) == b"a" * 8
        assert clip.for_format(AudioFormat("ulaw", 8000)) == b"u" * 8

    @pytest.mark.parametrize("fmt", [PCM_24K, AudioFormat("ulaw", 16000), AudioFormat("pcm16", 8000)])
    def test_other_formats_refused(self, fmt: AudioFormat) -> None:
        """Any other carrier format is a programming error, not silently the wrong bytes."""
        with pytest.raises(ValueError, match=r"8 kHz G\.711"):
            HoldClip(ulaw=b"u", alaw=b"a", duration_ms=0).for_format(fmt)

    def test_repr_omits_audio(self) -> None:
        """The repr (logs, test failures) shows the duration, not megabytes of audio."""
        assert repr(HoldClip(ulaw=b"\x00" * 10_000, alaw=b"\x00" * 10_000, duration_ms=1250)) == (
            "HoldClip(duration_ms=1250)"
        )


class TestLoopSlice:
    CLIP = bytes(range(10))

    def test_within_the_clip(self) -> None:
        """A slice that fits is the next bytes, and the offset moves past them."""
        assert loop_slice(self.CLIP, 2, 3) == (bytes([2, 3, 4]), 5)

    def test_ending_exactly_at_the_end_wraps_offset(self) -> None:
        """Reaching the end exactly returns offset 0, never len(clip)."""
        assert loop_slice(self.CLIP, 6, 4) == (bytes([6, 7, 8, 9]), 0)

    def test_wraps_around(self) -> None:
        """A slice crossing the end continues from the start."""
        assert loop_slice(self.CLIP, 8, 5) == (bytes([8, 9, 0, 1, 2]), 3)

    def test_longer_than_the_clip(self) -> None:
        """A slice longer than the clip repeats it as often as needed."""
        data, offset = loop_slice(self.CLIP, 7, 25)
        assert data == bytes([7, 8, 9, *range(10), *range(10), 0, 1])
        assert offset == 2

    def test_out_of_range_offset_is_taken_modulo(self) -> None:
        """An offset past the end (e.g. kept across a clip change) is reduced modulo the length."""
        assert loop_slice(self.CLIP, 23, 2) == (bytes([3, 4]), 5)

    def test_zero_bytes(self) -> None:
        """Asking for nothing returns nothing and keeps the position."""
        assert loop_slice(self.CLIP, 4, 0) == (b"", 4)

    def test_consecutive_slices_replay_the_loop(self) -> None:
        """Chaining the returned offsets plays the clip seamlessly, whatever the frame size."""
        clip = bytes(range(256)) * 3 + b"\x01\x02\x03"  # 771 bytes: no frame size divides it
        offset, played = 0, b""
        for _ in range(50):
            chunk, offset = loop_slice(clip, offset, 160)
            assert len(chunk) == 160
            played += chunk
        assert played == (clip * 11)[: 50 * 160]
        assert offset == 50 * 160 % len(clip)

    def test_errors(self) -> None:
        """An empty clip or a negative length is refused."""
        with pytest.raises(ValueError, match="empty"):
            loop_slice(b"", 0, 10)
        with pytest.raises(ValueError, match="negative"):
            loop_slice(self.CLIP, 0, -1)


class TestErrors:
    def test_missing_file(self, tmp_path: Path) -> None:
        """A path that does not exist."""
        assert_config_error(tmp_path / "nope.wav", "cannot read")

    def test_directory(self, tmp_path: Path) -> None:
        """A directory is not a clip."""
        assert_config_error(tmp_path, "cannot read")

    def test_not_a_wav(self, tmp_path: Path) -> None:
        """An MP3 (or anything without a RIFF/WAVE header) is refused as not WAV."""
        path = tmp_path / "hold.mp3"
        path.write_bytes(b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb" * 500)
        assert_config_error(path, "not a WAV file")

    def test_empty_file(self, tmp_path: Path) -> None:
        """A zero-byte file is not WAV."""
        path = tmp_path / "hold.wav"
        path.write_bytes(b"")
        assert_config_error(path, "not a WAV file")

    def test_truncated_header(self, tmp_path: Path) -> None:
        """A file cut off inside its header is not WAV."""
        path = raw_wav(tmp_path / "hold.wav", 1, 16, b"\x00" * 100)
        path.write_bytes(path.read_bytes()[:30])
        assert_config_error(path, "not a WAV file")

    @pytest.mark.parametrize(("tag", "bits"), [(3, 32), (3, 64), (6, 8), (7, 8), (2, 4), (0x55, 16)])
    def test_float_and_compressed(self, tmp_path: Path, tag: int, bits: int) -> None:
        """IEEE float, A-law/µ-law, ADPCM and MP3-in-WAV are refused with a hint to re-export."""
        path = raw_wav(tmp_path / "hold.wav", tag, bits, b"\x00" * 800)
        assert_config_error(path, "re-export the clip as 16-bit PCM")

    def test_wav_without_samples(self, tmp_path: Path) -> None:
        """A valid WAV with no audio."""
        assert_config_error(write_wav(tmp_path / "hold.wav", [np.zeros(0)], 16000), "clip is empty")

    def test_too_short_to_become_one_sample(self, tmp_path: Path) -> None:
        """Two frames at 48 kHz round to zero samples at 8 kHz: nothing to loop."""
        assert_config_error(write_wav(tmp_path / "hold.wav", [np.zeros(2)], 48000), "too short")

    def test_longer_than_five_minutes(self, tmp_path: Path) -> None:
        """One frame beyond five minutes is refused, from the header, with the limit in the message."""
        path = write_wav(tmp_path / "hold.wav", [np.zeros(MAX_HOLD_CLIP_S * 8000 + 1)], 8000, 1)
        assert_config_error(path, "limited to 300 s")

    @pytest.mark.parametrize("rate_hz", [4000, 7999, 48001, 96000])
    def test_rate_out_of_range(self, tmp_path: Path, rate_hz: int) -> None:
        """Rates outside 8-48 kHz are refused."""
        path = write_wav(tmp_path / "hold.wav", [np.zeros(rate_hz // 10)], rate_hz)
        assert_config_error(path, f"sample rate {rate_hz} Hz")

    def test_more_than_two_channels(self, tmp_path: Path) -> None:
        """Surround files are refused rather than guessed at."""
        path = write_wav(tmp_path / "hold.wav", [np.zeros(800)] * 3, 8000)
        assert_config_error(path, "mono or stereo")
