"""Runs inside bench/.peer-venv (stdlib + getpatter==0.7.0 only): getpatter's transcoding, for bench/peer.py.

The methods measured are those of getpatter's OpenAI Realtime GA adapter
(`getpatter.providers.openai_realtime_2.OpenAIRealtime2Adapter`), which is where getpatter 0.7.0
converts between Twilio's µ-law 8 kHz and the model's PCM16 24 kHz:
  caller -> model  `_transcode_inbound_mulaw8_to_pcm24(mulaw: bytes) -> bytes`
  model -> caller  `_transcode_outbound_pcm24_to_mulaw8(delta_b64: str) -> bytes`
Both are called directly, on a fresh adapter per job (their filter state lives on the adapter), with
the same chunks bench/peer.py feeds our own converters. No socket is opened.

Usage: python peer_worker.py JOBS.json RESULTS.json   (the job format is written by bench/peer.py)
"""

from __future__ import annotations

import base64
import json
import sys
import time
from pathlib import Path
from typing import Any

from getpatter.providers.openai_realtime_2 import OpenAIRealtime2Adapter


def run_job(job: dict[str, Any]) -> tuple[float, list[int], bytes]:
    data = Path(job["input"]).read_bytes()
    chunks: list[bytes] = []
    pos = 0
    for size in job["chunks"]:
        chunks.append(data[pos : pos + size])
        pos += size
    adapter = OpenAIRealtime2Adapter(api_key="bench-not-used")
    lengths: list[int] = []
    out = bytearray()
    if job["direction"] == "in":
        convert = adapter._transcode_inbound_mulaw8_to_pcm24
        start = time.process_time()
        for chunk in chunks:
            piece = convert(chunk)
            out += piece
            lengths.append(len(piece))
    else:
        deltas = [base64.b64encode(chunk).decode("ascii") for chunk in chunks]  # as the model sends them
        convert_b64 = adapter._transcode_outbound_pcm24_to_mulaw8
        start = time.process_time()
        for delta in deltas:
            piece = convert_b64(delta)
            out += piece
            lengths.append(len(piece))
    return time.process_time() - start, lengths, bytes(out)


def main() -> None:
    jobs = json.loads(Path(sys.argv[1]).read_text())
    results: dict[str, Any] = {}
    for job in jobs:
        best = float("inf")
        for _ in range(job["repeats"]):
            cpu_s, lengths, out = run_job(job)
            best = min(best, cpu_s)
        Path(job["output"]).write_bytes(out)
        results[job["name"]] = {"cpu_s": best, "lengths": lengths}
    Path(sys.argv[2]).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
