"""Process plumbing shared by bench/load.py and its fake carrier and fake model processes (Linux only).

Reads a process's CPU time and RSS from /proc, watches an event loop's lag (a fake that falls behind
would inflate the delays it measures, so its lag is reported next to them), and ties child processes
to their parent so nothing outlives a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Callable

CLOCK_TICKS_HZ = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1


def install_fast_loop() -> str:
    """Use uvloop for the fakes when it is installed (`pip install -e '.[bench]'`): they must keep up
    with thousands of frames a second on whatever core the gateway leaves them."""
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name (field 2) may contain spaces; fields after its closing ')' are fixed.
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_HZ


def process_cpu_seconds() -> float:
    return time.process_time()


def rss_mib(pid: int) -> float:
    """Resident set size of `pid` in MiB, from VmRSS in /proc/<pid>/status."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when the parent dies, even by SIGKILL (survives exec)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def pinned(cpus: str | None) -> Callable[[], None]:
    """preexec_fn: die with the parent and, when `cpus` is given ("1" or "0,2-3"), run only there."""

    def setup() -> None:
        die_with_parent()
        if cpus:
            os.sched_setaffinity(0, parse_cpus(cpus))

    return setup


def parse_cpus(spec: str) -> set[int]:
    cpus: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


class LoopLagMonitor:
    """How late a 10 ms timer fires on this loop: the loop's own backlog, sampled all run long."""

    PERIOD_S = 0.01

    def __init__(self) -> None:
        self.lags_ms: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    async def _run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.PERIOD_S)
            self.lags_ms.append(max(0.0, (time.monotonic() - before - self.PERIOD_S) * 1000))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def summary(self) -> dict[str, float]:
        if not self.lags_ms:
            return {"p50": 0.0, "p99": 0.0, "max": 0.0}
        ordered = sorted(self.lags_ms)
        pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
        return {"p50": round(pick(0.5), 3), "p99": round(pick(0.99), 3), "max": round(ordered[-1], 3)}
