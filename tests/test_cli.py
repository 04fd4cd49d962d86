"""Tests for the `gateway` command line (gateway/__main__.py): `check` and the config handling of `run`.

No server is started here: `run` is exercised only with configs that fail, and `gateway.server.serve` is
replaced by a tripwire so a regression cannot leave a server listening.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

import gateway.__main__ as cli
import gateway.server

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = "config/agents.example.yaml"
EXAMPLE_ENV = {
    "OPENAI_API_KEY": "sk-cli-test-key-4242",
    "TWILIO_ACCOUNT_SID": "AC00000000000000000000000000000042",
    "TWILIO_AUTH_TOKEN": "cli-test-auth-token-4242",
    "PUBLIC_URL": "https://gw.example.com",
}
EXAMPLE_OK = (
    f"{EXAMPLE}: OK (agents: receptionist (openai_realtime_2); routes: 1; default_agent: receptionist)\n"
)
MISSING = "environment variable {name} is not set (use ${{{name}:-default}} for a default)"

BROKEN_YAML = """\
server:
  public_url: ftp://gw.example.com
  port: 0
carriers:
  twilio: {account_sid: AC1, auth_token: cli-secret-token-9999}
providers:
  openai: {api_key: sk-cli-secret-9999}
agents:
  sales: {engine: openai_realtime_2, reasoning_effort: max, colour: blue}
routes:
  "+15555550100": ghost
