"""bench/load.py's result: merge what the fake carrier and fake model recorded, summarise the gateway's
log, and print the table."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
from loadstats import TOL_MS, directions, slope_per_min


def build_result(
    args: argparse.Namespace,
    tmp: Path,
    fake_cpus: str | None,
    *,
    wall_s: float,
    cpu: dict[str, float],
    rss: tuple[float, float, list[tuple[float, float]]],
) -> dict[str, Any]:
    """The run's JSON result from what the processes left in `tmp` and what load.py sampled."""
    carrier_info = json.loads((tmp / "carrier.json").read_text())
    model_info = json.loads((tmp / "model.json").read_text())
    with np.load(tmp / "carrier.npz") as carrier, np.load(tmp / "model.npz") as model:
        flows = directions(
            carrier, model, TOL_MS[args.audio], (carrier_info["hold_start"], carrier_info["hold_end"])
        )
    rss_before, rss_held, samples = rss
    held = carrier_info["calls_held"]
    second_half = [s for s in samples if s[0] >= wall_s / 2]
    return {
        "audio": args.audio,
        "resample_quality": args.quality,
        "calls_requested": args.calls,
        "calls_held": held,
        "calls_failed": carrier_info["failures_total"],
        "failures": carrier_info["failures"],
        "hold_seconds": round(wall_s, 3),
        "gateway_cpu_pinned": args.cpu,
        **flows,
        "gateway": {
            "cpu_percent": round(cpu["gateway"], 1),
            "rss_mib_before": round(rss_before, 2),
            "rss_mib_held": round(rss_held, 2),
            "rss_mib_per_call": round((rss_held - rss_before) / held, 4) if held else None,
            "rss_slope_mib_per_min": slope_per_min(samples),
            "rss_slope_second_half_mib_per_min": slope_per_min(second_half),
            "rss_samples": [[round(t, 1), round(v, 2)] for t, v in samples],
            "log": log_summary(tmp / "gateway.log"),
        },
        "fakes": {
            "carrier": {
                "cpu_percent": round(cpu["carrier"], 1),
                "loop_lag_ms": carrier_info["loop_lag_ms"],
            },
            "model": {"cpu_percent": round(cpu["model"], 1), "loop_lag_ms": model_info["loop_lag_ms"]},
            "pinned_to": fake_cpus,
            "drained": carrier_info["drained"],
            "marks_echoed": carrier_info["marks_echoed"],
            "clears": carrier_info["clears"],
            "twilio_rest_calls": model_info["hangups_rest"],
        },
        "machine": machine(),
    }


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def log_summary(path: Path) -> dict[str, Any]:
    """Counts of warning/error lines and of call end reasons in the gateway's JSON log, and the
    frames the calls' `call.ended` lines say took the fast path (gateway/fastws.py)."""
    levels: dict[str, int] = {}
    reasons: dict[str, int] = {}
    events: dict[str, int] = {}
    fast = {"caller_frames": 0, "model_frames": 0}
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            levels["unparsed"] = levels.get("unparsed", 0) + 1
            continue
        level = entry.get("level", "?")
        if level in ("warning", "error", "critical"):
            levels[level] = levels.get(level, 0) + 1
            events[entry.get("event", "?")] = events.get(entry.get("event", "?"), 0) + 1
        if entry.get("event") == "call.ended":
            reasons[entry.get("reason", "?")] = reasons.get(entry.get("reason", "?"), 0) + 1
            fast["caller_frames"] += int(entry.get("fast_caller_frames", 0))
            fast["model_frames"] += int(entry.get("fast_model_frames", 0))
    return {"problems": levels, "problem_events": events, "call_end_reasons": reasons, "fast_path": fast}


def print_summary(result: dict[str, Any], out: Path) -> None:
    gw = result["gateway"]
    print(
        f"{result['audio']}: {result['calls_held']}/{result['calls_requested']} calls held for "
        f"{result['hold_seconds']:.1f} s ({result['machine']['cpu']}, {result['machine']['cores']} cores, "
        f"gateway cpu {result['gateway_cpu_pinned'] or 'not pinned'})"
    )
    print(
        f"{'direction':<16} {'sent':>9} {'lost':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}"
        "  p99 by third of the hold"
    )
    for name in ("caller_to_model", "model_to_caller"):
        flow = result[name]
        d = flow["delay_ms"]
        cells = " ".join(
            f"{v:>8.2f}" if v is not None else f"{'-':>8}" for v in (d["p50"], d["p95"], d["p99"], d["max"])
        )
        thirds = " / ".join("-" if v is None else f"{v:.1f}" for v in flow["p99_ms_by_third"])
        print(f"{name:<16} {flow['frames_sent']:>9} {flow['frames_lost']:>6} {cells}  {thirds}")
    print(
        f"gateway: cpu {gw['cpu_percent']:.1f} %, "
        f"rss {gw['rss_mib_before']:.1f} -> {gw['rss_mib_held']:.1f} MiB "
        f"({gw['rss_mib_per_call']} MiB/call), slope {gw['rss_slope_mib_per_min']} MiB/min"
    )
    fakes = result["fakes"]
    print(
        f"fakes: carrier cpu {fakes['carrier']['cpu_percent']:.1f} % (loop lag p99 "
        f"{fakes['carrier']['loop_lag_ms']['p99']} ms), model cpu {fakes['model']['cpu_percent']:.1f} % "
        f"(loop lag p99 {fakes['model']['loop_lag_ms']['p99']} ms)"
    )
    fast = gw["log"]["fast_path"]
    up, down = result["caller_to_model"]["frames_sent"], result["model_to_caller"]["frames_sent"]
    if up and down:
        print(
            f"fast path: {100 * fast['caller_frames'] / up:.1f} % of caller frames, "
            f"{100 * fast['model_frames'] / down:.1f} % of model deltas"
        )
    if gw["log"]["problems"]:
        print(f"gateway log problems: {gw['log']['problem_events']}")
    print(f"result: {out}")
