"""Tests for gateway.transcripts.TranscriptWriter: one private JSONL file per call, durable per line.

The properties pinned hardest: every write is in the file (readable by another handle) before
``write`` returns, so a killed gateway keeps every complete line; and no I/O failure ever reaches
the call -- it is logged once, without content, and the transcript quietly stops.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway.transcripts import TranscriptWriter, transcript_filename

ROOT = Path(__file__).resolve().parent.parent
STARTED_AT = 1714567890.123  # 2024-05-01T12:51:30.123Z
TELNYX_ID = "v3:u5OAKGEPT3Dx8SZSSDRWEMdNH2OripQhO"


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def failures(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == "transcript.write_failed"]


class TestFileName:
    def test_utc_start_time_and_sanitised_id(self) -> None:
        """The name is the call's UTC start to the second, then the id with ':' and friends replaced."""
        assert (
            transcript_filename(TELNYX_ID, STARTED_AT)
            == "2024-05-01T125130Z_v3_u5OAKGEPT3Dx8SZSSDRWEMdNH2OripQhO.jsonl"
        )

    def test_path_traversal_is_neutralised(self) -> None:
        """An id carrying '/' or '..' cannot name a file outside the transcript directory."""
        name = transcript_filename("../../etc/passwd", STARTED_AT)
        assert "/" not in name
        assert name == "2024-05-01T125130Z_______etc_passwd.jsonl"

    def test_twilio_sid_is_kept(self) -> None:
        """A Twilio CallSid is already safe and appears unchanged."""
        sid = "CA0123456789abcdef0123456789abcdef"
        assert transcript_filename(sid, STARTED_AT).endswith(f"_{sid}.jsonl")

    def test_empty_and_overlong_ids(self) -> None:
        """An empty id still gives a usable name; a huge one is capped well below NAME_MAX."""
        assert transcript_filename("", STARTED_AT) == "2024-05-01T125130Z_call.jsonl"
        assert len(transcript_filename("x" * 5000, STARTED_AT)) < 200

    def test_open_uses_the_clock(self, tmp_path: Path) -> None:
        """open() names the file from its clock and puts it in the given directory."""
        with TranscriptWriter.open(tmp_path, TELNYX_ID, clock=lambda: STARTED_AT) as writer:
            assert writer.path == tmp_path / transcript_filename(TELNYX_ID, STARTED_AT)
            assert writer.path.exists()


class TestPermissions:
    def test_directory_created_private(self, tmp_path: Path) -> None:
        """A missing directory (and its parents) is created, the transcript directory itself 0700."""
        directory = tmp_path / "data" / "transcripts"
        with TranscriptWriter.open(directory, "CA1"):
            pass
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700

    def test_file_is_private(self, tmp_path: Path) -> None:
        """The file is 0600: transcripts are personal data."""
        with TranscriptWriter.open(tmp_path, "CA1") as writer:
            assert writer.path is not None
            assert stat.S_IMODE(writer.path.stat().st_mode) == 0o600

    def test_existing_directory_left_alone(self, tmp_path: Path) -> None:
        """An existing directory keeps the mode the operator gave it."""
        tmp_path.chmod(0o750)
        with TranscriptWriter.open(tmp_path, "CA1"):
            pass
        assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o750

    def test_reopen_appends(self, tmp_path: Path) -> None:
        """Opening the same call's file again appends instead of truncating it."""
        with TranscriptWriter.open(tmp_path, "CA1", clock=lambda: STARTED_AT) as first:
            first.write("caller", text="one")
        with TranscriptWriter.open(tmp_path, "CA1", clock=lambda: STARTED_AT) as second:
            second.write("caller", text="two")
        assert second.path is not None
        assert [line["text"] for line in lines(second.path)] == ["one", "two"]


