"""Call transcripts: one JSON Lines file per call, appended to as the call happens.

Opt-in with ``transcripts: {dir: ...}``. The files hold personal data (what callers said, the
numbers and names they gave), so the directory is created 0700 and every file 0600.

Each line is one JSON object ``{"t": "<UTC ISO-8601, ms>", "event": "<name>", ...fields}``. The
vocabulary the bridge writes:

==================  ===========================================================
``call.started``    ``carrier``, ``agent``, ``engine``, ``model``
``caller``          ``text``: one finished caller turn (the model's transcription)
``agent``           ``text``: one finished agent turn
``tool.call``       ``name``, ``arguments`` (as the model sent them)
``tool.result``     ``name``, ``output``, ``is_error``
``barge_in``        ``audio_end_ms``: how much of the agent's turn the caller heard
``dtmf``            ``digits``
``handoff``         ``from_agent``, ``to_agent``
``transfer``        ``destination_name`` (the allowlist name, never the number)
``call.ended``      ``reason``, ``duration_s``, ``cost``
==================  ===========================================================

Durability: every line is handed to the kernel before ``write`` returns, so a crash or a SIGKILL
of the gateway loses at most the line being written. Surviving a power cut would need an fsync
per line, which costs milliseconds on the event loop for little gain; it is deliberately not done.

Writes are synchronous on the call's task. A line is a few hundred bytes to a local file, far
cheaper than an executor hop, and doing it inline keeps the lines in call order.
"""

from __future__ import annotations

import errno
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Final, Literal

import structlog

__all__ = ["TranscriptWriter", "transcript_filename"]

log = structlog.get_logger("gateway.transcripts")

Clock = Callable[[], float]

_DIR_MODE: Final = 0o700
_FILE_MODE: Final = 0o600
# O_NOFOLLOW: a symlink planted in the transcript directory must not redirect personal data.
_OPEN_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
_UNSAFE_ID_CHARS: Final = re.compile(r"[^A-Za-z0-9_-]")
# Telnyx call_control_ids are ~70 characters; this keeps any id well under NAME_MAX (255 bytes).
_MAX_ID_CHARS: Final = 128


def transcript_filename(call_id: str, started_at: float) -> str:
    """``<YYYY-MM-DD>T<HHMMSS>Z_<call id>.jsonl``, the id reduced to ``[A-Za-z0-9_-]``.

    The UTC start time first makes ``ls`` list calls chronologically; Telnyx ids contain ``:``,
    which some filesystems and most shells treat specially.
    """
    stamp = datetime.fromtimestamp(started_at, UTC).strftime("%Y-%m-%dT%H%M%SZ")
    safe_id = _UNSAFE_ID_CHARS.sub("_", call_id)[:_MAX_ID_CHARS] or "call"
    return f"{stamp}_{safe_id}.jsonl"


def _iso_ms(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _encode_line(record: Mapping[str, object]) -> bytes:
    text = json.dumps(record, ensure_ascii=False, default=str)
    try:
        return text.encode() + b"\n"
    except UnicodeEncodeError:
        # A lone surrogate (a split emoji in model text) cannot be UTF-8; JSON's \u escapes can
        # carry it losslessly, at the cost of the rest of this line being escaped too.
        return json.dumps(record, ensure_ascii=True, default=str).encode() + b"\n"


class TranscriptWriter:
    """Appends one call's events to its JSONL file; never raises into the call.

    The first ``OSError`` (disk full, directory not writable, ...) is logged once as
    ``transcript.write_failed`` -- without any transcript content -- and every later write is
    dropped: the call goes on without a transcript rather than failing or spamming the log.

    Normally built with :meth:`open`; the constructor takes an already open binary file (or
    ``None`` for a writer that drops everything).
    """

    def __init__(self, file: BinaryIO | None, *, path: Path | None = None, clock: Clock = time.time) -> None:
        self._file = file
        self.path = path
        self._clock = clock

    @classmethod
    def open(cls, directory: str | Path, call_id: str, *, clock: Clock = time.time) -> TranscriptWriter:
        """Create (0600, append) this call's file in ``directory``, creating that 0700 if missing.

        If the file cannot be opened the failure is logged and a writer that drops every line is
        returned, so the caller never has to handle a missing transcript.
        """
        directory = Path(directory)
        path = directory / transcript_filename(call_id, clock())
        try:
            directory.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            fd = os.open(path, _OPEN_FLAGS, _FILE_MODE)
            try:
                file = os.fdopen(fd, "ab")
            except BaseException:
                os.close(fd)
                raise
        except OSError as exc:
            _log_failure(exc, "open", path)
            return cls(None, path=path, clock=clock)
        return cls(file, path=path, clock=clock)

    @property
    def closed(self) -> bool:
        """True once closed or after a failure: further writes are dropped."""
        return self._file is None

    def write(self, event: str, /, **fields: object) -> None:
        """Append ``{"t": ..., "event": event, **fields}`` as one line and flush it to the kernel.

        Values JSON cannot represent are written as their ``str()``. ``t`` and ``event`` are the
        writer's own: fields of those names are ignored.
        """
        if self._file is None:
            return
        record: dict[str, object] = {"t": _iso_ms(self._clock()), "event": event}
        for key, value in fields.items():
            record.setdefault(key, value)
        try:
            line = _encode_line(record)
        except (TypeError, ValueError) as exc:
            # A circular structure or non-string dict keys: a bug in the caller, but only this line
            # is lost. The event name is vocabulary, not content, so it is safe to log.
            log.warning("transcript.encode_failed", transcript_event=event, error=type(exc).__name__)
            return
        try:
            self._file.write(line)
            self._file.flush()
        except OSError as exc:
            _log_failure(exc, "write", self.path)
            self._discard()

    def close(self) -> None:
        """Close the file; idempotent, and never raises."""
        file, self._file = self._file, None
        if file is None:
            return
        try:
            file.close()
        except OSError as exc:
            # Only reachable if buffered bytes could not be written; each write flushes, so this
            # means the very last flush failed in a way the write did not see.
            _log_failure(exc, "close", self.path)

    def _discard(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            # The buffer still holds the line that failed; closing retries its flush, which is
            # expected to fail the same way and has already been reported.
            with suppress(OSError):
                file.close()

    def __enter__(self) -> TranscriptWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _log_failure(exc: OSError, stage: Literal["open", "write", "close"], path: Path | None) -> None:
    log.error(
        "transcript.write_failed",
        stage=stage,
        error=type(exc).__name__,
        errno=errno.errorcode.get(exc.errno or 0),
        directory=str(path.parent) if path is not None else None,
    )
