"""Load benchmark: N simulated Twilio calls through one real gateway process, for a bounded time.

Run from the repository root (after `pip install -e '.[bench]'`; `.[test]` is enough without uvloop):

    python bench/load.py --audio pcm24k --calls 150 --seconds 60 --cpu 1

Three processes besides this one, so that the gateway's own CPU is what gets measured:
  fake model    bench/fake_model.py: OpenAI Realtime GA on loopback, speaking at real-time pace
  gateway       `python -m gateway run --config <generated yaml>`, under `taskset -c <cpu>` with --cpu
  fake carrier  bench/fake_carrier.py: Twilio's side of every call (signed webhook, TwiML, media socket)
With --cpu the fakes are pinned to the other cores, so they never compete for the gateway's core.

The carrier opens the calls one by one (at most --ramp-rate a second), holds them for --seconds,
stops sending, drains, hangs up. Then this script prints and writes (--out, default
bench/results/load-<audio>-<calls>.json):
  calls held; per direction frames sent/received/lost and p50/p95/p99/max forwarding delay
  (caller frame sent by the carrier -> audio received by the model; model delta sent -> carrier
  media frame received); gateway CPU % over the hold (/proc/<pid>/stat) and RSS (VmRSS): before
  the ramp, at the end of the hold, growth per call, and its slope over the hold (MiB/min; run
  --seconds 600 for the 10-minute soak). The fakes' CPU and event-loop lag are reported too: a fake
  that cannot keep up inflates the delays it measures.

Everything is bounded: startup, ramp, hold and drain each have a timeout, and every child process is
terminated on exit, on Ctrl-C, and (PR_SET_PDEATHSIG) even if this script is killed.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import IO, Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchproc import cpu_seconds, parse_cpus, pinned, rss_mib
from loadreport import build_result, print_summary
from loadstats import TOL_MS

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

AUTH_TOKEN = "bench-auth-token"  # noqa: S105 - a fake carrier's token on loopback
STARTUP_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gateway_config(port: int, model_port: int, audio: str, calls: int, quality: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}"
    return {
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "public_url": url,
            "drain_timeout_s": 2,
            "max_concurrent_calls": calls + 10,
        },
        "carriers": {
            "twilio": {
                "account_sid": "AC" + "b" * 32,
                "auth_token": AUTH_TOKEN,
                "api_base_url": f"http://127.0.0.1:{model_port}",
            }
        },
        "providers": {
            "openai": {"api_key": "sk-bench", "realtime_url": f"ws://127.0.0.1:{model_port}/v1/realtime"}
        },
        "agents": {
            "bench": {
                "engine": "openai_realtime_2",
                "audio": audio,
                "resample_quality": quality,
                "prompt": "You are a benchmark.",
            }
        },
        "default_agent": "bench",
    }


def _lines(stream: IO[str], into: queue.Queue[str | None]) -> None:
    for line in stream:
        into.put(line.rstrip("\n"))
    into.put(None)


class LoadRun:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-load-"))
        self.procs: list[subprocess.Popen[str]] = []
        self.logs: list[IO[str]] = []
        fake_cpus: str | None = args.fake_cpus
        if fake_cpus is None and args.cpu is not None:
            others = sorted(set(range(os.cpu_count() or 1)) - parse_cpus(args.cpu))
            fake_cpus = ",".join(map(str, others)) or None
        self.fake_cpus = fake_cpus

    def spawn(self, name: str, cmd: list[str], cpus: str | None, *, pipe: bool) -> subprocess.Popen[str]:
        log = open(self.tmp / f"{name}.log", "w")  # noqa: SIM115 - closed in cleanup()
        self.logs.append(log)
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and scripts
            cmd,
            cwd=ROOT,
            stdout=subprocess.PIPE if pipe else log,
            stderr=log,
            text=True,
            preexec_fn=pinned(cpus),  # noqa: PLW1509 - single-threaded at this point; needed for pdeathsig
        )
        self.procs.append(proc)
        return proc

    def reader(self, proc: subprocess.Popen[str]) -> queue.Queue[str | None]:
        lines: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
        return lines

    def tail(self, name: str) -> str:
        text = (self.tmp / f"{name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-15:])

    def expect(self, lines: queue.Queue[str | None], prefix: str, timeout_s: float, name: str) -> str:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise RuntimeError(f"{name} exited before '{prefix}':\n{self.tail(name)}")
            if line.startswith(prefix):
                return line
        raise RuntimeError(f"{name}: no '{prefix}' within {timeout_s:.0f} s:\n{self.tail(name)}")

    def start_gateway(self, port: int, model_port: int) -> subprocess.Popen[str]:
        args = self.args
        config = self.tmp / "gateway.yaml"
        config.write_text(
            yaml.safe_dump(gateway_config(port, model_port, args.audio, args.calls, args.quality))
        )
        cmd = [sys.executable, "-m", "gateway", "run", "--config", str(config), "--log-format", "json"]
        if args.cpu is not None:
            if shutil.which("taskset") is None:
                raise RuntimeError("--cpu needs taskset (util-linux)")
            cmd = ["taskset", "-c", args.cpu, *cmd]
        gateway = self.spawn("gateway", cmd, None, pipe=False)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if gateway.poll() is not None:
                raise RuntimeError(f"gateway exited with {gateway.returncode}:\n{self.tail('gateway')}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                    if response.status == 200:
                        return gateway
            except OSError:
                time.sleep(0.1)  # polling a process we started; bounded by the deadline
        raise RuntimeError(f"gateway not healthy within {STARTUP_TIMEOUT_S:.0f} s:\n{self.tail('gateway')}")

    def execute(self) -> dict[str, Any]:
        args = self.args
        port, model_port = free_port(), free_port()
        py = sys.executable
        model = self.spawn(
            "model",
            [
                py,
                str(BENCH / "fake_model.py"),
                "--port",
                str(model_port),
                "--audio",
                args.audio,
                "--out",
                str(self.tmp),
                "--max-seconds",
                str(self.budget_s()),
            ],
            self.fake_cpus,
            pipe=True,
        )
        self.expect(self.reader(model), "READY", STARTUP_TIMEOUT_S, "model")
        gateway = self.start_gateway(port, model_port)
        gw = gateway.pid
        time.sleep(0.5)  # let the freshly started gateway settle before the RSS baseline
        rss_before = rss_mib(gw)
        carrier = self.spawn(
            "carrier",
            [
                py,
                str(BENCH / "fake_carrier.py"),
                "--gateway",
                f"http://127.0.0.1:{port}",
                "--public-url",
                f"http://127.0.0.1:{port}",
                "--model-control",
                f"http://127.0.0.1:{model_port}",
                "--auth-token",
                AUTH_TOKEN,
                "--audio",
                args.audio,
                "--calls",
                str(args.calls),
                "--seconds",
                str(args.seconds),
                "--ramp-rate",
                str(args.ramp_rate),
                "--ramp-timeout",
                str(self.ramp_timeout_s()),
                "--out",
                str(self.tmp),
            ],
            self.fake_cpus,
            pipe=True,
        )
        lines = self.reader(carrier)
        hold_line = self.expect(lines, "HOLD_START", self.ramp_timeout_s() + STARTUP_TIMEOUT_S, "carrier")
        t0 = time.monotonic()
        cpu0 = {
            name: cpu_seconds(p.pid)
            for name, p in (("gateway", gateway), ("model", model), ("carrier", carrier))
        }
        profiler = self.start_profiler(gw)
        print(f"holding {hold_line.split()[2]} calls for {args.seconds:g} s ...", file=sys.stderr, flush=True)
        samples = [(0.0, rss_mib(gw))]
        next_sample = t0 + args.rss_every
        end_line = None
        while end_line is None:
            try:
                line = lines.get(timeout=max(0.01, next_sample - time.monotonic()))
            except queue.Empty:
                line = ""
            if line is None:
                raise RuntimeError(f"carrier exited during the hold:\n{self.tail('carrier')}")
            if time.monotonic() >= next_sample:
                samples.append((time.monotonic() - t0, rss_mib(gw)))
                next_sample += args.rss_every
            if line.startswith("HOLD_END"):
                end_line = line
            elif time.monotonic() > t0 + args.seconds + 30:
                raise RuntimeError("carrier did not end the hold in time")
        t1 = time.monotonic()
        cpu1 = {
            name: cpu_seconds(p.pid)
            for name, p in (("gateway", gateway), ("model", model), ("carrier", carrier))
        }
        rss_held = rss_mib(gw)
        samples.append((t1 - t0, rss_held))
        self.expect(lines, "DONE", 60, "carrier")
        carrier.wait(timeout=30)
        if profiler is not None:
            profiler.wait(timeout=60)
        return build_result(
            args,
            self.tmp,
            self.fake_cpus,
            wall_s=t1 - t0,
            cpu={name: (cpu1[name] - cpu0[name]) / (t1 - t0) * 100 for name in cpu0},
            rss=(rss_before, rss_held, samples),
        )

    def start_profiler(self, pid: int) -> subprocess.Popen[str] | None:
        if not self.args.py_spy:
            return None
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        cmd = [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, int(self.args.seconds))),
            "--rate",
            "100",
            "--nonblocking",
            "--output",
            self.args.py_spy,
        ]
        if self.args.py_spy.endswith(".txt"):
            cmd += ["--format", "raw"]
        elif self.args.py_spy.endswith(".json"):
            cmd += ["--format", "speedscope"]
        return self.spawn("py-spy", cmd, self.fake_cpus, pipe=False)

    def budget_s(self) -> float:
        return STARTUP_TIMEOUT_S * 2 + self.ramp_timeout_s() + self.args.seconds + 120

    def ramp_timeout_s(self) -> float:
        return max(60.0, 3 * self.args.calls / self.args.ramp_rate)

    def cleanup(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for log in self.logs:
            log.close()
        if self.args.keep_logs:
            print(f"logs kept in {self.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--audio", choices=sorted(TOL_MS), default="pcm24k")
    parser.add_argument("--calls", type=int, default=100, help="concurrent calls to hold (default 100)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to hold them (default 60)")
    parser.add_argument("--cpu", help="pin the gateway with taskset -c CPU (e.g. 1); the fakes get the rest")
    parser.add_argument("--fake-cpus", help="pin the fakes here instead (e.g. 0)")
    parser.add_argument(
        "--quality", choices=["high", "fast"], default="high", help="resample_quality (pcm24k)"
    )
    parser.add_argument("--ramp-rate", type=float, default=50.0, help="calls opened per second at most")
    parser.add_argument("--rss-every", type=float, default=5.0, help="RSS sampling period in seconds")
    parser.add_argument(
        "--out", type=Path, help="JSON result (default bench/results/load-<audio>-<calls>.json)"
    )
    parser.add_argument(
        "--py-spy", metavar="FILE", help="profile the gateway over the hold (.svg, .json, .txt)"
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs and recordings")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.seconds <= 0:
        parser.error("--calls and --seconds must be positive")
    out: Path = args.out or BENCH / "results" / f"load-{args.audio}-{args.calls}.json"
    run = LoadRun(args)
    try:
        result = run.execute()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"load run failed: {exc}", file=sys.stderr)
        return 1
    finally:
        run.cleanup()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print_summary(result, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