"""
BROKEN_PROBLEMS = [
    "server.port: must be at least 1",
    "server.public_url: must be an http:// or https:// URL with a host, e.g. https://gw.example.com",
    "agents.sales.reasoning_effort: must be one of minimal, low, medium, high",
    "agents.sales.colour: unknown key",
    "routes.+15555550100: no agent named 'ghost' under agents",
]
# What `run` prints of them: its stderr is the gateway's log stream, which never carries a number.
BROKEN_PROBLEMS_LOGGED = [*BROKEN_PROBLEMS[:-1], "routes.+***0100: no agent named 'ghost' under agents"]


def expected_report(path: object, problems: list[str]) -> str:
    lines = [f"{path}: {len(problems)} problem(s)", *(f"  {p}" for p in problems)]
    return "\n".join(lines) + "\n"


@pytest.fixture
def example_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process environment the README's quickstart asks for, and nothing that would change it."""
    for name, value in EXAMPLE_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PORT", raising=False)
    monkeypatch.chdir(ROOT)


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN_YAML)
    return path


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make starting a server fail loudly, and undo the global logging set-up `run` performs."""

    def tripwire(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("serve must not be reached with an invalid config")

    monkeypatch.setattr(gateway.server, "serve", tripwire)
    saved = structlog.get_config()
    access = logging.getLogger("aiohttp.access")
    access_level = access.level
    try:
        yield
    finally:
        structlog.configure(**saved)
        access.setLevel(access_level)


class TestCheck:
    def test_valid_config(self, example_env: None, capsys: pytest.CaptureFixture[str]) -> None:
        """`check` on a valid file exits 0 and prints one OK line with a summary on stdout only."""
        assert cli.main(["check", EXAMPLE]) == 0
        out, err = capsys.readouterr()
        assert out == EXAMPLE_OK
        assert err == ""

    def test_summary_without_default_agent(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """The OK line lists every agent with its engine, the route count and '-' for no default agent."""
        path = tmp_path / "two.yaml"
        path.write_text(
            "server: {public_url: https://gw.example.com}\n"
            "carriers: {twilio: {account_sid: AC1, auth_token: t}}\n"
            "providers: {openai: {api_key: k}}\n"
            "agents:\n  a: {engine: openai_realtime}\n  b: {engine: openai_realtime_2}\n"
        )
        assert cli.main(["check", str(path)]) == 0
        assert capsys.readouterr().out == (
            f"{path}: OK (agents: a (openai_realtime), b (openai_realtime_2); routes: 0; default_agent: -)\n"
        )

    def test_every_problem_on_stderr(self, broken: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """An invalid file exits 2 and prints a count then every problem, indented, on stderr only. The
        route's number is shown whole: `check` is the operator's own look at their own file."""
        assert cli.main(["check", str(broken)]) == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert err == expected_report(broken, BROKEN_PROBLEMS)

    def test_secrets_not_printed(self, broken: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """Neither output stream ever shows a secret from the file."""
        cli.main(["check", str(broken)])
        out, err = capsys.readouterr()
        for secret in ("cli-secret-token-9999", "sk-cli-secret-9999"):
            assert secret not in out + err

    def test_missing_variables(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The example without its variables exits 2 naming each variable with its YAML path."""
        for name in EXAMPLE_ENV:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.chdir(ROOT)
        assert cli.main(["check", EXAMPLE]) == 2
        assert capsys.readouterr().err == expected_report(
            EXAMPLE,
            [
                "server.public_url: " + MISSING.format(name="PUBLIC_URL"),
                "carriers.twilio.account_sid: " + MISSING.format(name="TWILIO_ACCOUNT_SID"),
                "carriers.twilio.auth_token: " + MISSING.format(name="TWILIO_AUTH_TOKEN"),
                "providers.openai.api_key: " + MISSING.format(name="OPENAI_API_KEY"),
            ],
        )

    def test_unreadable_file(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A path that does not exist exits 2 with the reason, not a traceback."""
        path = tmp_path / "missing.yaml"
        assert cli.main(["check", str(path)]) == 2
        assert capsys.readouterr().err == expected_report(
            path, [f"{path}: cannot read the file (No such file or directory)"]
        )

    def test_path_required(self, capsys: pytest.CaptureFixture[str]) -> None:
        """`check` without a path is a usage error (argparse exit 2)."""
        with pytest.raises(SystemExit) as caught:
            cli.main(["check"])
        assert caught.value.code == 2
        assert "path" in capsys.readouterr().err

    def test_command_required(self, capsys: pytest.CaptureFixture[str]) -> None:
        """No sub-command is a usage error naming the choices."""
        with pytest.raises(SystemExit) as caught:
            cli.main([])
        assert caught.value.code == 2
        assert "{run,check}" in capsys.readouterr().err


@pytest.mark.usefixtures("no_server")
class TestRun:
    def test_invalid_config_exits_2(self, broken: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """`run --config` with an invalid file prints every problem and exits 2 without serving. Its
        stderr is the gateway's log (a container's), so the route's number is cut to its last digits."""
        assert cli.main(["run", "--config", str(broken), "--log-format", "json"]) == 2
        err = capsys.readouterr().err
        assert err.endswith(expected_report(broken, BROKEN_PROBLEMS_LOGGED))
        assert "5555550100" not in err

    def test_gateway_config_variable(
        self, broken: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without --config, $GATEWAY_CONFIG names the file."""
        monkeypatch.setenv("GATEWAY_CONFIG", str(broken))
        assert cli.main(["run", "--log-format", "json"]) == 2
        assert f"{broken}: 5 problem(s)" in capsys.readouterr().err

    def test_flag_beats_variable(
        self,
        broken: Path,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """--config wins over $GATEWAY_CONFIG."""
        monkeypatch.setenv("GATEWAY_CONFIG", str(tmp_path / "other.yaml"))
        assert cli.main(["run", "--config", str(broken), "--log-format", "console"]) == 2
        err = capsys.readouterr().err
        assert f"{broken}: 5 problem(s)" in err
        assert "other.yaml" not in err

    def test_default_path(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """With neither --config nor $GATEWAY_CONFIG the default path is used (patched to a missing file)."""
        assert cli.DEFAULT_CONFIG_PATH == "/config/agents.yaml"
        default = tmp_path / "config" / "agents.yaml"
        monkeypatch.setattr(cli, "DEFAULT_CONFIG_PATH", str(default))
        monkeypatch.delenv("GATEWAY_CONFIG", raising=False)
        assert cli.main(["run", "--log-format", "json"]) == 2
        assert capsys.readouterr().err.endswith(
            expected_report(default, [f"{default}: cannot read the file (No such file or directory)"])
        )

    def test_log_format_choices(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--log-format accepts only json or console."""
        with pytest.raises(SystemExit) as caught:
            cli.main(["run", "--log-format", "xml"])
        assert caught.value.code == 2
        assert "invalid choice: 'xml'" in capsys.readouterr().err


class TestEventLoop:
    def test_uvloop_when_importable(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """`gateway run` runs on uvloop when it is installed (a dependency everywhere but Windows)."""
        uvloop = pytest.importorskip("uvloop")
        monkeypatch.delenv("GATEWAY_EVENT_LOOP", raising=False)
        factory, name = cli.loop_factory()
        assert name == "uvloop"
        assert factory is not None
        loop = factory()
        try:
            assert isinstance(loop, uvloop.Loop)
        finally:
            loop.close()

    def test_asyncio_on_request(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """GATEWAY_EVENT_LOOP=asyncio keeps asyncio's own loop (to rule uvloop out when debugging)."""
        monkeypatch.setenv("GATEWAY_EVENT_LOOP", "asyncio")
        assert cli.loop_factory() == (None, "asyncio")

    def test_asyncio_when_uvloop_is_missing(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without uvloop (Windows, or uninstalled) the default loop runs; nothing fails."""
        monkeypatch.delenv("GATEWAY_EVENT_LOOP", raising=False)
        monkeypatch.setitem(sys.modules, "uvloop", None)  # makes `import uvloop` raise ImportError
        assert cli.loop_factory() == (None, "asyncio")


class TestModuleEntryPoint:
    def _run(self, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
        clean = {k: v for k, v in os.environ.items() if k not in EXAMPLE_ENV and k != "PORT"}
        return subprocess.run(  # noqa: S603 - fixed argv: this interpreter and our own module
            [sys.executable, "-m", "gateway", *args],
            cwd=ROOT,
            env={**clean, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def test_check_example(self) -> None:
        """`python -m gateway check config/agents.example.yaml` works with the four variables set."""
        result = self._run(EXAMPLE_ENV, "check", EXAMPLE)
        assert (result.returncode, result.stdout, result.stderr) == (0, EXAMPLE_OK, "")

    def test_check_example_without_variables(self) -> None:
        """The module entry point propagates exit status 2 and names every missing variable."""
        result = self._run({}, "check", EXAMPLE)
        assert result.returncode == 2
        assert result.stdout == ""
        for name in EXAMPLE_ENV:
            assert MISSING.format(name=name) in result.stderr
