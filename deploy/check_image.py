"""Replay the Dockerfile's install and start steps in a fresh Python 3.13 venv (CI has no Docker engine).

    python deploy/check_image.py [--python PYTHON3.13]

The container's filesystem is a temporary directory: every absolute path in a replayed step is put
under it. COPY lines copy from the repository, and the RUN segments that call deploy/docker-steps.sh
run with the fresh venv's `python` first on PATH. Other RUN segments (user creation, clean-up) are
named and skipped: they would change this machine. Then the image's ENTRYPOINT + CMD start the
gateway on config/agents.example.yaml mounted at /config/agents.yaml, as the README's `docker run`
does. The check passes when /healthz and /readyz answer 200, the HEALTHCHECK command exits 0, the
venv holds no test-only package, and SIGTERM stops the gateway with exit code 0.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# A RUN segment that calls the steps script: `sh /path/docker-steps.sh ...` or `/path/docker-steps.sh ...`.
STEPS_CALL = re.compile(r"^(sh\s+)?\S*/docker-steps\.sh\s")
# The variables config/agents.example.yaml needs, with placeholder values (nothing is dialled).
EXAMPLE_ENV = {
    "OPENAI_API_KEY": "sk-image-check",
    "TWILIO_ACCOUNT_SID": "AC00000000000000000000000000000000",
    "TWILIO_AUTH_TOKEN": "image-check-token",
    "PUBLIC_URL": "https://gw.example.com",
}
TEST_ONLY = ("pytest", "openai", "twilio", "mypy", "ruff")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


@dataclass
class Instruction:
    keyword: str  # upper case
    args: str  # everything after the keyword, continuation lines joined
    stage: int


@dataclass
class Dockerfile:
    instructions: list[Instruction]
    stages: list[str] = field(default_factory=list)  # each stage's FROM line

    def final(self, keyword: str) -> list[Instruction]:
        last = len(self.stages) - 1
        return [i for i in self.instructions if i.keyword == keyword and i.stage == last]

    def exec_form(self, keyword: str) -> list[str]:
        """The final stage's last ENTRYPOINT, CMD or HEALTHCHECK as an argv; ValueError unless exec form."""
        found = self.final(keyword)
        if not found:
            return []
        text = found[-1].args
        if keyword == "HEALTHCHECK":
            text = re.sub(r"^(--\S+\s+)*CMD\s+", "", text)
        argv = json.loads(text)
        if not (isinstance(argv, list) and all(isinstance(a, str) for a in argv)):
            raise ValueError(f"{keyword} must be a JSON array of strings: {text}")
        return argv

    def env(self) -> dict[str, str]:
        """The final stage's ENV (KEY=VALUE pairs, the only form this Dockerfile uses)."""
        values: dict[str, str] = {}
        for instruction in self.final("ENV"):
            for pair in shlex.split(instruction.args):
                key, _, value = pair.partition("=")
                values[key] = value
        return values


def parse_dockerfile(text: str) -> Dockerfile:
    instructions: list[Instruction] = []
    stages: list[str] = []
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        keyword, _, args = logical.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stages.append(args.strip())
        instructions.append(Instruction(keyword, " ".join(args.split()), len(stages) - 1))
        logical = ""
    return Dockerfile(instructions, stages)