class TestLines:
    def test_one_line_per_write(self, tmp_path: Path) -> None:
        """Each write is exactly one JSON object on its own line, in call order."""
        with TranscriptWriter.open(tmp_path, "CA1") as writer:
            writer.write("call.started", carrier="twilio", agent="receptionist", engine="openai", model="m")
            writer.write("caller", text="Hello?")
            writer.write("agent", text="Good morning, how can I help?")
            writer.write("call.ended", reason="caller_hangup", duration_s=12.5, cost={"total_usd": 0.04})
        assert writer.path is not None
        raw = writer.path.read_text(encoding="utf-8")
        assert raw.count("\n") == 4
        assert raw.endswith("\n")
        assert [line["event"] for line in lines(writer.path)] == [
            "call.started",
            "caller",
            "agent",
            "call.ended",
        ]

    def test_record_shape(self, tmp_path: Path) -> None:
        """A line is {"t": UTC ISO-8601 with ms, "event": ..., **fields}, in that key order."""
        with TranscriptWriter.open(tmp_path, "CA1", clock=lambda: STARTED_AT) as writer:
            writer.write("tool.result", name="lookup", output='{"ok": true}', is_error=False)
        assert writer.path is not None
        [line] = lines(writer.path)
        assert line == {
            "t": "2024-05-01T12:51:30.123Z",
            "event": "tool.result",
            "name": "lookup",
            "output": '{"ok": true}',
            "is_error": False,
        }
        assert list(line) == ["t", "event", "name", "output", "is_error"]

    def test_each_line_has_its_own_time(self, tmp_path: Path) -> None:
        """`t` is read from the clock at each write, not fixed at open."""
        ticks = iter([STARTED_AT, STARTED_AT + 0.5, STARTED_AT + 61.25])
        with TranscriptWriter.open(tmp_path, "CA1", clock=lambda: next(ticks)) as writer:
            writer.write("caller", text="a")
            writer.write("agent", text="b")
        assert writer.path is not None
        assert [line["t"] for line in lines(writer.path)] == [
            "2024-05-01T12:51:30.623Z",
            "2024-05-01T12:52:31.373Z",
        ]

    def test_reserved_keys_cannot_be_overridden(self, tmp_path: Path) -> None:
        """Fields named `t` or `event` do not replace the writer's own."""
        with TranscriptWriter.open(tmp_path, "CA1", clock=lambda: STARTED_AT) as writer:
            writer.write("dtmf", t="forged", event="forged", digits="12#")
        assert writer.path is not None
        assert lines(writer.path) == [{"t": "2024-05-01T12:51:30.123Z", "event": "dtmf", "digits": "12#"}]

    def test_unicode_is_written_as_utf8(self, tmp_path: Path) -> None:
        """Non-ASCII text is stored readable (UTF-8, not \\u escapes) and round-trips exactly."""
        text = "Grüß Gott — ¿mañana a las 9? 予約 🦷"
        with TranscriptWriter.open(tmp_path, "CA1") as writer:
            writer.write("caller", text=text)
        assert writer.path is not None
        assert text in writer.path.read_text(encoding="utf-8")
        assert lines(writer.path)[0]["text"] == text

    def test_lone_surrogate_survives(self, tmp_path: Path) -> None:
        """Text that is not valid UTF-8 (half an emoji) is escaped, not dropped and not raised."""
        with TranscriptWriter.open(tmp_path, "CA1") as writer:
            writer.write("agent", text="tooth \ud83e")
        assert writer.path is not None
        assert lines(writer.path)[0]["text"] == "tooth \ud83e"

    def test_non_json_values_become_strings(self, tmp_path: Path) -> None:
        """Values json cannot encode are written with str(), so a field can never lose a line."""
        with TranscriptWriter.open(tmp_path, "CA1") as writer:
            writer.write("call.ended", reason="done", duration_s=1.0, cost=Path("/x"), raw=b"\x00")
        assert writer.path is not None
        [line] = lines(writer.path)
        assert line["cost"] == "/x"
        assert line["raw"] == "b'\\x00'"

    def test_unencodable_record_drops_only_that_line(self, tmp_path: Path) -> None:
        """A circular structure loses its own line (logged without content); the writer carries on."""
        loop: dict[str, Any] = {}
        loop["self"] = loop
        with capture_logs() as logs, TranscriptWriter.open(tmp_path, "CA1") as writer:
            writer.write("tool.call", name="x", arguments=loop)
            writer.write("caller", text="still here")
        assert writer.path is not None
        assert [line["event"] for line in lines(writer.path)] == ["caller"]
        assert [entry["event"] for entry in logs] == ["transcript.encode_failed"]
        assert logs[0]["transcript_event"] == "tool.call"


