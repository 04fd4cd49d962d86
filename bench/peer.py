"""Transcoding side by side: getpatter 0.7.0's Twilio <-> OpenAI GA conversion and ours, in one run.

Run from the repository root, in the project's venv (it needs numpy and the gateway package):

    python bench/peer.py [--seconds 60] [--repeats 3]

The first run creates bench/.peer-venv (gitignored) and installs getpatter==0.7.0 into it with pip;
later runs reuse it. getpatter's methods run there, in bench/peer_worker.py (whose docstring names
them); ours (gateway.audio.Converter) run here. Both get the same bytes in the same chunks:
  caller -> model   µ-law 8 kHz in 20 ms (160-byte) frames -> PCM16 24 kHz
  model -> caller   base64 PCM16 24 kHz deltas of 40-100 ms -> µ-law 8 kHz (ours flushed at the end
                    of every 3 s response, as the bridge does; getpatter's adapter has no such step)
The input is --seconds of a voice-like signal peaking at -1 dBFS. CPU is time.process_time() of the
conversion loop only, best of --repeats, per second of audio.

Quality, measured on each implementation's own output:
  gain      level of a 1 kHz tone out vs in (dB); ripple is the worst deviation from that gain over
            tones from 100 Hz to 3.4 kHz (the telephone band)
  images    caller -> model: the strongest component above 4.2 kHz in the 24 kHz output, relative
            to the in-band tone that caused it (dB, worst over the band's tones)
  aliases   model -> caller: tones at 4.5-10 kHz in the 24 kHz input, level of what folds into the
            8 kHz output relative to the input tone (dB, worst)
  clipped   output samples at full scale (PCM16 +-32767/-32768, µ-law's largest code) for the loud input
  lag/drift output duration vs input duration: at the end of the run (ms; a constant look-ahead is
            fine), and its trend over the second half (ms per minute; anything but ~0 is drift)
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from audiosignals import speech_like, ulaw_encode

from gateway.audio import PCM_24K, ULAW_8K, Converter, ResampleQuality, ulaw_to_pcm16

BENCH = Path(__file__).resolve().parent

PEER = "getpatter==0.7.0"
PEER_VENV = BENCH / ".peer-venv"
PASS_HZ = (100, 300, 500, 1000, 2000, 3000, 3400)
ALIAS_HZ = (4500, 5000, 6000, 7000, 10000)
LOUD_PEAK = 29205  # -1 dBFS
TONE_AMPLITUDE = 16384  # -6 dBFS
RESPONSE_S = 3.0
Samples = npt.NDArray[np.float64]


def ensure_peer_venv() -> Path:
    """bench/.peer-venv with getpatter==0.7.0, created on first use; exits with pip's own words on failure."""
    python = PEER_VENV / "bin" / "python"
    check = [str(python), "-c", "import importlib.metadata as m; print(m.version('getpatter'))"]
    if python.exists():
        found = subprocess.run(check, capture_output=True, text=True, check=False)  # noqa: S603
        if found.returncode == 0 and found.stdout.strip() == PEER.split("==")[1]:
            return python
    print(f"creating {PEER_VENV} and installing {PEER} (one time) ...", file=sys.stderr, flush=True)
    base = getattr(sys, "_base_executable", sys.executable)
    steps = [
        [base, "-m", "venv", "--clear", str(PEER_VENV)],
        [str(python), "-m", "pip", "install", "-q", PEER],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, check=False)  # noqa: S603
        if done.returncode != 0:
            noise = "WARNING: Location"
            output = "\n".join(line for line in (done.stdout + done.stderr).splitlines() if noise not in line)
            sys.exit(
                f"could not set up the peer: `{' '.join(step)}` exited {done.returncode}:\n{output[-3000:]}"
            )
    return python


def tone(rate_hz: int, hz: float, seconds: float = 1.0) -> npt.NDArray[np.int16]:
    t = np.arange(int(rate_hz * seconds)) / rate_hz
    return np.asarray(np.rint(TONE_AMPLITUDE * np.sin(2 * math.pi * hz * t)), dtype="<i2")


def delta_sizes(total_bytes: int, rng: random.Random) -> list[int]:
    sizes: list[int] = []
    while (left := total_bytes - sum(sizes)) > 0:
        sizes.append(min(left, rng.randint(40, 100) * 48))
    return sizes