class ImageReplay:
    """The image's filesystem under `root`, its python a fresh venv."""

    def __init__(self, python: str, root: Path) -> None:
        self.root = root
        self.venv = root.parent / "venv"
        subprocess.run([python, "-m", "venv", str(self.venv)], check=True)
        self.path_env = f"{self.venv / 'bin'}{os.pathsep}/usr/bin{os.pathsep}/bin"
        self.workdir = "/"
        self.skipped: list[str] = []

    def map(self, container_path: str) -> Path:
        return self.root / container_path.lstrip("/")

    def map_words(self, command: str) -> str:
        """Absolute paths in a shell command, put under the image root."""
        return " ".join(
            shlex.quote(str(self.map(w))) if w.startswith("/") else w for w in shlex.split(command)
        )

    def copy(self, args: str) -> None:
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        from_stage = any(w.startswith("--from=") for w in shlex.split(args))
        *sources, dest = words
        target = self.map(dest if dest.startswith("/") else f"{self.workdir.rstrip('/')}/{dest}")
        for source in sources:
            origin = self.map(source) if from_stage else ROOT / source
            if from_stage and origin == target:
                continue  # stages share one root here, so the copy is already in place
            into = target / origin.name if dest.endswith("/") or len(sources) > 1 else target
            into.parent.mkdir(parents=True, exist_ok=True)
            if origin.is_dir():
                shutil.copytree(origin, into, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(origin, into)

    def run(self, args: str) -> None:
        for segment in (s.strip() for s in args.split("&&")):
            if not STEPS_CALL.match(segment):
                self.skipped.append(segment)
                continue
            print(f"   RUN {segment}", flush=True)
            cwd = self.map(self.workdir)
            cwd.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, "PATH": self.path_env, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
            done = subprocess.run(
                ["sh", "-c", self.map_words(segment)],
                check=False,
                cwd=cwd,
                env=env,
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                print(done.stdout + done.stderr, file=sys.stderr)
                raise SystemExit(f"RUN {segment} failed with exit code {done.returncode}")

    def build(self, dockerfile: Dockerfile) -> None:
        for instruction in dockerfile.instructions:
            if instruction.keyword == "FROM":
                self.workdir = "/"
            elif instruction.keyword == "WORKDIR":
                self.workdir = instruction.args
            elif instruction.keyword == "COPY":
                self.copy(instruction.args)
            elif instruction.keyword == "RUN":
                self.run(instruction.args)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - a loopback http URL
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def wait_until_healthy(process: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while get_status(url) != 200:
        if process.poll() is not None:
            raise SystemExit(f"the gateway exited with {process.returncode} before answering {url}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not answer 200 within {START_TIMEOUT_S:.0f} s")
        time.sleep(0.2)  # polling a subprocess from a script; there is no event to wait on


def start(replay: ImageReplay, dockerfile: Dockerfile) -> None:
    argv = dockerfile.exec_form("ENTRYPOINT") + dockerfile.exec_form("CMD")
    argv = [str(replay.map(a)) if a.startswith("/") else a for a in argv]
    config = replay.map("/config/agents.yaml")
    config.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "config" / "agents.example.yaml", config)
    port = free_port()  # PORT, not 8080: other test runs may be listening on this machine
    env = {"PATH": replay.path_env, **dockerfile.env(), **EXAMPLE_ENV, "PORT": str(port)}
    base = f"http://127.0.0.1:{port}"
    print(f"   start: {shlex.join(argv)}  (PORT={port})", flush=True)
    process = subprocess.Popen(argv, env=env, cwd=replay.root)
    try:
        wait_until_healthy(process, base + "/healthz")
        for path in ("/healthz", "/readyz"):
            status = get_status(base + path)
            print(f"   GET {path} -> {status}")
            if status != 200:
                raise SystemExit(f"GET {path} answered {status}")
        healthcheck = dockerfile.exec_form("HEALTHCHECK")
        result = subprocess.run(healthcheck, env=env, check=False)
        print(f"   HEALTHCHECK -> exit {result.returncode}")
        if result.returncode != 0:
            raise SystemExit("the HEALTHCHECK command failed against a healthy gateway")
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=STOP_TIMEOUT_S)
        print(f"   SIGTERM -> exit {code}")
        if code != 0:
            raise SystemExit(f"the gateway exited {code} on SIGTERM (expected a drain and 0)")
        stopped = subprocess.run(healthcheck, env=env, check=False, capture_output=True)
        if stopped.returncode == 0:
            raise SystemExit("the HEALTHCHECK command passed with no gateway running: it checks nothing")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def check_runtime_packages(replay: ImageReplay) -> None:
    listed = subprocess.run(
        [str(replay.venv / "bin" / "python"), "-m", "pip", "list", "--format=json"],
        check=True,
        capture_output=True,
        text=True,
    )
    names = {package["name"].lower().replace("_", "-") for package in json.loads(listed.stdout)}
    leaked = sorted(names & set(TEST_ONLY))
    if leaked:
        raise SystemExit(f"test-only packages in the image: {', '.join(leaked)}")
    for needed in ("telephony-gateway", "audioop-lts"):
        if needed not in names:
            raise SystemExit(f"{needed} is not installed in the image")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--python", default=sys.executable, help="a Python 3.13, like the image's")
    args = parser.parse_args()
    version = subprocess.run(
        [args.python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    dockerfile = parse_dockerfile((ROOT / "Dockerfile").read_text())
    base = dockerfile.stages[-1].split()[0]
    if not base.startswith(f"python:{version}-"):
        raise SystemExit(f"the image runs {base}, but --python is {version}")
    with tempfile.TemporaryDirectory(prefix="image-check-") as tmp:
        replay = ImageReplay(args.python, Path(tmp) / "root")
        replay.build(dockerfile)
        for segment in replay.skipped:
            print(f"   (not replayed: {segment})")
        check_runtime_packages(replay)
        start(replay, dockerfile)
    print("   image steps OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