class TestDurability:
    def test_flushed_on_every_write(self, tmp_path: Path) -> None:
        """Each line is readable through another handle as soon as write returns, writer still open."""
        writer = TranscriptWriter.open(tmp_path, "CA1")
        assert writer.path is not None
        try:
            with writer.path.open(encoding="utf-8") as reader:
                for n in range(1, 4):
                    writer.write("caller", text=f"turn {n}")
                    line = reader.readline()
                    assert line.endswith("\n")
                    assert json.loads(line)["text"] == f"turn {n}"
        finally:
            writer.close()

    def test_sigkill_keeps_every_complete_line(self, tmp_path: Path) -> None:
        """A writer process killed with SIGKILL (no cleanup, no atexit) leaves every line it wrote."""
        n = 200
        code = textwrap.dedent(
            """
            import os, signal, sys
            from gateway.transcripts import TranscriptWriter

            writer = TranscriptWriter.open(sys.argv[1], "v3:killed-call")
            for i in range(int(sys.argv[2])):
                writer.write("caller", text=f"line {i} ✓", i=i)
            os.kill(os.getpid(), signal.SIGKILL)
            """
        )
        proc = subprocess.run(  # noqa: S603 - fixed argv: this interpreter running our own snippet
            [sys.executable, "-c", code, str(tmp_path), str(n)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        [path] = tmp_path.iterdir()
        assert path.name.endswith("_v3_killed-call.jsonl")
        written = lines(path)
        assert [line["i"] for line in written] == list(range(n))
        assert written[-1]["text"] == f"line {n - 1} ✓"


class TestFailures:
    def test_close_is_idempotent(self, tmp_path: Path) -> None:
        """close() may be called any number of times; writes after it are dropped silently."""
        writer = TranscriptWriter.open(tmp_path, "CA1")
        writer.write("caller", text="before")
        writer.close()
        writer.close()
        assert writer.closed
        with capture_logs() as logs:
            writer.write("caller", text="after")
        assert logs == []
        assert writer.path is not None
        assert len(lines(writer.path)) == 1

    @pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
    def test_read_only_directory(self, tmp_path: Path) -> None:
        """A directory the gateway may not write gives a writer that drops lines, logged once."""
        tmp_path.chmod(0o500)
        try:
            with capture_logs() as logs:
                writer = TranscriptWriter.open(tmp_path, "CA1")
                for _ in range(5):
                    writer.write("caller", text="secret")
                writer.close()
        finally:
            tmp_path.chmod(0o700)
        assert writer.closed
        [failure] = failures(logs)
        assert failure["stage"] == "open"
        assert failure["errno"] == "EACCES"
        assert "secret" not in repr(logs)

    def test_directory_cannot_be_created(self, tmp_path: Path) -> None:
        """A transcript dir that cannot be created (a file is in the way; holds even for root) is
        logged once with its directory and error, never raised; every write is then dropped."""
        blocker = tmp_path / "not-a-dir"
        blocker.write_text("")
        with capture_logs() as logs:
            writer = TranscriptWriter.open(blocker / "transcripts", "CA1")
            for _ in range(5):
                writer.write("caller", text="secret")
            writer.close()
        [failure] = failures(logs)
        assert failure["stage"] == "open"
        assert failure["errno"] == "ENOTDIR"
        assert failure["directory"] == str(blocker / "transcripts")
        assert "secret" not in repr(logs)

    def test_write_failure_logged_once_then_dropped(self) -> None:
        """A write that fails mid-call (disk full: /dev/full) is logged once, without content, and
        every later write is dropped without raising."""
        writer = TranscriptWriter(open("/dev/full", "ab"), path=Path("/dev/full"))  # noqa: SIM115 - owned by writer
        with capture_logs() as logs:
            for _ in range(5):
                writer.write("caller", text="secret")
            writer.close()
        assert writer.closed
        [failure] = failures(logs)
        assert failure["stage"] == "write"
        assert failure["errno"] == "ENOSPC"
        assert len(logs) == 1
        assert "secret" not in repr(logs)

    def test_removed_directory_never_raises(self, tmp_path: Path) -> None:
        """The directory deleted under a live call does not break the call: writes keep returning
        (POSIX keeps the open file alive until closed) and close succeeds."""
        directory = tmp_path / "transcripts"
        writer = TranscriptWriter.open(directory, "CA1")
        writer.write("caller", text="before")
        shutil.rmtree(directory)
        writer.write("caller", text="after")
        writer.close()
        assert writer.closed

    def test_constructed_without_file_drops_everything(self) -> None:
        """A writer built with no file (what open() returns on failure) is a silent no-op."""
        with capture_logs() as logs:
            writer = TranscriptWriter(None)
            writer.write("caller", text="x")
            writer.close()
        assert writer.closed
        assert logs == []