def make_jobs(tmp: Path, seconds: int, repeats: int) -> list[dict[str, Any]]:
    """Every input both implementations convert: the timed loud runs, then the tone probes."""
    rng = random.Random(1)
    jobs: list[dict[str, Any]] = []

    def add(name: str, direction: str, data: bytes, timed: bool) -> None:
        path = tmp / f"{name}.in"
        path.write_bytes(data)
        chunks = [160] * (len(data) // 160) if direction == "in" else delta_sizes(len(data), rng)
        jobs.append(
            {
                "name": name,
                "direction": direction,
                "input": str(path),
                "chunks": chunks,
                "repeats": repeats if timed else 1,
            }
        )

    add("in_loud", "in", ulaw_encode(speech_like(8000, seconds, LOUD_PEAK).tobytes()), True)
    add("out_loud", "out", speech_like(24000, seconds, LOUD_PEAK).tobytes(), True)
    for hz in PASS_HZ:
        add(f"in_{hz}", "in", ulaw_encode(tone(8000, hz).tobytes()), False)
        add(f"out_{hz}", "out", tone(24000, hz).tobytes(), False)
    for hz in ALIAS_HZ:
        add(f"out_{hz}", "out", tone(24000, hz).tobytes(), False)
    return jobs


def run_ours(job: dict[str, Any], quality: ResampleQuality) -> tuple[float, list[int], bytes]:
    """Our side of one job, shaped like peer_worker.run_job; flushes at each 3 s response end."""
    data = Path(job["input"]).read_bytes()
    chunks, pos = [], 0
    for size in job["chunks"]:
        chunks.append(data[pos : pos + size])
        pos += size
    best, lengths, out = math.inf, [], b""
    for _ in range(job["repeats"]):
        lengths, pieces = [], []
        if job["direction"] == "in":
            conv = Converter(ULAW_8K, PCM_24K, quality)
            start = time.process_time()
            for chunk in chunks:
                piece = conv.convert(chunk)
                pieces.append(piece)
                lengths.append(len(piece))
        else:
            conv = Converter(PCM_24K, ULAW_8K, quality)
            deltas = [base64.b64encode(chunk).decode("ascii") for chunk in chunks]
            ends = set(response_ends(job["chunks"], int(RESPONSE_S * 48000)))
            start = time.process_time()
            for i, delta in enumerate(deltas):
                piece = conv.convert(base64.b64decode(delta))
                if i in ends:
                    piece += conv.flush()
                pieces.append(piece)
                lengths.append(len(piece))
        best = min(best, time.process_time() - start)
        out = b"".join(pieces)
    return best, lengths, out


def run_peer(
    python: Path, jobs: list[dict[str, Any]], tmp: Path
) -> dict[str, tuple[float, list[int], bytes]]:
    for job in jobs:
        job["output"] = str(tmp / f"{job['name']}.peer")
    (tmp / "jobs.json").write_text(json.dumps(jobs))
    done = subprocess.run(  # noqa: S603 - the peer venv's interpreter and our worker script
        [str(python), str(BENCH / "peer_worker.py"), str(tmp / "jobs.json"), str(tmp / "results.json")],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    if done.returncode != 0:
        sys.exit(f"peer worker failed ({done.returncode}):\n{done.stderr[-3000:]}")
    results = json.loads((tmp / "results.json").read_text())
    return {
        job["name"]: (
            results[job["name"]]["cpu_s"],
            results[job["name"]]["lengths"],
            Path(job["output"]).read_bytes(),
        )
        for job in jobs
    }


def as_samples(data: bytes, direction: str) -> Samples:
    """Output as float samples: PCM16 at 24 kHz (caller -> model) or decoded µ-law at 8 kHz."""
    pcm = data if direction == "in" else ulaw_to_pcm16(data)
    return np.frombuffer(pcm[: len(pcm) & ~1], dtype="<i2").astype(np.float64)


def steady(x: Samples) -> Samples:
    """The middle 80 %: no start-up transient, no tail."""
    return x[len(x) // 10 : len(x) - len(x) // 10]


def spectrum(x: Samples, rate_hz: int) -> tuple[Samples, Samples]:
    """Amplitude spectrum (a sine of amplitude A reads about A at its bin) of the steady part of `x`."""
    seg = steady(x)
    window = np.hanning(seg.size)
    amp = 2 * np.abs(np.fft.rfft(seg * window)) / window.sum()
    return np.fft.rfftfreq(seg.size, 1 / rate_hz), amp


def level_at(x: Samples, rate_hz: int, hz: float) -> float:
    """Amplitude of the `hz` component of `x`, evaluated at exactly `hz` (no FFT-bin scalloping)."""
    seg = steady(x)
    window = np.hanning(seg.size)
    phase = np.exp(-2j * np.pi * hz * np.arange(seg.size) / rate_hz)
    return float(2 * np.abs(np.sum(seg * window * phase)) / window.sum())


def db(ratio: float) -> float:
    """Decibels, floored at -120 dB (an output of digital silence reads as the floor)."""
    return 20 * math.log10(max(ratio, 1e-6))


def input_level(job: dict[str, Any], hz: float) -> float:
    """The reference level of a tone, after G.711 quantisation on the µ-law side of the conversion:
    for a tone whose period is a whole number of samples the quantisation error is periodic too, and
    moves the measured level by up to a dB either way."""
    if job["direction"] == "out":
        # What a perfect converter would put out: the tone at 8 kHz, through µ-law like the real output.
        pcm = ulaw_to_pcm16(ulaw_encode(tone(8000, hz).tobytes()))
    else:
        pcm = ulaw_to_pcm16(Path(job["input"]).read_bytes())
    return level_at(np.frombuffer(pcm, dtype="<i2").astype(np.float64), 8000, hz)


def quality(
    outputs: dict[str, tuple[float, list[int], bytes]], jobs: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for direction, rate_out, ratio in (("in", 24000, 3.0), ("out", 8000, 1 / 3)):
        gains = {}
        worst_image = -math.inf
        for hz in PASS_HZ:
            out = as_samples(outputs[f"{direction}_{hz}"][2], direction)
            level = level_at(out, rate_out, hz)
            gains[hz] = db(level / input_level(jobs[f"{direction}_{hz}"], hz))
            if direction == "in":
                freqs, amp = spectrum(out, rate_out)
                worst_image = max(worst_image, db(float(amp[freqs >= 4200].max()) / level))
        ripple = max(abs(g - gains[1000]) for g in gains.values())
        entry: dict[str, Any] = {
            "gain_1k_db": round(gains[1000], 2),
            "ripple_db": round(ripple, 2),
            "gains_db": {str(k): round(v, 2) for k, v in gains.items()},
        }
        if direction == "in":
            entry["images_db"] = round(worst_image, 1)
        else:
            worst_alias = -math.inf
            for hz in ALIAS_HZ:
                folded = abs(hz - 8000 * round(hz / 8000))
                out = as_samples(outputs[f"out_{hz}"][2], "out")
                worst_alias = max(worst_alias, db(level_at(out, 8000, folded) / TONE_AMPLITUDE))
            entry["aliases_db"] = round(worst_alias, 1)
        loud = as_samples(outputs[f"{direction}_loud"][2], direction)
        rail = 32767 if direction == "in" else 32124
        entry["clipped"] = int(np.count_nonzero(np.abs(loud) >= rail))
        entry.update(
            lag_and_drift(
                outputs[f"{direction}_loud"][1],
                jobs[f"{direction}_loud"]["chunks"],
                ratio,
                2 if direction == "in" else 1,
                rate_out,
            )
        )
        figures["caller_to_model" if direction == "in" else "model_to_caller"] = entry
    return figures


def lag_and_drift(
    out_lengths: list[int], in_sizes: list[int], ratio: float, out_width: int, rate_out: int
) -> dict[str, float]:
    in_width = 1 if ratio > 1 else 2  # µ-law in for caller -> model, PCM16 in for model -> caller
    expected = np.cumsum(in_sizes) / in_width * ratio
    produced = np.cumsum(out_lengths) / out_width
    lag_ms = (expected - produced) / rate_out * 1000
    # Sampled where our model -> caller converter is flushed (the end of each 3 s response), so the
    # saw-tooth of look-ahead building up and being released does not read as drift; a real drift
    # (output rate off by some ppm) still grows from one sample point to the next.
    at = response_ends(in_sizes, int(RESPONSE_S * 1000 * rate_out / ratio * in_width / 1000))
    minutes = np.cumsum(in_sizes)[at] / in_width / (rate_out / ratio) / 60
    drift = float(np.polyfit(minutes, lag_ms[at], 1)[0]) if len(at) > 2 else 0.0
    return {"lag_end_ms": round(float(lag_ms[-1]), 2), "drift_ms_per_min": round(drift, 3)}


def response_ends(chunk_sizes: list[int], response_bytes: int) -> list[int]:
    """Indices of the chunks that end a response: once `response_bytes` have gone by, and the last."""
    ends, since = [], 0
    for i, size in enumerate(chunk_sizes):
        since += size
        if since >= response_bytes or i == len(chunk_sizes) - 1:
            ends.append(i)
            since = 0
    return ends


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=60, help="seconds of audio per direction (default 60)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per implementation, best kept")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "peer.json")
    args = parser.parse_args()
    python = ensure_peer_venv()
    seconds = max(6, args.seconds)
    result: dict[str, Any] = {"seconds": seconds, "repeats": args.repeats, "python": sys.version.split()[0]}
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as tmp_name:
        tmp = Path(tmp_name)
        jobs = make_jobs(tmp, seconds, args.repeats)
        by_name = {job["name"]: job for job in jobs}
        print(f"converting {seconds} s per direction with {PEER} and with ours ...", file=sys.stderr)
        impls: dict[str, dict[str, tuple[float, list[int], bytes]]] = {
            PEER.replace("==", " "): run_peer(python, jobs, tmp)
        }
        qualities: tuple[ResampleQuality, ...] = ("high", "fast")
        for q in qualities:
            impls[f"ours ({q})"] = {job["name"]: run_ours(job, q) for job in jobs}
        for name, outputs in impls.items():
            result[name] = {
                "cpu_us_per_audio_s": {
                    "caller_to_model": round(outputs["in_loud"][0] / seconds * 1e6, 1),
                    "model_to_caller": round(outputs["out_loud"][0] / seconds * 1e6, 1),
                },
                "quality": quality(outputs, by_name),
            }
    peer_name, ours = PEER.replace("==", " "), "ours (high)"

    def both(name: str) -> float:
        cpu = result[name]["cpu_us_per_audio_s"]
        return float(cpu["caller_to_model"] + cpu["model_to_caller"])

    for name in impls:
        result[name]["cpu_us_per_audio_s"]["both"] = round(both(name), 1)
    result["ratio_peer_over_ours_high"] = {
        d: round(result[peer_name]["cpu_us_per_audio_s"][d] / result[ours]["cpu_us_per_audio_s"][d], 1)
        for d in ("caller_to_model", "model_to_caller", "both")
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result, list(impls))
    print(f"result: {args.out}")


def print_table(result: dict[str, Any], names: list[str]) -> None:
    seconds = result["seconds"]
    print(
        f"CPU per second of audio (best of {result['repeats']}), {seconds} s per direction, "
        f"Python {result['python']}"
    )
    print(f"{'':<18} {'caller->model':>14} {'model->caller':>14} {'both':>14}")
    for name in names:
        cpu = result[name]["cpu_us_per_audio_s"]
        print(
            f"{name:<18} "
            + " ".join(f"{cpu[d]:>11.0f} us" for d in ("caller_to_model", "model_to_caller", "both"))
        )
    ratio = result["ratio_peer_over_ours_high"]
    cells = " ".join(f"{ratio[d]:>13.1f}x" for d in ("caller_to_model", "model_to_caller", "both"))
    print(f"{'peer/ours (high)':<18} {cells}")
    print()
    print("quality (target: ripple <= 1 dB to 3.4 kHz, images/aliases <= -70 dB, 0 clipped, no drift)")
    header = (
        f"{'':<18} {'dir':<4} {'gain@1k':>8} {'ripple':>7} {'img/alias':>10} {'clipped':>8} "
        f"{'lag end':>8} {'drift':>11}"
    )
    print(header)
    for name in names:
        for label, key, spur in (
            ("c->m", "caller_to_model", "images_db"),
            ("m->c", "model_to_caller", "aliases_db"),
        ):
            q = result[name]["quality"][key]
            print(
                f"{name:<18} {label:<4} {q['gain_1k_db']:>6.2f}dB {q['ripple_db']:>5.2f}dB {q[spur]:>8.1f}dB "
                f"{q['clipped']:>8} {q['lag_end_ms']:>6.1f}ms {q['drift_ms_per_min']:>6.3f}ms/min"
            )


if __name__ == "__main__":
    main()
