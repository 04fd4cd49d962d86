"""The load benchmark's harness (bench/load.py) cannot rot: a small run in each audio mode, and the
duration matching it computes delays and losses with. No assertion on speed: only that the run
completed the real call flow and counted what it sent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from loadstats import directions, match, slope_per_min  # noqa: E402

CALLS = 20
# Generous: the suite runs on a busy 2-core machine. A healthy run takes about 6 s per mode.
RUN_TIMEOUT_S = 110


class TestLoadHarness:
    @pytest.mark.timeout(RUN_TIMEOUT_S + 10)
    @pytest.mark.parametrize("audio", ["pcm24k", "g711"])
    def test_small_run_writes_a_complete_result(self, audio: str, tmp_path: Path) -> None:
        """20 calls through a real gateway process (signed webhook, TwiML, media socket, GA model
        socket) are all held, every frame sent in both directions is accounted for with none lost,
        and the result JSON carries delays, CPU and RSS figures."""
        out = tmp_path / "result.json"
        run = subprocess.run(  # noqa: S603 - our own interpreter and script
            [
                sys.executable,
                str(ROOT / "bench" / "load.py"),
                "--audio",
                audio,
                "--calls",
                str(CALLS),
                "--seconds",
                "2",
                "--ramp-rate",
                "200",
                "--rss-every",
                "0.5",
                "--out",
                str(out),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        result = json.loads(out.read_text())
        assert result["audio"] == audio
        assert result["calls_held"] == CALLS
        assert result["calls_failed"] == 0
        for direction in ("caller_to_model", "model_to_caller"):
            flow = result[direction]
            assert flow["frames_sent"] > 0, direction
            assert flow["frames_lost"] == 0, direction
            assert flow["frames_received"] == flow["frames_sent"], direction
            delays = flow["delay_ms"]
            assert 0 <= delays["p50"] <= delays["p95"] <= delays["p99"] <= delays["max"], direction
        gateway = result["gateway"]
        assert gateway["cpu_percent"] > 0
        assert gateway["rss_mib_before"] > 0
        assert gateway["rss_mib_per_call"] is not None
        assert gateway["log"]["call_end_reasons"] == {"caller_hangup": CALLS}
        fast = gateway["log"]["fast_path"]  # most frames are handled as they arrive (gateway.fastws)
        assert fast["caller_frames"] > result["caller_to_model"]["frames_sent"] / 2
        assert fast["model_frames"] > 0
        assert gateway["log"]["problems"] == {}, gateway["log"]["problem_events"]
        assert result["fakes"]["drained"] is True
        assert result["fakes"]["marks_echoed"] > 0


def _arrays(values: list[float]) -> np.ndarray:
    return np.array(values, dtype=np.float64)


class TestMatch:
    def test_passthrough_matches_each_frame_to_its_own_arrival(self) -> None:
        """g711: bytes pass through, so frame i is received exactly when the total reaches (i+1)*20 ms."""
        delays = match(
            _arrays([0.0, 0.02, 0.04]),
            _arrays([20, 40, 60]),
            _arrays([0.001, 0.022, 0.045]),
            _arrays([20, 40, 60]),
            0.0,
        )
        assert np.allclose(delays, [0.001, 0.002, 0.005])

    def test_resampler_look_ahead_is_not_a_loss(self) -> None:
        """pcm24k: each append lags the input by a few ms of look-ahead; within tol every frame matches."""
        delays = match(
            _arrays([0.0, 0.02, 0.04]),
            _arrays([20, 40, 60]),
            _arrays([0.001, 0.021, 0.041]),
            _arrays([14, 34, 54]),
            10.0,
        )
        assert np.allclose(delays, [0.001, 0.001, 0.001])

    def test_missing_audio_is_counted_lost(self) -> None:
        """A frame the receiver's running total never reached is NaN (lost), here the last one."""
        delays = match(
            _arrays([0.0, 0.02, 0.04]), _arrays([20, 40, 60]), _arrays([0.001, 0.021]), _arrays([20, 40]), 0.0
        )
        assert np.isnan(delays[2]) and not np.isnan(delays[:2]).any()

    def test_a_frame_is_never_matched_by_audio_that_came_before_it(self) -> None:
        """Receiving frame 0 twice's worth late still times frame 1 from the arrival that covers it."""
        delays = match(
            _arrays([0.0, 0.02]), _arrays([20, 40]), _arrays([0.005, 0.050]), _arrays([20, 40]), 10.0
        )
        assert np.allclose(delays, [0.005, 0.030])


class TestDirections:
    def test_counts_and_window(self) -> None:
        """Per-direction counts cover the whole run; delays only the hold window; calls pair by conn id."""
        carrier = {
            "index": np.array([0]),
            "conn": np.array([7]),
            "send_t_0": _arrays([0.0, 1.0, 2.0]),
            "recv_t_0": _arrays([1.5]),
            "recv_ms_0": _arrays([40]),
        }
        model = {
            "up_t_7": _arrays([0.002, 1.004]),
            "up_ms_7": _arrays([20, 40]),
            "down_t_7": _arrays([1.49]),
            "down_ms_7": _arrays([40]),
        }
        flows = directions(carrier, model, 0.0, (0.5, 3.0))
        up, down = flows["caller_to_model"], flows["model_to_caller"]
        assert (up["frames_sent"], up["frames_lost"], up["frames_timed"]) == (3, 1, 1)
        assert up["delay_ms"]["p50"] == pytest.approx(4.0)
        assert (down["frames_sent"], down["frames_lost"]) == (1, 0)
        assert down["delay_ms"]["max"] == pytest.approx(10.0)


class TestSlope:
    def test_slope_in_mib_per_minute(self) -> None:
        """RSS growing 1 MiB every 30 s is a slope of 2 MiB/min; too few samples give None."""
        assert slope_per_min([(0, 100.0), (30, 101.0), (60, 102.0)]) == pytest.approx(2.0)
        assert slope_per_min([(0, 100.0)]) is None
