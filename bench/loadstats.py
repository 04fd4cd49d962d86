"""Forwarding delays and losses from what the fake carrier and the fake model recorded.

Matching is by audio duration, per call, in FIFO order, because in `pcm24k` mode the bytes are
resampled and no tag in the payload would survive. Each side records the time of every message and
the running total of audio (ms) it carried, on the machine-wide monotonic clock:

  caller → model   frame i (20 ms) was sent at send_t[i]; it counts as received at the first append
                   that brings the model's running total to (i + 1) * 20 ms - tol.
  model → caller   delta j was sent at down_t[j] with the model's running total down_ms[j]; it counts
                   as received at the first media frame that brings the carrier's total to
                   down_ms[j] - tol.

`tol` is what a resampler may legitimately hold back as look-ahead at any instant (libsamplerate:
~6 ms for "high", 2.5 ms for "fast"); 10 ms in pcm24k, 0 in g711 where bytes pass through. It is
smaller than any one frame (20 ms) or delta (40 ms), so a frame can never be matched by audio that
came before it. Audio that never arrives is a loss; audio that arrives short (drift) shows up as
losses at the end of the call.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import numpy.typing as npt

FRAME_MS = 20.0
TOL_MS = {"pcm24k": 10.0, "g711": 0.0}  # per audio mode; see above
Floats = npt.NDArray[np.float64]


def match(sent_t: Floats, sent_ms: Floats, recv_t: Floats, recv_ms: Floats, tol_ms: float) -> Floats:
    """Delay (s) of each sent unit; NaN where the receiver's running total never reached it."""
    idx = np.searchsorted(recv_ms, sent_ms - tol_ms, side="left")
    delays = np.full(sent_t.shape, np.nan)
    ok = idx < recv_ms.size
    delays[ok] = recv_t[idx[ok]] - sent_t[ok]
    return delays


def percentiles_ms(delays_s: Floats) -> dict[str, float | None]:
    if delays_s.size == 0:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    p50, p95, p99 = np.percentile(delays_s, [50, 95, 99]) * 1000
    return {
        "p50": round(float(p50), 3),
        "p95": round(float(p95), 3),
        "p99": round(float(p99), 3),
        "max": round(float(delays_s.max() * 1000), 3),
    }


def directions(
    carrier: Any, model: Any, tol_ms: float, window: tuple[float, float]
) -> dict[str, dict[str, Any]]:
    """Both directions' counts and delay percentiles; delays only for audio sent inside `window`."""
    flows = {"caller_to_model": _Flow(), "model_to_caller": _Flow()}
    for index, conn in zip(carrier["index"], carrier["conn"], strict=True):
        send_t = carrier[f"send_t_{index}"]
        up_ms = FRAME_MS * np.arange(1, send_t.size + 1)
        up = match(send_t, up_ms, model[f"up_t_{conn}"], model[f"up_ms_{conn}"], tol_ms)
        flows["caller_to_model"].add(send_t, up, window)
        down_t = model[f"down_t_{conn}"]
        recv_t, recv_ms = carrier[f"recv_t_{index}"], carrier[f"recv_ms_{index}"]
        down = match(down_t, model[f"down_ms_{conn}"], recv_t, recv_ms, tol_ms)
        flows["model_to_caller"].add(down_t, down, window)
    return {name: flow.summary(window) for name, flow in flows.items()}


class _Flow:
    """One direction's tallies over every call."""

    def __init__(self) -> None:
        self.sent = 0
        self.lost = 0
        self.times: list[Floats] = []
        self.delays: list[Floats] = []

    def add(self, sent_t: Floats, delays: Floats, window: tuple[float, float]) -> None:
        self.sent += delays.size
        self.lost += int(np.isnan(delays).sum())
        keep = (sent_t >= window[0]) & (sent_t < window[1]) & ~np.isnan(delays)
        self.times.append(sent_t[keep])
        self.delays.append(delays[keep])

    def summary(self, window: tuple[float, float]) -> dict[str, Any]:
        times = np.concatenate(self.times) if self.times else np.empty(0)
        delays = np.concatenate(self.delays) if self.delays else np.empty(0)
        # A gateway that slowly falls behind shows as p99 rising from one third of the hold to the next.
        edges = np.linspace(window[0], window[1], 4)
        in_third = [(times >= lo) & (times < hi) for lo, hi in itertools.pairwise(edges)]
        thirds = [percentiles_ms(delays[mask])["p99"] for mask in in_third]
        return {
            "frames_sent": self.sent,
            "frames_received": self.sent - self.lost,
            "frames_lost": self.lost,
            "frames_timed": int(delays.size),
            "delay_ms": percentiles_ms(delays),
            "p99_ms_by_third": thirds,
        }


def slope_per_min(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MiB) samples, in MiB per minute."""
    if len(samples) < 3:
        return None
    t = np.array([s[0] for s in samples])
    v = np.array([s[1] for s in samples])
    if np.ptp(t) == 0:
        return None
    return round(float(np.polyfit(t, v, 1)[0] * 60), 4)
