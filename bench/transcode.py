"""CPU cost of the per-call audio path, per second of audio, for each direction and audio mode.

Run from the repository root:

    python bench/transcode.py [--seconds 60]

Modes:
  pcm24k  full transcode: base64-decode the payload, convert (G.711 <-> PCM16, 8 <-> 24 kHz),
          base64-encode the result; measured for resampler quality "high" and "fast".
  g711    passthrough: the payload is only base64-decoded and re-encoded (an upper bound;
          a gateway that forwards the base64 text untouched pays even less).

Caller->model is fed as Twilio sends it, 20 ms (160-byte) µ-law frames. Model->caller is fed as
the Realtime API sends it, 40-100 ms PCM16 chunks, with a flush at the end of every simulated 3 s
response. Timing is CPU time (time.process_time), so the result does not depend on machine load.
"""

from __future__ import annotations

import argparse
import base64
import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.audio import CallerToModel, ModelToCaller, ResampleQuality, pcm16_to_ulaw

RESPONSE_SECONDS = 3
PCM24_BYTES_PER_MS = 48
ULAW_BYTES_PER_MS = 8
REPEATS = 3


def _tone_pcm16(rate_hz: int, seconds: float) -> bytes:
    # Speech-like content does not change sinc cost; a tone just keeps the codec paths honest.
    n = int(rate_hz * seconds)
    samples = (int(12000 * math.sin(2 * math.pi * 440 * i / rate_hz)) for i in range(n))
    return b"".join(s.to_bytes(2, "little", signed=True) for s in samples)


def _inbound_frames(seconds: int) -> list[str]:
    one_second = pcm16_to_ulaw(_tone_pcm16(8000, 1.0))
    frames = [base64.b64encode(one_second[i : i + 160]).decode() for i in range(0, len(one_second), 160)]
    return frames * seconds


def _outbound_responses(seconds: int, *, g711: bool) -> list[list[str]]:
    # In g711 mode the model itself speaks 8 kHz µ-law, so its chunks are 6x smaller.
    rng = random.Random(1)
    if g711:
        response, bytes_per_ms = pcm16_to_ulaw(_tone_pcm16(8000, RESPONSE_SECONDS)), ULAW_BYTES_PER_MS
    else:
        response, bytes_per_ms = _tone_pcm16(24000, RESPONSE_SECONDS), PCM24_BYTES_PER_MS
    chunks: list[str] = []
    pos = 0
    while pos < len(response):
        size = rng.randint(40, 100) * bytes_per_ms
        chunks.append(base64.b64encode(response[pos : pos + size]).decode())
        pos += size
    return [chunks] * max(1, seconds // RESPONSE_SECONDS)


def _cpu_us_per_audio_second(run: Callable[[], float]) -> float:
    # Best of a few runs: the minimum is the cost of the code, the rest is interference.
    best = math.inf
    for _ in range(REPEATS):
        start = time.process_time()
        audio_seconds = run()
        best = min(best, (time.process_time() - start) * 1e6 / audio_seconds)
    return best


def bench_inbound(frames: list[str], quality: ResampleQuality | None) -> float:
    def run() -> float:
        if quality is None:
            for frame in frames:
                base64.b64encode(base64.b64decode(frame))
        else:
            conv = CallerToModel(quality)
            for frame in frames:
                base64.b64encode(conv.convert(base64.b64decode(frame)))
        return len(frames) * 0.02

    return _cpu_us_per_audio_second(run)


def bench_outbound(responses: list[list[str]], quality: ResampleQuality | None) -> float:
    def run() -> float:
        if quality is None:
            for chunks in responses:
                for chunk in chunks:
                    base64.b64encode(base64.b64decode(chunk))
        else:
            conv = ModelToCaller(quality)
            for chunks in responses:
                for chunk in chunks:
                    base64.b64encode(conv.convert(base64.b64decode(chunk)))
                base64.b64encode(conv.flush())
        return len(responses) * RESPONSE_SECONDS

    return _cpu_us_per_audio_second(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--seconds", type=int, default=60, help="seconds of audio per direction (default 60)")
    args = parser.parse_args()
    seconds = max(RESPONSE_SECONDS, args.seconds)

    frames = _inbound_frames(seconds)
    pcm_responses = _outbound_responses(seconds, g711=False)
    ulaw_responses = _outbound_responses(seconds, g711=True)

    configs: list[tuple[str, str, ResampleQuality | None]] = [
        ("pcm24k", "high", "high"),
        ("pcm24k", "fast", "fast"),
        ("g711", "passthrough", None),
    ]
    rows = [
        (
            mode,
            label,
            bench_inbound(frames, quality),
            bench_outbound(ulaw_responses if quality is None else pcm_responses, quality),
        )
        for mode, label, quality in configs
    ]

    print(
        f"CPU per second of audio (best of {REPEATS}), {seconds} s per direction, "
        f"Python {sys.version.split()[0]}"
    )
    print("caller->model: 20 ms frames; model->caller: 40-100 ms chunks, flush per 3 s response")
    header = f"{'mode':<8} {'quality':<12} {'caller->model':>15} {'model->caller':>15} {'calls/core':>11}"
    print(header)
    print("-" * len(header))
    for mode, label, in_us, out_us in rows:
        calls = 1e6 / (in_us + out_us)
        print(f"{mode:<8} {label:<12} {in_us:>12.0f} us {out_us:>12.0f} us {calls:>11.0f}")


if __name__ == "__main__":
    main()
