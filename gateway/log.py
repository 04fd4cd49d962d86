"""structlog setup: JSON lines when not on a TTY (containers, log shippers), a readable console otherwise.

Event names are static dotted strings (`call.started`); per-call context (`call_id`, `agent`, `engine`)
is bound with contextvars once per call, so every line a call's tasks write carries it.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Literal

import structlog

LogFormat = Literal["json", "console"]

# What may be a phone number in a config problem: six or more digits, maybe after a `+`, maybe grouped
# by spaces, dashes, dots or brackets ("+1 (555) 555-0100"), however YAML typed it (an unquoted key
# is an int, without its `+`).
_DIGIT_RUN = re.compile(r"\+?\(?\d(?:[ \-.()]{0,2}\d){5,}")
# A problem's YAML path under `routes` names a route key: a number, or whatever was written there.
_ROUTE_KEY = re.compile(r"^routes\.(.+?)(?=: |$)")


def _cut(text: str) -> str:
    digits = re.sub(r"\D", "", text)
    return ("+" if text.startswith("+") else "") + "***" + (digits[-4:] if len(digits) >= 4 else "")


def mask_numbers(problem: str) -> str:
    """A config problem fit for a log line, which never carries a phone number: the route key of a
    `routes.` path and every run of six or more digits are cut to their last four digits, enough for
    the operator to tell which entry (`gateway check` on the file shows it whole)."""
    problem = _ROUTE_KEY.sub(lambda match: "routes." + _cut(match.group(1)), problem, count=1)
    return _DIGIT_RUN.sub(lambda match: _cut(match.group(0)), problem)


def default_format() -> LogFormat:
    return "console" if sys.stderr.isatty() else "json"


def configure_logging(fmt: LogFormat | None = None, level: int = logging.INFO) -> None:
    fmt = fmt or default_format()
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # aiohttp's access log would print query strings and caller-controlled paths; the gateway logs
    # what matters itself.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
