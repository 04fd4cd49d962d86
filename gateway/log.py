"""structlog setup: JSON lines when not on a TTY (containers, log shippers), a readable console otherwise.

Event names are static dotted strings (`call.started`); per-call context (`call_id`, `agent`, `engine`)
is bound with contextvars once per call, so every line a call's tasks write carries it.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

LogFormat = Literal["json", "console"]


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
